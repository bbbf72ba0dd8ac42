"""The controller's inbound ESL connection: places and bridges calls and watches their events.

Our own reader instead of greenswitch's InboundESL, for reasons measured on a
real switch (shared/FREESWITCH-FACTS.md): greenswitch decodes whole events
before handing them on (110-210 us each), starves other greenlets during
bursts, and reads a BACKGROUND_JOB's result into a header. Here framing is
cheap, values are decoded only when asked for, the reader yields every few
frames so timers stay on time, and every command has a timeout.
"""
from __future__ import annotations

import logging
import socket
import time
import uuid as uuidlib
from collections import deque
from typing import Callable, Mapping

import gevent
from gevent.event import AsyncResult
from gevent.exceptions import ConcurrentObjectUseError
from gevent.lock import Semaphore

from .wire import Frame, FrameReader, ProtocolError, command_text, url_decode

log = logging.getLogger(__name__)
YIELD_EVERY = 32          # frames handled before the reader lets other greenlets run


class ESLError(Exception):
    """FreeSWITCH could not be reached or did not answer as the protocol says."""


class ConnectionLost(ESLError):
    pass


class CommandTimeout(ESLError):
    pass


class NotSent(ConnectionLost):
    """The command was certainly never written to the switch (not connected, or it could not get its
    turn): nothing of it can have happened there."""


class Event:
    """A text/event-plain event kept as its raw header text.

    Nothing is split or decoded until a header is asked for: the router reads two
    headers of events that carry about a hundred (FREESWITCH-FACTS: decoding is the
    cost, not the I/O). The first occurrence of a name wins, as the COMMAND event
    repeats Event-Name.
    """

    __slots__ = ("_text", "body", "received")

    def __init__(self, text: str, body: bytes = b"") -> None:
        self._text = text if text.startswith("\n") else "\n" + text
        self.body = body
        self.received = 0.0         # time.monotonic() when its bytes were read from the socket

    @classmethod
    def from_headers(cls, headers: list[tuple[str, str]], body: bytes = b"") -> "Event":
        return cls("".join(f"{k}: {v}\n" for k, v in headers), body)

    def get(self, name: str, default: str = "") -> str:
        t = self._text
        i = t.find(f"\n{name}: ")
        if i < 0:
            return default
        start = i + len(name) + 3
        end = t.find("\n", start)
        return url_decode(t[start:end] if end >= 0 else t[start:])

    @property
    def name(self) -> str:
        return self.get("Event-Name")

    @property
    def uuid(self) -> str:
        return self.get("Unique-ID")

    def variable(self, name: str, default: str = "") -> str:
        return self.get("variable_" + name, default)

    def __repr__(self) -> str:
        return f"<Event {self.name} {self.uuid}>"


def parse_event(frame: Frame) -> Event:
    raw = frame.body
    end = raw.find(b"\n\n")
    if end < 0:
        return Event(raw.decode("utf-8", "replace"))
    text = raw[:end + 1].decode("utf-8", "replace")
    body = b""
    if "\nContent-Length: " in text or text.startswith("Content-Length: "):
        ev = Event(text)
        n = int(ev.get("Content-Length", "0") or 0)
        body = raw[end + 2:end + 2 + n]
    return Event(text, body)


class InboundConnection:
    """One authenticated inbound ESL connection with event dispatch to a non-blocking callback."""

    def __init__(self, host: str, port: int, password: str, on_event: Callable[[Event], None],
                 on_disconnect: Callable[[], None] | None = None, timeout: float = 5.0) -> None:
        self.host, self.port = host, port
        self._password = password           # never logged
        self.on_event = on_event
        self.on_disconnect = on_disconnect
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self._pending: deque[AsyncResult] = deque()     # one per command on the wire, oldest first
        self._send_lock = Semaphore()                     # a command's bytes, and its place in _pending
        self._reader: gevent.Greenlet | None = None
        self.connected = False

    def __repr__(self) -> str:
        return f"<InboundConnection {self.host}:{self.port} connected={self.connected}>"

    def connect(self, events: list[str]) -> None:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except OSError as e:
            raise ConnectionLost(f"cannot reach FreeSWITCH ESL at {self.host}:{self.port}: {e}") from None
        sock.settimeout(None)
        reader = FrameReader()
        try:
            first = self._read_one(sock, reader)
            if first.content_type != "auth/request":
                sock.close()
                raise ESLError(f"{self.host}:{self.port} did not ask for auth (got {first.content_type!r}); "
                               "is it FreeSWITCH's event socket?")
            sock.sendall(f"auth {self._password}\n\n".encode())
            reply = self._read_one(sock, reader)
        except OSError as e:
            # A switch that is shutting down (or killed) resets connections in the middle of the login.
            sock.close()
            raise ConnectionLost(f"FreeSWITCH at {self.host}:{self.port} dropped the connection during login: "
                                 f"{e}") from None
        if reply.get("Reply-Text") != "+OK accepted":
            sock.close()
            raise ESLError(f"FreeSWITCH at {self.host}:{self.port} refused the ESL password "
                           f"({reply.get('Reply-Text')}); check --esl-password / event_socket.conf.xml")
        self.sock = sock
        self.connected = True
        self._reader = gevent.spawn(self._read_loop, reader)
        if events:
            self.command("event plain " + " ".join(events))

    def _read_one(self, sock: socket.socket, reader: FrameReader) -> Frame:
        with gevent.Timeout(self.timeout, ESLError(f"{self.host}:{self.port} sent nothing for {self.timeout}s")):
            while True:
                data = sock.recv(65536)
                if not data:
                    raise ConnectionLost(f"{self.host}:{self.port} closed the connection during login")
                frames = reader.feed(data)
                if frames:
                    # A refused login comes with its disconnect notice in the same read.
                    return frames[0]

    def _read_loop(self, reader: FrameReader) -> None:
        sock = self.sock
        handled = 0
        try:
            while True:
                data = sock.recv(262144)
                if not data:
                    break
                received = time.monotonic()
                try:
                    frames = reader.feed(data)
                except ProtocolError as e:
                    log.error("ESL stream from %s:%d is corrupt (%s); reconnecting", self.host, self.port, e)
                    break
                for frame in frames:
                    self._dispatch(frame, received)
                    handled += 1
                    if handled % YIELD_EVERY == 0:
                        gevent.sleep(0)
        except OSError:
            pass
        finally:
            self._lost()

    def _dispatch(self, frame: Frame, received: float = 0.0) -> None:
        ctype = frame.content_type
        if ctype in ("command/reply", "api/response"):
            if self._pending:
                self._pending.popleft().set(frame)
            else:
                log.warning("reply nobody waited for: %s", frame.get("Reply-Text") or frame.body[:80])
        elif ctype == "text/event-plain":
            try:
                event = parse_event(frame)
            except (ValueError, IndexError) as e:
                log.error("unparseable event skipped: %s", e)
                return
            event.received = received
            try:
                self.on_event(event)
            except Exception:
                log.exception("event handler failed for %r", event)
        elif ctype == "text/disconnect-notice":
            log.warning("FreeSWITCH sent a disconnect notice on the inbound connection")

    def _lost(self) -> None:
        was = self.connected
        self.connected = False
        while self._pending:
            self._pending.popleft().set_exception(ConnectionLost("ESL connection lost"))
        try:
            if self.sock is not None:
                self.sock.close()
        except OSError:
            pass
        if was and self.on_disconnect is not None:
            self.on_disconnect()

    def close(self) -> None:
        # 'exit' only when no command is half-sent: its bytes would land inside the other's.
        if self.sock is not None and self.connected and self._send_lock.acquire(blocking=False):
            try:
                self.sock.sendall(b"exit\n\n")
            except OSError:
                pass
            finally:
                self._send_lock.release()
        self.connected = False
        if self._reader is not None:
            self._reader.kill(block=False)
        try:
            if self.sock is not None:
                self.sock.close()
        except OSError:
            pass

    # -- commands ---------------------------------------------------------
    def command(self, line: str, headers: Mapping[str, str] | None = None, timeout: float | None = None) -> Frame:
        """Send one command (and its headers) and wait for its reply. A line or header that holds CR,
        LF or NUL is refused (wire.UnsafeValue) before anything is written.

        Replies carry no id: FreeSWITCH answers a connection's commands in the order they arrived,
        and each reply goes to the oldest result waiting. So a result joins the line only together
        with its command's bytes, under one lock, and a send that fails part-way (or is interrupted)
        drops the connection: the switch may hold half a command, and every later reply would go
        to the command before it. A caller that stops waiting leaves its result in line, to take
        the reply that still comes."""
        wait = timeout or self.timeout
        what = " ".join(line.split()[0:2])
        data = (command_text(line, (headers or {}).items()) + "\n\n").encode()
        if not self.connected or self.sock is None:
            raise NotSent("not connected to FreeSWITCH")
        if not self._send_lock.acquire(timeout=wait):
            raise NotSent(f"could not send {what!r} to FreeSWITCH within {wait}s: another command was "
                          "still being sent")
        try:
            if not self.connected:
                raise NotSent("the ESL connection was lost while this command waited to be sent")
            result = AsyncResult()
            self._pending.append(result)
            self._send(data, what, wait)
        finally:
            self._send_lock.release()
        try:
            return result.get(timeout=wait)
        except gevent.Timeout:
            raise CommandTimeout(f"FreeSWITCH did not answer {what!r} within {wait}s") from None

    def _send(self, data: bytes, what: str, wait: float) -> None:
        deadline = gevent.Timeout(wait)
        deadline.start()
        try:
            self.sock.sendall(data)
        except gevent.Timeout as e:
            self._lost()
            if e is not deadline:
                raise               # someone else's deadline: theirs to handle
            raise ConnectionLost(f"FreeSWITCH took no more of a command ({what!r}) for {wait}s; "
                                 "dropping the connection") from None
        except (OSError, ConcurrentObjectUseError) as e:
            self._lost()
            raise ConnectionLost(f"sending {what!r} to FreeSWITCH failed: {e}") from None
        except BaseException:
            self._lost()            # a kill raised into us mid-send: the killer's exception goes on
            raise
        finally:
            deadline.close()

    def api(self, cmd: str, timeout: float | None = None) -> str:
        return self.command("api " + cmd, timeout=timeout).body_text()

    def bgapi(self, cmd: str, job_uuid: str | None = None) -> str:
        """Start a background job; its BACKGROUND_JOB event carries this Job-UUID."""
        job = job_uuid or str(uuidlib.uuid4())
        reply = self.command("bgapi " + cmd, headers={"Job-UUID": job})
        text = reply.get("Reply-Text") or ""
        if not text.startswith("+OK"):
            raise ESLError(f"bgapi {cmd.split()[0]} refused: {text}")
        return reply.get("Job-UUID") or job
