"""Render FreeSWITCH events from the recorded templates in profile.json.

Each template is the header list of one real event, with per-call values
replaced by ${tokens}. Rendering fills the tokens from a channel and
serialises in the three ESL formats exactly as mod_event_socket does.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable

from esl_cb.esl.wire import url_encode as _url_encode

# Most header values repeat from event to event (states, names, SDP, variables): encode each once.
url_encode = lru_cache(maxsize=1 << 16)(_url_encode)

PROFILE_PATH = Path(__file__).with_name("profile.json")
_TOKEN = re.compile(r"\$\{([a-z_0-9]+)\}")


@lru_cache(maxsize=1)
def profile() -> dict:
    return json.loads(PROFILE_PATH.read_text())


@dataclass
class Identity:
    """How this switch names itself on the wire."""

    core_uuid: str
    hostname: str = "fs-sim"
    ipv4: str = "127.0.0.1"
    ipv6: str = "::1"
    version: str = "1.10.12-release~64bit"


@dataclass
class Event:
    """One event, as an ordered list of (name, decoded value) and an optional body."""

    headers: list[tuple[str, str]]
    body: str = ""
    channel_uuid: str = ""

    @property
    def name(self) -> str:
        return self.headers[0][1] if self.headers[0][0] == "Event-Name" else self.get("Event-Name", "")

    def get(self, name: str, default: str = "") -> str:
        for k, v in self.headers:
            if k == name:
                return v
        return default

    def subclass(self) -> str:
        return self.get("Event-Subclass")

    # -- serialisation -------------------------------------------------
    def plain_body(self) -> bytes:
        """The event as text/event-plain carries it (and uuid_dump prints it)."""
        parts = [f"{k}: {url_encode(v)}\n" for k, v in self.headers]
        if self.body:
            body = self.body.encode()
            parts.append(f"Content-Length: {len(body)}\n\n")
            return "".join(parts).encode() + body
        parts.append("\n")
        return "".join(parts).encode()

    def plain(self) -> bytes:
        text = self.plain_body()
        return b"Content-Length: %d\nContent-Type: text/event-plain\n\n" % len(text) + text

    def json_body(self) -> bytes:
        obj = {}
        for k, v in self.headers:
            obj.setdefault(k, v)
        if self.body:
            obj["Content-Length"] = str(len(self.body.encode()))
            obj["_body"] = self.body
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()

    def json(self) -> bytes:
        text = self.json_body()
        return b"Content-Length: %d\nContent-Type: text/event-json\n\n" % len(text) + text

    def xml_body(self) -> bytes:
        lines = ["<event>\n  <headers>\n"]
        for k, v in self.headers:
            lines.append(f"    <{k}>{url_encode(v)}</{k}>\n")
        lines.append("  </headers>\n")
        if self.body:
            lines.append(f"  <Content-Length>{len(self.body.encode())}</Content-Length>\n")
            lines.append(f"  <body>{self.body}  </body>\n")
        lines.append("</event>\n")
        return "".join(lines).encode()

    def xml(self) -> bytes:
        text = self.xml_body()
        return b"Content-Length: %d\nContent-Type: text/event-xml\n\n" % len(text) + text


def date_fields(ts_us: int) -> tuple[str, str, str]:
    secs = ts_us // 1_000_000
    local = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(secs))
    gmt = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(secs))
    return local, gmt, str(ts_us)


class Sequencer:
    """The switch-wide Event-Sequence counter and the common header block."""

    def __init__(self, identity: Identity, clock: Callable[[], float]) -> None:
        self.identity = identity
        self.clock = clock
        self.seq = 0
        self._date_cache: tuple[int, tuple[str, str]] = (-1, ("", ""))

    def common(self, name: str) -> dict[str, str]:
        self.seq += 1
        ts = int(self.clock() * 1_000_000)
        secs = ts // 1_000_000
        if self._date_cache[0] != secs:
            local, gmt, _ = date_fields(ts)
            self._date_cache = (secs, (local, gmt))
        local, gmt = self._date_cache[1]
        ident = self.identity
        return {
            "Core-UUID": ident.core_uuid,
            "FreeSWITCH-Hostname": ident.hostname,
            "FreeSWITCH-Switchname": ident.hostname,
            "FreeSWITCH-IPv4": ident.ipv4,
            "FreeSWITCH-IPv6": ident.ipv6,
            "Event-Date-Local": local,
            "Event-Date-GMT": gmt,
            "Event-Date-Timestamp": str(ts),
            "Event-Sequence": str(self.seq),
        }


def fill(value: str, tokens: dict[str, str]) -> str:
    if "${" not in value:
        return value
    return _TOKEN.sub(lambda m: tokens.get(m.group(1), "0"), value)


_CONST, _TOKENS, _VAR, _ORIGINATE_VARS, _RUNTIME_VARS, _LAST_ARG = range(6)
_compiled: dict[int, tuple[list, list[tuple[str, str, int, bool]]]] = {}


def _compile(template: list[list[str]]) -> list[tuple[str, str, int, bool]]:
    """Classify a template's entries once: most are constants that need no filling at all."""
    hit = _compiled.get(id(template))
    if hit is not None and hit[0] is template:
        return hit[1]
    ops = []
    for name, value in template:
        kind = {"@originate_vars": _ORIGINATE_VARS, "@runtime_vars": _RUNTIME_VARS, "@last_arg": _LAST_ARG}.get(name)
        if kind is None:
            kind = _VAR if value.startswith("${var_") else _TOKENS if "${" in value else _CONST
        ops.append((name, value[6:-1] if kind == _VAR else value, kind, name.startswith("variable_")))
    _compiled[id(template)] = (template, ops)
    return ops


def render(template: list[list[str]], common: dict[str, str], tokens: dict[str, str],
           originate_vars: Iterable[tuple[str, str]] = (), channel_vars: dict[str, str] | None = None,
           overrides: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """Fill one template.

    channel_vars are the variables set while the call ran, in FreeSWITCH's
    order. A recorded position ('${var_NAME}') takes the channel's value, or
    is left out when the call never set it; the rest go where the recording
    had them (the @runtime_vars marker), else after the last variable.
    """
    out: list[tuple[str, str]] = []
    chan = channel_vars or {}
    used: set[str] = set()
    marker = -1
    last_var = -1
    for name, value, kind, is_var in _compile(template):
        if name in common:
            out.append((name, common[name]))
            continue
        if kind == _ORIGINATE_VARS:
            out.extend(("variable_" + k, v) for k, v in originate_vars)
            last_var = len(out) - 1
            continue
        if kind == _RUNTIME_VARS:
            marker = len(out)
            continue
        if kind == _LAST_ARG:
            if tokens.get("last_arg"):
                out.append(("variable_last_arg", tokens["last_arg"]))
            continue
        if overrides and name in overrides:
            out.append((name, overrides[name]))
            continue
        if kind == _VAR:
            used.add(value)
            if value in chan:
                out.append((name, chan[value]))
                last_var = len(out) - 1
            continue
        out.append((name, fill(value, tokens) if kind == _TOKENS else value))
        if is_var:
            last_var = len(out) - 1
    rest = [("variable_" + k, v) for k, v in chan.items() if k not in used]
    if rest:
        at = marker if marker >= 0 else last_var + 1
        if at > 0:
            out[at:at] = rest
    return out


def has_variables(template: list, _cache: dict[int, tuple[list, bool]] = {}) -> bool:
    """Does this event template carry the channel's variables (what uuid_dump shows)?"""
    hit = _cache.get(id(template))
    if hit is None or hit[0] is not template:
        hit = _cache[id(template)] = (template, any(k.startswith("variable_") or k == "@runtime_vars"
                                                    for k, _ in template))
    return hit[1]
