"""Sending on the inbound ESL connection: every reply reaches the command it answers (issue 17, item 3).

FreeSWITCH answers the commands of one connection in the order they arrived, and the connection
pairs a reply with the oldest command still waiting. These tests drive a fake switch that stops
reading (so a big command blocks in sendall) or holds a reply back, and check that a second
sender, a kill or a timeout never leaves a reply with the wrong command.
"""
from __future__ import annotations

import array
import fcntl
import socket
import termios

import gevent
import pytest
from gevent.event import Event as GEvent
from gevent.queue import Queue

from esl_cb.esl.inbound import CommandTimeout, ConnectionLost, InboundConnection
from esl_cb.esl.wire import FrameReader

from .fixtures import wait_until

# Far more than the socket buffers hold while the switch does not read: both are made small (together
# they held 12 KB when measured).
BIG = 256 << 10


class QuietSwitch:
    """A fake FreeSWITCH: logs in, then reads commands only once `reading` is set, and answers each in
    order; an api command gets a body naming it, and a reply listed in `held` waits for its event."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)     # inherited by the accepted one
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.port = self.listener.getsockname()[1]
        self.reading = GEvent()
        self.held: dict[str, GEvent] = {}          # command line prefix -> released when set
        self.commands: list[str] = []              # lines as the switch read them
        self.sock: socket.socket | None = None
        self._answers: Queue = Queue()
        self._greenlets = [gevent.spawn(self._serve), gevent.spawn(self._answer)]

    def short(self, line: str) -> str:
        return line if len(line) < 60 else f"{line[:40]}...({len(line)} chars)"

    def _serve(self) -> None:
        sock, _ = self.listener.accept()
        self.sock = sock
        sock.sendall(b"Content-Type: auth/request\n\n")
        reader = FrameReader()
        logged_in = False
        while True:
            if logged_in:
                self.reading.wait()
            data = sock.recv(65536)
            if not data:
                return
            for frame in reader.feed(data):
                if frame.first_line.startswith("auth "):
                    sock.sendall(b"Content-Type: command/reply\nReply-Text: +OK accepted\n\n")
                    logged_in = True
                    continue
                self.commands.append(self.short(frame.first_line))
                self._answers.put(frame.first_line)

    def _answer(self) -> None:
        for line in self._answers:
            for prefix, released in self.held.items():
                if line.startswith(prefix):
                    released.wait()
            if line.startswith("api "):
                body = f"answer to {self.short(line[4:])}\n".encode()
                reply = b"Content-Type: api/response\nContent-Length: %d\n\n" % len(body) + body
            else:
                reply = b"Content-Type: command/reply\nReply-Text: +OK\n\n"
            try:
                self.sock.sendall(reply)
            except OSError:
                return

    def unread_bytes(self) -> int:
        if self.sock is None:
            return 0
        count = array.array("i", [0])
        fcntl.ioctl(self.sock.fileno(), termios.FIONREAD, count)    # without reading (nor waiting)
        return count[0]

    def close(self) -> None:
        self.reading.set()
        for released in self.held.values():
            released.set()
        gevent.killall(self._greenlets)
        for s in (self.sock, self.listener):
            if s is not None:
                s.close()


@pytest.fixture
def quiet():
    fake = QuietSwitch()
    yield fake
    fake.close()


def connect(fake: QuietSwitch, timeout: float = 5.0, lost: GEvent | None = None) -> InboundConnection:
    conn = InboundConnection("127.0.0.1", fake.port, "ClueCon", lambda e: None,
                             lost.set if lost is not None else None, timeout=timeout)
    fake.reading.set()
    conn.connect([])
    fake.reading.clear()
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    return conn


def blocked_in_sendall(conn: InboundConnection, fake: QuietSwitch, cmd: str) -> gevent.Greenlet:
    """A greenlet sending `api CMD` (BIG bytes), stuck in sendall: the switch holds some of its bytes
    unread, and the rest cannot fit in any buffer until the switch reads."""
    sender = gevent.spawn(conn.api, cmd)
    wait_until(lambda: fake.unread_bytes() > 0, 5, what="the big command's first bytes at the switch")
    assert not sender.ready()
    return sender


def test_a_command_sent_while_another_is_still_sending_gets_its_own_reply(quiet):
    conn = connect(quiet)
    exists = "uuid_exists " + "a" * BIG
    first = blocked_in_sendall(conn, quiet, exists)
    second = gevent.spawn(conn.api, "uuid_bridge 1111 2222")
    gevent.idle()               # the second sender has run as far as it can while the first is stuck
    assert not second.ready(), f"the second sender did not wait its turn: {second.exception!r}"
    quiet.reading.set()
    assert first.get(timeout=10) == f"answer to {quiet.short(exists)}\n"
    assert second.get(timeout=10) == "answer to uuid_bridge 1111 2222\n"
    # ...and the connection is not shifted by one for the commands after them.
    assert conn.api("uuid_exists 3333") == "answer to uuid_exists 3333\n"
    assert quiet.commands == [quiet.short("api " + exists), "api uuid_bridge 1111 2222", "api uuid_exists 3333"]
    conn.close()


def test_a_sender_killed_in_the_middle_of_its_command_drops_the_connection(quiet):
    lost = GEvent()
    conn = connect(quiet, lost=lost)
    first = blocked_in_sendall(conn, quiet, "uuid_exists " + "a" * BIG)
    waiting = gevent.spawn(conn.api, "uuid_bridge 1111 2222")
    gevent.idle()
    first.kill(gevent.Timeout())            # e.g. a caller's own deadline, raised into it mid-send
    assert isinstance(first.exception, gevent.Timeout)      # the killer's exception, not swallowed
    # Half a command is on the wire: nothing sent on this connection could be trusted any more.
    assert lost.wait(5) and not conn.connected
    with pytest.raises(ConnectionLost):
        waiting.get(timeout=5)
    with pytest.raises(ConnectionLost):
        conn.api("uuid_exists 3333")


def test_a_switch_that_takes_no_bytes_for_the_timeout_is_dropped(quiet):
    lost = GEvent()
    conn = connect(quiet, timeout=0.5, lost=lost)
    first = gevent.spawn(conn.api, "uuid_exists " + "a" * BIG)
    second = gevent.spawn(conn.api, "uuid_bridge 1111 2222")
    with pytest.raises(ConnectionLost, match="took no more of a command"):
        first.get(timeout=5)
    with pytest.raises((ConnectionLost, CommandTimeout)):
        second.get(timeout=5)
    assert lost.is_set() and not conn.connected


def test_closing_while_a_command_is_being_sent_does_not_raise(quiet):
    conn = connect(quiet)
    first = blocked_in_sendall(conn, quiet, "uuid_exists " + "a" * BIG)
    conn.close()
    with pytest.raises(ConnectionLost):
        first.get(timeout=5)


@pytest.mark.parametrize("abandon", ["kill", "timeout"])
def test_the_reply_of_an_abandoned_command_is_not_taken_by_the_next(quiet, abandon):
    """A greenlet that gives up waiting (killed, or its own Timeout) leaves its result in line: the
    reply that still comes is consumed by it, not by the next command."""
    conn = connect(quiet)
    quiet.reading.set()
    quiet.held["api originate"] = GEvent()

    def originate_briefly() -> None:
        with gevent.Timeout(0.2, False):
            conn.api("originate user/1000 &park()")
    first = gevent.spawn(conn.api, "originate user/1000 &park()") if abandon == "kill" else \
        gevent.spawn(originate_briefly)
    wait_until(lambda: quiet.commands == ["api originate user/1000 &park()"], 5, what="the originate at the switch")
    if abandon == "kill":
        first.kill()
    else:
        first.join(5)
    assert first.dead
    second = gevent.spawn(conn.api, "uuid_exists 3333")
    wait_until(lambda: len(quiet.commands) == 2, 5, what="the second command at the switch")
    quiet.held["api originate"].set()
    assert second.get(timeout=5) == "answer to uuid_exists 3333\n"
    assert conn.connected
    conn.close()
