"""A switch that sends garbage, or answers -ERR to everything: clear errors, no crash, nothing lost."""
from __future__ import annotations

from gevent.server import StreamServer

from esl_cb.domain.queue import Priority
from esl_cb.domain.states import AgentState

from .fixtures import wait_until
from .harness import Harness
from .test_callback_flow import quick_script


class HostileSwitch:
    """Speaks just enough ESL to log in, then misbehaves as told."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.logins = 0
        self.originates: list[str] = []
        self.server = StreamServer(("127.0.0.1", 0), self.handle)
        self.server.start()

    def handle(self, sock, _addr) -> None:
        sock.sendall(b"Content-Type: auth/request\n\n")
        buf = b""
        while True:
            data = sock.recv(65536)
            if not data:
                return
            buf += data
            while b"\n\n" in buf:
                frame, buf = buf.split(b"\n\n", 1)
                line = frame.split(b"\n", 1)[0].decode()
                if line.startswith("auth"):
                    self.logins += 1
                    sock.sendall(b"Content-Type: command/reply\nReply-Text: +OK accepted\n\n")
                    if self.mode == "garbage":
                        sock.sendall(b"Content-Length: banana\n\nthis is not ESL\n\n")
                elif line.startswith("api"):
                    body = b"-ERR everything\n"
                    sock.sendall(b"Content-Type: api/response\nContent-Length: %d\n\n" % len(body) + body)
                else:
                    if line.startswith("bgapi originate"):
                        self.originates.append(line)
                    sock.sendall(b"Content-Type: command/reply\nReply-Text: -ERR everything\n\n")


def test_switch_answering_err_to_everything(pg_url):
    bad = HostileSwitch("err")
    h = Harness(pg_url, quick_script(), esl=f"127.0.0.1:{bad.server.server_port}")
    try:
        h.store.add_agent("ann", "user/1001", ["support"])
        cid = h.store.create_contact("c-1", "3125550100", "3125557000", "quick", "3125550100", "3125557000")
        h.store.queue_contact(cid, "support", Priority(1, 0, 1))
        h.store.request_callback(cid, "+13125550100", "+13125557000", 0, "+13125557000", "+13125550100")
        h.store.set_agent_state("ann", AgentState.AVAILABLE, list(AgentState))
        h.controller.wake_dispatcher()
        wait_until(lambda: len(bad.originates) >= 3, what="the controller to keep offering")   # it did not give up

        def kept() -> bool:     # between two refused offers: checked when no offer is in flight
            c = h.contact(cid)
            return c.state == "callback_queued" and h.store.agents()[0]["state"] == "Available"
        wait_until(kept, what="the contact back in the queue and the agent free")
        assert h.contact(cid).attempts == 0                          # kept, not lost, never counted
        assert all("user/1001" in o for o in bad.originates)         # only the agent was rung, never the customer
        assert not h.controller.greenlet("dispatcher").dead                   # the dispatcher is still running
    finally:
        h.close()
        bad.server.stop()


def test_corrupt_event_stream_reconnects(pg_url, caplog):
    bad = HostileSwitch("garbage")
    h = None
    try:
        h = Harness.__new__(Harness)
        from esl_cb.config import Settings
        from esl_cb.controller.service import Controller
        from esl_cb.db.store import Store
        h.store = Store(pg_url, "test")
        settings = Settings(esl=f"127.0.0.1:{bad.server.server_port}", listen="127.0.0.1:0", db=pg_url,
                            controller_id="test").validate()
        ctl = Controller(settings, h.store, quick_script()).start()
        wait_until(lambda: bad.logins >= 3, timeout=10, what="reconnections after the corrupt stream")
        assert any("is corrupt" in r.getMessage() for r in caplog.records)
        ctl.stop()
    finally:
        bad.server.stop()
        if h is not None:
            h.store.close()
