"""Per-call outbound-socket sessions (FreeSWITCH's 'socket ADDR async full'), on greenswitch.

greenswitch's OutboundSession does the framing; this adds what a script needs:
each application is sent with our own Event-UUID and waited for by the
matching Application-UUID, so two prompts in a row cannot be confused, and a
hangup or disconnect wakes every waiter.
"""
from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import time
import uuid as uuidlib
from typing import Callable

import gevent
import greenswitch
from gevent.event import AsyncResult
from gevent.event import Event as GEvent
from greenswitch.esl import OutboundSessionHasGoneAway

from .wire import command_text, url_decode

log = logging.getLogger(__name__)


# Bounds on what one outbound session may send (FreeSWITCH's own frames are far below them: the
# connect reply is ~7 KB, events ~4 KB).
MAX_LINE = 64 * 1024
MAX_HEADERS = 512 * 1024
MAX_BODY = 4 * 1024 * 1024
CONNECT_TIMEOUT = 10.0


class CallGone(Exception):
    """The call hung up or its socket closed while we waited on it."""


class ProtocolViolation(Exception):
    """The peer on an outbound socket sent something that is not an ESL frame within our bounds."""


class LeanEvent(greenswitch.esl.ESLEvent):
    """greenswitch's event, its lines split before their values are decoded.

    greenswitch percent-decodes a whole header block and then splits it into lines, so a value holding
    '%0A' becomes a header of its own that overwrites the real one: a caller id '1%0AUnique-ID%3A%20X'
    (FreeSWITCH passes on a '%XX' it is given as it is) would name channel X as the caller's. Here each
    value decodes inside its own header. A body after the empty line is kept apart, undecoded."""

    def parse_data(self, data: str) -> None:
        head, _, body = data.strip("\n").partition("\n\n")
        if body:
            self.body = body
        last = None
        for line in head.split("\n"):
            name, sep, raw = line.partition(": ")
            if sep:
                last = name.strip()
                self.headers[last] = url_decode(raw).strip()
            elif last is not None and line.strip():      # a continuation line, as greenswitch reads it
                self.headers[last] += "\n" + url_decode(line).strip()


class LeanSession(greenswitch.esl.OutboundSession):
    """greenswitch's session with one greenlet instead of two.

    greenswitch queues every event for a second greenlet that polls its queue every second and
    keeps the last event referenced: at 2,000 waiting calls that is 2,000 greenlets, timers and
    events. Our handlers never block, so the reader dispatches them itself. Framing, command
    replies and the handler registry stay greenswitch's.
    """

    def __init__(self, client_address, sock) -> None:
        self.address = client_address
        super().__init__(client_address, sock)
        self._esl_event_queue = None      # events never queue here: handle_event dispatches them

    def start_event_handlers(self) -> None:
        self._receive_events_greenlet = gevent.spawn(self.receive_events)
        self._process_events_greenlet = None

    def receive_events(self) -> None:
        """greenswitch's reader, bounded: a peer that sends a line, a header block or a body past our
        limits, a bad Content-Length, or a frame greenswitch cannot parse is cut off, not followed
        (greenswitch's own reader grows without bound and spins for ever on a short body). However
        the stream ends, the call's waiters are told (DISCONNECT) so nobody waits on a dead socket."""
        lines: list[bytes] = []
        size = 0
        try:
            while self._run:
                line = self.sock_file.readline(MAX_LINE + 1)
                if not line:
                    break
                if len(line) > MAX_LINE:
                    raise ProtocolViolation(f"a header line longer than {MAX_LINE} bytes")
                if line == b"\n":
                    if lines:
                        event = LeanEvent(b"".join(lines).decode("utf-8", "replace"))
                        lines, size = [], 0
                        self.handle_event(event)
                    continue
                lines.append(line)
                size += len(line)
                if size > MAX_HEADERS:
                    raise ProtocolViolation(f"a header block larger than {MAX_HEADERS} bytes")
        except ProtocolViolation as e:
            log.warning("outbound session from %s broke the ESL protocol (%s); closing it", self.address, e)
        except Exception as e:          # a frame greenswitch cannot parse, a reset socket...
            log.warning("outbound session from %s: unreadable stream (%s: %s); closing it", self.address,
                        type(e).__name__, e)
        finally:
            self._run = False
            self.connected = False
            try:
                self.sock.close()
            except OSError:
                pass
            self._run_handlers(self.event_handlers.get("DISCONNECT"), LeanEvent(""))

    @staticmethod
    def _read_socket(sock, length: int) -> str:
        data = b""
        while len(data) < length:
            chunk = sock.read(length - len(data))
            if not chunk:
                raise ProtocolViolation(f"the stream ended {length - len(data)} bytes into a body")
            data += chunk
        return data.decode("utf-8", "replace")

    def handle_event(self, event) -> None:
        ctype = event.headers.get("Content-Type")
        if ctype in ("auth/request", "command/reply", "api/response", "text/rude-rejection"):
            super().handle_event(event)
            return
        if ctype == "text/disconnect-notice":
            if event.headers.get("Content-Disposition") == "linger":
                self._lingering = True
            else:
                self.connected = False
            self._run_handlers(self.event_handlers.get("DISCONNECT"), event)
            return
        raw_length = event.headers.get("Content-Length", "0") or "0"
        if not raw_length.isdigit() or int(raw_length) > MAX_BODY:
            raise ProtocolViolation(f"Content-Length {raw_length[:20]!r}")
        length = int(raw_length)
        data = self._read_socket(self.sock_file, length) if length else ""
        if ctype == "log/data":
            return
        event.parse_data(data)
        name = event.headers.get("Event-Name")
        handlers = list(self.event_handlers.get(name, ())) + list(self.event_handlers.get("*", ()))
        self._run_handlers(handlers, event)
        # greenswitch's reader keeps its last event in a local while it waits for the next, for
        # minutes on a caller in queue: ~150 headers (20 KB) per waiting call. Let them go.
        event.headers = {}

    def _run_handlers(self, handlers, event) -> None:
        for handler in handlers or ():
            try:
                handler(event)
            except Exception:
                log.exception("outbound session handler %s failed", getattr(handler, "__name__", handler))


class CallServer(greenswitch.OutboundESLServer):
    """greenswitch's server, with a blocking accept (its own polls every 100 ms) and a bind
    error raised to the caller instead of sys.exit()."""

    def __init__(self, host: str, port: int, on_call: Callable[["CallChannel"], None], max_connections: int = 10000,
                 allowed: list | None = None, on_refused: Callable[[str], None] | None = None,
                 admit: Callable[[], object] | None = None):
        super().__init__(bind_address=host, bind_port=port, application=_Application, max_connections=max_connections)
        self.on_call = on_call
        # Waited on before a new call's first word (connect): the switch holds the call meanwhile.
        self.admit = admit
        self.ready = GEvent()
        # Only the switch may hand us calls: a connection from elsewhere is closed at once, unread.
        self.allowed = allowed if allowed is not None else [ipaddress.ip_network("127.0.0.0/8"),
                                                               ipaddress.ip_network("::1/128")]
        self.on_refused = on_refused
        self._refused_logged: dict[str, float] = {}

    def bind(self) -> None:
        """Take the port (an error here is the caller's: a port in use, no permission)."""
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            server.bind((self.bind_address, self.bind_port[0]))
        except OSError as e:
            server.close()
            raise OSError(e.errno, f"cannot listen on {self.bind_address}:{self.bind_port[0]} for FreeSWITCH's "
                                   f"outbound socket: {e.strerror}") from None
        self.server = server
        self.bound_port = server.getsockname()[1]
        server.listen(1024)

    def listen(self) -> None:
        if getattr(self, "bound_port", None) is None:
            self.bind()
        self._running = True
        self.ready.set()
        while self._running:
            try:
                sock, address = self.server.accept()
            except OSError as e:
                if not self._running or e.errno in (errno.EBADF, errno.EINVAL):
                    break
                log.warning("accept failed: %s", e)
                gevent.sleep(0.01)
                continue
            if not self._allowed(address[0]):
                self._refuse(address[0], sock)
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            gevent.spawn(self._serve, address, sock)

    def _allowed(self, host: str) -> bool:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(ip in net for net in self.allowed)

    def _refuse(self, host: str, sock) -> None:
        try:
            sock.close()
        except OSError:
            pass
        # Logged once a minute per address: a flood must not flood the log too.
        now = time.monotonic()
        if now - self._refused_logged.get(host, -3600.0) >= 60.0:
            self._refused_logged[host] = now
            log.warning("refused an outbound-socket connection from %s: not in --allow-from (%s)", host,
                        ", ".join(str(n) for n in self.allowed))
        if self.on_refused is not None:
            self.on_refused(host)

    def _serve(self, address, sock) -> None:
        session = LeanSession(address, sock)
        # greenswitch reads through an 8 KiB buffer per call; a waiting call sees a few events a
        # minute, so a small buffer saves memory at 2,000 calls (its reader has not run yet).
        session.sock_file = sock.makefile("rb", buffering=2048)
        channel = CallChannel(session)
        if self.admit is not None:
            self.admit()
        try:
            with gevent.Timeout(CONNECT_TIMEOUT, CallGone(f"no connect reply in {CONNECT_TIMEOUT:g}s")):
                session.connect()
        except Exception as e:      # the caller can hang up before we say hello (or a peer never does)
            log.info("outbound session from %s ended before connect: %s %s", address, type(e).__name__, e)
            channel.close()
            return
        channel.started()
        try:
            self.on_call(channel)
        except Exception:
            log.exception("call %s: handler failed", channel.uuid)
        finally:
            # A socket closed without a hangup leaves the call parked for good (measured on the real
            # switch: 9 calls in 10 when closed within 0.5 s of connect). Never close one still up.
            if not channel.gone.is_set():
                channel.hangup("NORMAL_TEMPORARY_FAILURE")
            channel.close()

    def stop(self) -> None:
        self._running = False
        if self.server is not None:
            try:
                self.server.close()
            except OSError:
                pass


class _Application:          # greenswitch insists on one; our server never uses it
    def __init__(self, session):
        self.session = session

    def run(self):
        pass


class CallChannel:
    """One answered caller, driven over its outbound socket."""

    def __init__(self, session) -> None:
        self.session = session
        self.data: dict[str, str] = {}
        self.gone = GEvent()
        self.hangup_cause = ""
        self._waiting: dict[str, AsyncResult] = {}
        self.on_gone: Callable[[], None] | None = None
        self.observer: Callable[[str, str], None] | None = None     # (event name, application): tests

    @property
    def uuid(self) -> str:
        return self.data.get("Unique-ID", "")

    KEPT = ("Unique-ID", "Caller-Caller-ID-Number", "Caller-Caller-ID-Name", "Caller-Destination-Number",
            "Channel-Name", "variable_uuid", "variable_call_uuid",
            # an agent's feature code (controller/features.py): what, its argument, whether the dialplan
            # trusts its authentication, the directory user the switch authenticated the call as
            "variable_esl_cb_feature", "variable_esl_cb_feature_arg", "variable_esl_cb_trust_caller_id",
            "variable_user_name")

    def started(self) -> None:
        # The connect reply carries ~180 headers (SDP included); a waiting call keeps only what it uses.
        full = self.session.session_data or {}
        self.data = {k: full[k] for k in self.KEPT if k in full}
        self.session.session_data = self.data
        self.session.register_handle("*", self._on_event)
        self.session.register_handle("DISCONNECT", self._on_disconnect)
        self.session.send("myevents")
        self.session.send("linger")      # we still want HANGUP_COMPLETE; we close the socket ourselves

    def _on_event(self, event) -> None:
        h = event.headers
        name = h.get("Event-Name")
        if self.observer is not None:
            self.observer(name or "", h.get("Application", ""))
        if name == "CHANNEL_EXECUTE_COMPLETE":
            waiter = self._waiting.pop(h.get("Application-UUID", ""), None)
            if waiter is not None:
                waiter.set(h)
        elif name == "CHANNEL_HANGUP":
            self.hangup_cause = h.get("Hangup-Cause", "")
            self._mark_gone()

    def _on_disconnect(self, event) -> None:
        # Whatever its disposition the call is over for us: 'linger' comes after the hangup (capture 08),
        # 'disconnect' as the socket closes, without linger maybe before any hangup event (capture 11),
        # and the reader calls this when the stream ends.
        self._mark_gone()

    def _mark_gone(self) -> None:
        if self.gone.is_set():
            return
        self.gone.set()
        for waiter in list(self._waiting.values()):
            waiter.set_exception(CallGone(self.hangup_cause or "caller hung up"))
        self._waiting.clear()
        if self.on_gone is not None:
            self.on_gone()

    # -- applications -------------------------------------------------
    def execute(self, app: str, arg: str = "", timeout: float | None = None,
                on_timeout: Callable[[], None] | None = None) -> dict[str, str]:
        """Run a dialplan application and wait for its EXECUTE_COMPLETE (ours, by Event-UUID)."""
        if self.gone.is_set():
            raise CallGone(self.hangup_cause or "caller hung up")
        event_uuid = str(uuidlib.uuid4())
        headers = [("call-command", "execute"), ("execute-app-name", app)]
        if arg:
            headers.append(("execute-app-arg", arg))
        msg = command_text("sendmsg", headers + [("Event-UUID", event_uuid)])    # UnsafeValue: nothing sent
        waiter = AsyncResult()
        self._waiting[event_uuid] = waiter
        try:
            self.session.send(msg)
        except (OutboundSessionHasGoneAway, OSError, greenswitch.esl.NotConnectedError):
            self._mark_gone()
            raise CallGone(self.hangup_cause or "socket closed") from None
        try:
            return waiter.get(timeout=timeout)
        except gevent.Timeout:
            if on_timeout is None:
                raise
            on_timeout()
            return waiter.get(timeout=10)

    def api(self, cmd: str) -> str:
        msg = command_text("api " + cmd)
        try:
            return self.session.send(msg).data
        except (OutboundSessionHasGoneAway, OSError, greenswitch.esl.NotConnectedError):
            raise CallGone("socket closed") from None

    def break_media(self) -> None:
        """Stop what is playing (uuid_break); the application completes as FILE PLAYED."""
        if not self.gone.is_set():
            self.api(f"uuid_break {self.uuid}")

    def hangup(self, cause: str = "NORMAL_CLEARING") -> None:
        msg = command_text("sendmsg", [("call-command", "hangup"), ("hangup-cause", cause)])
        if self.gone.is_set():
            return
        try:
            self.session.send(msg)
        except (OutboundSessionHasGoneAway, OSError, greenswitch.esl.NotConnectedError):
            pass

    def close(self) -> None:
        try:
            self.session.stop()
        except Exception:
            try:
                self.session.sock.close()
            except OSError:
                pass
