"""ESL wire format: frames, header blocks and FreeSWITCH's percent-encoding.

Both sides of the socket use this module: the controller's client and the
simulator's server. It knows nothing about calls, only bytes.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable
from urllib.parse import unquote

# switch_url_encode() in switch_utils.c encodes control bytes, bytes above '~'
# and this set; '/ , ( ) ! * ' - . _ ~ $' stay literal.
_URL_UNSAFE = set('\r\n #%&+:;<=>?@[\\]^`{|}"')
_HEX = "0123456789ABCDEF"
_ENCODE_TABLE = {}
for _b in range(256):
    _c = chr(_b)
    _ENCODE_TABLE[_b] = f"%{_b:02X}" if (_b < 0x20 or _b > 0x7E or _c in _URL_UNSAFE) else _c
_SAFE_RE = re.compile(r'^[^\x00-\x1f\x7f-\uffff\r\n #%&+:;<=>?@\[\\\]^`{|}"]*$')


def url_encode(value: str) -> str:
    """Percent-encode a header value exactly like FreeSWITCH does.

    A '%' already followed by two uppercase hex digits passes through as is
    (FreeSWITCH does not double-encode).
    """
    if _SAFE_RE.match(value):
        return value
    data = value.encode("utf-8")
    out = []
    n = len(data)
    i = 0
    while i < n:
        b = data[i]
        if b == 0x25 and i + 2 < n and chr(data[i + 1]) in _HEX and chr(data[i + 2]) in _HEX:
            out.append("%")
        else:
            out.append(_ENCODE_TABLE[b])
        i += 1
    return "".join(out)


class UnsafeValue(ValueError):
    """A value that cannot go into an ESL command or header as it is. Raised before anything is
    written: a CR, LF or NUL would end its line, and FreeSWITCH would read what follows as another
    header or another command."""


_LINE_END = re.compile("[\r\n\x00]")
_HEADER_NAME = re.compile(r"[A-Za-z0-9_-]+")


def one_line(where: str, value: str) -> str:
    """`value` when it can stand on one ESL line; UnsafeValue naming `where` and showing it otherwise."""
    if _LINE_END.search(value):
        shown = value if len(value) <= 200 else value[:200] + "..."
        raise UnsafeValue(f"{where} {shown!r} holds CR, LF or NUL, which would end the line and start another "
                          "header or command; nothing was sent")
    return value


def command_text(line: str, headers: Iterable[tuple[str, str]] = ()) -> str:
    """One ESL command: its line, then 'Name: value' headers one per line, every part checked first.
    The empty line that ends the command is the sender's to add."""
    if not line.strip():
        raise UnsafeValue("an empty command line would read as the end of a command; nothing was sent")
    parts = [one_line("command line", line)]
    for name, value in headers:
        if not _HEADER_NAME.fullmatch(name):
            raise UnsafeValue(f"header name {name!r} may hold letters, digits, '-' and '_' only; nothing was sent")
        parts.append(f"{name}: {one_line(f'header {name}', str(value))}")
    return "\n".join(parts)


def url_decode(value: str) -> str:
    if "%" not in value:
        return value
    return unquote(value)


@dataclass
class Frame:
    """One ESL frame: its header block (raw, undecoded values) and body."""

    headers: list[tuple[str, str]]
    body: bytes = b""
    first_line: str = ""
    _index: dict[str, str] | None = field(default=None, repr=False)

    def get(self, name: str, default: str | None = None) -> str | None:
        # First occurrence wins: the uuid_broadcast COMMAND event repeats names.
        if self._index is None:
            idx: dict[str, str] = {}
            for k, v in self.headers:
                idx.setdefault(k, v)
            self._index = idx
        return self._index.get(name, default)

    @property
    def content_type(self) -> str | None:
        return self.get("Content-Type")

    def body_text(self) -> str:
        return self.body.decode("utf-8", "replace")


def parse_header_block(block: bytes | str) -> list[tuple[str, str]]:
    """Split 'Name: value' lines; values stay as sent (still percent-encoded)."""
    if isinstance(block, bytes):
        block = block.decode("utf-8", "replace")
    headers = []
    for line in block.split("\n"):
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            headers.append((line, ""))
            continue
        headers.append((name, value[1:] if value.startswith(" ") else value))
    return headers


class FrameReader:
    """Incremental ESL frame parser: feed() bytes as they arrive, frames come out whole.

    A frame is a header block closed by an empty line, then exactly
    Content-Length body bytes when that header is present.
    """

    MAX_HEADER_BLOCK = 1 << 20

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pending: list[tuple[str, str]] | None = None
        self._need = 0
        self._first = ""

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames: list[Frame] = []
        while True:
            if self._pending is None:
                end = self._buf.find(b"\n\n")
                if end < 0:
                    if len(self._buf) > self.MAX_HEADER_BLOCK:
                        raise ProtocolError("header block larger than 1 MiB without an empty line")
                    return frames
                # A stray leading newline (garbage between frames) is skipped.
                if end == 0:
                    del self._buf[:2]
                    continue
                raw = bytes(self._buf[:end]).decode("utf-8", "replace")
                headers = parse_header_block(raw)
                first_line = raw.split("\n", 1)[0]
                del self._buf[: end + 2]
                length = 0
                for k, v in headers:
                    if k == "Content-Length":
                        try:
                            length = int(v.strip())
                        except ValueError:
                            raise ProtocolError(f"bad Content-Length {v!r}") from None
                        if length < 0:
                            raise ProtocolError(f"negative Content-Length {v!r}")
                        break
                if length == 0:
                    frames.append(Frame(headers, first_line=first_line))
                    continue
                self._pending, self._need, self._first = headers, length, first_line
            if len(self._buf) < self._need:
                return frames
            body = bytes(self._buf[: self._need])
            del self._buf[: self._need]
            frames.append(Frame(self._pending, body, first_line=self._first))
            self._pending, self._need = None, 0

    @property
    def buffered(self) -> int:
        return len(self._buf)


class ProtocolError(Exception):
    """The peer sent bytes that are not an ESL frame."""
