"""mod_event_socket, server side: inbound connections and outbound sessions.

Replies, header order and the disconnect/linger notices follow the wire
captures of FreeSWITCH 1.10 byte for byte.
"""
from __future__ import annotations

import logging
import socket
import time
import uuid as uuidlib
from collections import deque
from typing import TYPE_CHECKING

import gevent
import gevent.socket
from gevent.event import Event as GEvent

from esl_cb.esl.wire import FrameReader, ProtocolError, url_encode

from . import api, apps, phones
from .events import Event, render
from .stamps import enable_receive_timestamps, kernel_time

if TYPE_CHECKING:
    from .switch import Channel, Switch

log = logging.getLogger(__name__)

GOODBYE = b"Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n"
# What 'myevents' subscribes an outbound socket to (mod_event_socket.c).
MYEVENTS = {
    "CHANNEL_ANSWER", "CHANNEL_APPLICATION", "CHANNEL_BRIDGE", "CHANNEL_CREATE", "CHANNEL_DATA",
    "CHANNEL_DESTROY", "CHANNEL_EXECUTE", "CHANNEL_EXECUTE_COMPLETE", "CHANNEL_HANGUP",
    "CHANNEL_HANGUP_COMPLETE", "CHANNEL_ORIGINATE", "CHANNEL_UUID", "CHANNEL_OUTGOING", "CHANNEL_PARK",
    "CHANNEL_PROGRESS", "CHANNEL_PROGRESS_MEDIA", "CHANNEL_STATE", "CHANNEL_UNBRIDGE", "CHANNEL_UNPARK",
    "DETECTED_SPEECH", "DTMF", "NOTALK", "TALK",
}


def reply(text: str, extra: str = "") -> bytes:
    return f"Content-Type: command/reply\nReply-Text: {text}\n{extra}\n".encode()


def api_response(body: str) -> bytes:
    data = body.encode()
    return b"Content-Type: api/response\nContent-Length: %d\n\n" % len(data) + data


class EventSocket:
    """What inbound connections and outbound sessions share: framing, subscriptions, writing."""

    def __init__(self, switch: "Switch", sock: socket.socket) -> None:
        self.switch = switch
        self.sock = sock
        self.reader = FrameReader()
        self.format: str | None = None      # plain | json | xml once subscribed
        self.all_events = False
        self.event_names: set[str] = set()
        self.subclasses: set[str] = set()
        self.filters: list[tuple[str, str]] = []
        self.closed = False
        self.received_at: float | None = None   # when the command being handled reached us
        self._out: deque[tuple[float, bytes, str | None]] = deque()   # (when it may leave, frame, hangup of)
        self._wake = GEvent()
        self._idle = GEvent()
        self._idle.set()
        self._writer = gevent.spawn(self._write_loop)
        self.event_lag = 0.0

    # -- output ----------------------------------------------------------
    def send_now(self, data: bytes) -> None:
        """Replies go out at once, ahead of queued events (FreeSWITCH answers in the command's thread)."""
        if self.closed:
            return
        try:
            self.sock.sendall(data)
        except OSError:
            self.close()

    def deliver(self, event: Event) -> None:
        if self.closed or not self.wants(event):
            return
        fmt = self.format or "plain"          # myevents on an outbound socket is plain
        cache = event.__dict__.setdefault("_wire", {})
        data = cache.get(fmt)
        if data is None:
            data = cache[fmt] = getattr(event, fmt)()
        # A hangup's delivery time is kept for benchmarks: when a controller could first know.
        hangup = event.channel_uuid if name_of(event) == "CHANNEL_HANGUP" else None
        self._out.append((time.monotonic() + self.event_lag, data, hangup))
        self._wake.set()

    def wants(self, event: Event) -> bool:
        if self.format is None:
            return False
        name = name_of(event)
        if not self.all_events and name not in self.event_names:
            if not (name == "CUSTOM" and event.get("Event-Subclass") in self.subclasses):
                return False
        if self.filters:
            return any(event.get(k) == v for k, v in self.filters)
        return True

    def _write_loop(self) -> None:
        while not self.closed:
            self._wake.wait()
            self._wake.clear()
            while self._out and not self.closed:
                self._idle.wait()       # events wait while a command runs
                # Each event leaves `event_lag` after it happened (FreeSWITCH's listener delivers
                # late), not `event_lag` after this greenlet got to run.
                hold = self._out[0][0] - time.monotonic()
                if hold > 0:
                    gevent.sleep(hold)
                    continue
                now = time.monotonic()
                chunks, hangups = [], []
                while self._out and self._out[0][0] <= now:
                    _, data, hangup = self._out.popleft()
                    chunks.append(data)
                    if hangup:
                        hangups.append(hangup)
                try:
                    self.sock.sendall(b"".join(chunks))
                except OSError:
                    self.close()
                    return
                for uuid in hangups:
                    self.switch.hangup_sent.setdefault(uuid, self.switch.clock())

    def flush(self, timeout: float = 1.0) -> None:
        """Let queued events reach the socket (before a notice or a close)."""
        with gevent.Timeout(timeout, False):
            while self._out and not self.closed:
                self._wake.set()
                gevent.sleep(0)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._wake.set()
        self.switch.listeners.discard(self)
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass

    # -- input -----------------------------------------------------------
    def frames(self):
        # When a command reached the switch is the kernel's receive time (SO_TIMESTAMPNS), not
        # when this single-threaded simulator got round to reading it: FreeSWITCH reads each
        # connection on its own real-time thread, so its receipt does not wait for other work.
        stamped = self.switch.clock is time.time and enable_receive_timestamps(self.sock)
        while not self.closed:
            try:
                if stamped:
                    data, anc, _, _ = self.sock.recvmsg(65536, socket.CMSG_SPACE(16))
                    self.received_at = kernel_time(anc)
                else:
                    data = self.sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                return
            try:
                frames = self.reader.feed(data)
            except ProtocolError:
                return
            for frame in frames:
                yield frame

    # -- commands shared by both kinds ----------------------------------
    def cmd_event(self, words: list[str]) -> bytes:
        if len(words) < 2:
            return reply("-ERR no keywords supplied")
        fmt = words[1].lower()
        names = words[2:]
        if fmt not in ("plain", "json", "xml"):
            fmt, names = "plain", words[2:]
        self.format = fmt
        custom = False
        for n in names:
            if n == "ALL":
                self.all_events = True
            elif n == "CUSTOM":
                custom = True
            elif custom and not n.isupper():
                self.subclasses.add(n)
            else:
                self.event_names.add(n)
        self.switch.listeners.add(self)
        return reply(f"+OK event listener enabled {fmt}")

    def cmd_common(self, line: str, frame) -> bytes | None:
        """Commands both socket kinds accept; None when not one of them."""
        words = line.split()
        verb = words[0] if words else ""
        if verb == "api":
            cmd, _, arg = line[4:].partition(" ")
            self._idle.clear()
            try:
                body = api.execute(self.switch, cmd, arg.strip(), self)
            finally:
                self._idle.set()
            return api_response(body)
        if verb == "bgapi":
            cmd, _, arg = line[6:].partition(" ")
            job = frame.get("Job-UUID") or str(uuidlib.uuid4())
            gevent.spawn(api.background, self.switch, cmd, arg.strip(), job, self.received_at)
            return reply(f"+OK Job-UUID: {job}", f"Job-UUID: {job}\n")
        if verb == "event":
            return self.cmd_event(words)
        if verb == "sendevent" and len(words) > 1:       # an event fired into the switch (BLF presence)
            return reply(f"+OK {phones.sendevent(self.switch, words[1], frame.headers[1:])}")
        if verb == "noevents":
            self.format = None
            self.all_events = False
            self.event_names.clear()
            self.subclasses.clear()
            self.switch.listeners.discard(self)
            return reply("+OK no longer listening for events")
        if verb == "nixevent":
            for n in words[1:]:
                self.event_names.discard(n)
                if n == "ALL":
                    self.all_events = False
            return reply("+OK events nixed")
        if verb == "filter" and len(words) >= 2:
            if words[1] == "delete" and len(words) >= 3:
                header, value = words[2], " ".join(words[3:])
                self.filters = [f for f in self.filters if f != (header, value)] if value else \
                    [f for f in self.filters if f[0] != header]
                return reply(f"+OK filter deleted. [{header}][{value}]")
            header, value = words[1], " ".join(words[2:])
            self.filters.append((header, value))
            return reply(f"+OK filter added. [{header}]=[{value}]")
        if verb == "sendmsg":
            target = words[1] if len(words) > 1 else None
            return self.sendmsg(target, frame)
        return None

    def sendmsg(self, target: str | None, frame) -> bytes:
        ch = self.switch.channels.get(target) if target else getattr(self, "channel", None)
        if ch is None or not ch.alive:
            return reply("+OK") if target is None else reply("-ERR invalid session id [%s]" % target)
        command = (frame.get("call-command") or "").strip()
        if command == "execute":
            app = frame.get("execute-app-name") or ""
            arg = frame.get("execute-app-arg") or ""
            if not arg and frame.body:
                arg = frame.body_text()
            ev_uuid = frame.get("Event-UUID") or str(uuidlib.uuid4())
            apps.queue_app(self.switch, ch, app, arg, ev_uuid)
        elif command == "hangup":
            cause = (frame.get("hangup-cause") or "NORMAL_CLEARING").strip()
            gevent.spawn(self.switch.hangup, ch, cause)
        elif command == "unicast" or command == "nomedia":
            pass
        return reply("+OK")


def run_inbound(switch: "Switch", ch: "Channel", plan: list[tuple[float, str, str]]) -> None:
    """The dialplan's 'socket ADDR async full': hand the answered call to the controller, then play
    the caller's part (keys pressed, hanging up) as planned."""
    ch.start_app("socket", "%s:%d async full" % switch.socket_target, str(uuidlib.uuid4()))
    ch.set_var("socket_host", switch.socket_target[0])
    switch.emit_channel_event(switch._steps["in.exec_answer"][0][1], ch)
    try:
        sock = gevent.socket.create_connection(switch.socket_target, timeout=5)
        sock.settimeout(None)
    except OSError as e:
        log.warning("socket app could not reach %s:%d (%s); hanging up %s", *switch.socket_target, e, ch.uuid)
        switch.hangup(ch, "DESTINATION_OUT_OF_ORDER")
        return
    session = OutboundSession(switch, sock, ch)
    gevent.spawn(session.serve)
    start = switch.clock()
    for at, kind, value in plan:
        delay = start + at * switch.time_scale - switch.clock()
        if ch.hungup_event.wait(max(delay, 0)):
            return
        if kind == "dtmf":
            for d in value:
                apps.deliver_dtmf(switch, ch, d)
        elif kind == "hangup":
            switch.hangup(ch, "NORMAL_CLEARING")


class InboundConnection(EventSocket):
    """A client connected to the switch's ESL port (what the controller's inbound connection talks to)."""

    def __init__(self, switch: "Switch", sock: socket.socket, password: str) -> None:
        super().__init__(switch, sock)
        self.password = password
        self.authed = False

    def serve(self) -> None:
        try:
            self.send_now(b"Content-Type: auth/request\n\n")
            for frame in self.frames():
                if not self.handle(frame.first_line.strip(), frame):
                    break
        finally:
            self.close()

    def handle(self, line: str, frame) -> bool:
        if not self.authed:
            if line.startswith("auth "):
                if line[5:].strip() == self.password:
                    self.authed = True
                    self.send_now(reply("+OK accepted"))
                    return True
                self.send_now(reply("-ERR invalid"))
                self.send_now(b"Content-Type: text/disconnect-notice\nContent-Length: 67\n\n" + GOODBYE)
                return False
            self.send_now(reply("-ERR command not found"))
            return True
        if line == "exit":
            self.send_now(reply("+OK bye"))
            self.flush()
            self.send_now(b"Content-Type: text/disconnect-notice\nContent-Length: 67\n\n" + GOODBYE)
            return False
        self.switch.command_log.append((self.switch.clock(), "inbound", line))
        out = self.cmd_common(line, frame)
        if out is None:
            words = line.split()
            if words and words[0] in ("linger", "nolinger", "myevents", "divert_events", "log", "nolog",
                                      "resume"):
                out = reply("+OK")
            else:
                out = reply("-ERR command not found")
        self.send_now(out)
        return True


class OutboundSession(EventSocket):
    """The switch connecting to the controller for one call, like 'socket ADDR async full'."""

    def __init__(self, switch: "Switch", sock: socket.socket, channel: "Channel") -> None:
        super().__init__(switch, sock)
        self.channel = channel
        self.connected = False
        self.myevents = False
        self.linger: int | None = None     # None: no linger; -1: forever; N seconds
        self.muted = False                  # set when the hangup events lose the race (capture 11)
        self._linger_timer: gevent.Greenlet | None = None
        channel.session = self

    def wants(self, event: Event) -> bool:
        if self.myevents and event.channel_uuid == self.channel.uuid:
            name = event.headers[0][1]
            if name in MYEVENTS:
                return True
        return bool(self.all_events or self.event_names or self.subclasses) and super().wants(event)

    def serve(self) -> None:
        try:
            for frame in self.frames():
                if not self.handle(frame.first_line.strip(), frame):
                    break
        finally:
            if self.channel.alive and self.channel.session is self:
                # The socket application ended: the dialplan hangs the call up.
                self.channel.session = None
                self.switch.hangup(self.channel, "NORMAL_CLEARING")
            self.close()

    def connect_reply(self) -> bytes:
        ch = self.channel
        template = self.switch.profile_connect
        headers = render(template, self.switch.seq.common("CHANNEL_DATA"), ch.tokens(), (), ch.vars)
        text = "".join(f"{k}: {url_encode(v)}\n" for k, v in headers)
        text += "Content-Type: command/reply\nReply-Text: %2BOK%0A\nSocket-Mode: async\nControl: full\n\n"
        return text.encode()

    def handle(self, line: str, frame) -> bool:
        self.switch.command_log.append((self.switch.clock(), "outbound:" + self.channel.uuid, line))
        words = line.split()
        verb = words[0] if words else ""
        if verb == "connect":
            self.connected = True
            self.send_now(self.connect_reply())
            return True
        if verb == "myevents":
            if self.myevents:
                self.send_now(reply("-ERR aready enabled."))
            else:
                self.myevents = True
                self.send_now(reply("+OK Events Enabled"))
            return True
        if verb == "linger":
            if len(words) > 1 and words[1].lstrip("-").isdigit():
                self.linger = int(words[1])
                self.send_now(reply(f"+OK will linger {self.linger} seconds"))
            else:
                self.linger = -1
                self.send_now(reply("+OK will linger"))
            return True
        if verb == "nolinger":
            self.linger = None
            self.send_now(reply("+OK will not linger"))
            return True
        if verb == "exit":
            self.send_now(reply("+OK bye"))
            self.flush()
            self.send_now(self.disconnect_notice())
            return False
        if verb == "resume":
            self.send_now(reply("+OK"))
            return True
        out = self.cmd_common(line, frame)
        self.send_now(out if out is not None else reply("-ERR command not found"))
        return True

    def disconnect_notice(self) -> bytes:
        return (f"Content-Type: text/disconnect-notice\nControlled-Session-UUID: {self.channel.uuid}\n"
                f"Content-Disposition: disconnect\nContent-Length: 67\n\n").encode() + GOODBYE

    def channel_hungup(self) -> None:
        """Called by the switch once the hangup events of our channel are queued."""
        gevent.spawn(self._after_hangup)

    def _after_hangup(self) -> None:
        self.flush()
        if self.closed:
            return
        if self.linger is not None:
            ch = self.channel
            self.send_now((f"Content-Type: text/disconnect-notice\nControlled-Session-UUID: {ch.uuid}\n"
                           f"Content-Disposition: linger\nChannel-Name: {ch.channel_name}\n"
                           f"Linger-Time: {self.linger}\nContent-Length: 0\n\n").encode())
            if self.linger < 0:
                return                    # FreeSWITCH waits for 'exit' forever
            gevent.sleep(self.linger)
            self.flush()
        if not self.closed:
            self.send_now(self.disconnect_notice())
            self.close()


def name_of(event: Event) -> str:
    return event.headers[0][1] if event.headers[0][0] == "Event-Name" else event.get("Event-Name")
