"""Record what a real FreeSWITCH sends an inbound ESL connection when a phone REGISTERs, un-REGISTERs
(Expires: 0) and lets a registration expire, and how it answers the registration queries: the
capture tests/captures/14-registrations.jsonl (the format of ../shared/esl-captures/README.md).

    .venv/bin/python -m tools.capture_registrations OUT.jsonl

It starts the test rig's switch (tests/freeswitch) and SIPp; nothing else is needed."""
from __future__ import annotations

from gevent import monkey

monkey.patch_all()      # the rig's InboundConnection is gevent's, as in the tests

import json  # noqa: E402
import socket
import sys
import tempfile
import time
from pathlib import Path

from esl_cb.esl.wire import FrameReader
from tests.freeswitch.sipp import Phones, register_phone
from tests.freeswitch.switch import PASSWORD, RealSwitch, free_port

QUERIES = ("show registrations as json", "show registrations", "sofia status profile test reg",
           "sofia_contact 2001@127.0.0.1", "sofia_contact 2009@127.0.0.1", "sofia xmlstatus profile test reg")
EVENTS = "event plain CUSTOM sofia::register sofia::unregister sofia::expire"


def _raw(frame) -> str:
    """The frame's bytes as they were on the wire (headers are kept undecoded, in order)."""
    return "".join(f"{k}: {v}\n" for k, v in frame.headers) + "\n" + frame.body.decode()


class Recorder:
    def __init__(self, port: int) -> None:
        self.t0 = time.monotonic()
        self.records: list[dict] = []
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.reader = FrameReader()
        self.meta("tcp-connected")

    def meta(self, what: str) -> None:
        self.records.append({"t": round(time.monotonic() - self.t0, 6), "conn": "A", "dir": "meta", "event": what})

    def _frames(self, until: float, want: int | None = None) -> list:
        got = []
        self.sock.settimeout(0.05)
        while time.monotonic() < until and (want is None or len(got) < want):
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not data:
                self.meta("eof")
                break
            for frame in self.reader.feed(data):
                self.records.append({"t": round(time.monotonic() - self.t0, 6), "conn": "A", "dir": "in",
                                     "raw": _raw(frame)})
                got.append(frame)
        return got

    def send(self, text: str, wait_replies: int = 1, timeout: float = 5.0) -> list:
        self.records.append({"t": round(time.monotonic() - self.t0, 6), "conn": "A", "dir": "out", "raw": text})
        self.sock.sendall(text.encode())
        return self._frames(time.monotonic() + timeout, wait_replies)

    def wait_event(self, subclass: str, timeout: float) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for f in self._frames(min(end, time.monotonic() + 0.5)):
                if f.content_type == "text/event-plain" and subclass in f.body.decode():
                    return
        raise RuntimeError(f"no {subclass} within {timeout}s")


def main(out: Path) -> None:
    root = Path(tempfile.mkdtemp(prefix="capreg-"))
    phones = Phones(root / "phones")
    switch = RealSwitch(root / "fs", f"127.0.0.1:{free_port()}").start()
    try:
        rec = Recorder(switch.esl_port)
        rec._frames(time.monotonic() + 2, 1)                     # auth/request
        rec.send(f"auth {PASSWORD}\n\n")
        rec.send(EVENTS + "\n\n")
        notes: list[str] = []

        def note(text: str) -> None:
            notes.append(text)
            print(text, flush=True)
        call_id = register_phone(root / "reg", switch.sip_port, "2001", phones.port, expires=3600)
        note("SIPp REGISTER 2001 (Expires: 3600, Contact at the test phones)")
        rec.wait_event("sofia%3A%3Aregister", 10)
        second = register_phone(root / "reg", switch.sip_port, "2001", phones.port, expires=3600,
                                call_id="second-phone-2001")
        note("SIPp REGISTER 2001 again from a second phone (another Call-ID)")
        rec.wait_event("sofia%3A%3Aregister", 10)
        for q in QUERIES:
            rec.send(f"api {q}\n\n")
        register_phone(root / "reg", switch.sip_port, "2001", phones.port, expires=0, call_id=call_id, cseq=2)
        note("SIPp REGISTER 2001 Expires: 0 with the first Call-ID (un-REGISTER)")
        rec.wait_event("sofia%3A%3Aunregister", 10)
        rec.send("api show registrations as json\n\n")
        register_phone(root / "reg", switch.sip_port, "2001", phones.port, expires=0, call_id=second, cseq=2)
        note("SIPp REGISTER 2001 Expires: 0 with the second Call-ID")
        rec.wait_event("sofia%3A%3Aunregister", 10)
        rec.send("api show registrations as json\n\n")
        started = time.monotonic()
        register_phone(root / "reg", switch.sip_port, "2002", phones.port, expires=5, call_id="short-2002")
        note("SIPp REGISTER 2002 Expires: 5, then silence until the switch expires it")
        rec.wait_event("sofia%3A%3Aregister", 10)
        rec.wait_event("sofia%3A%3Aexpire", 120)
        note(f"sofia::expire for 2002 came {time.monotonic() - started:.1f} s after its REGISTER")
        rec.send("api show registrations as json\n\n")
        rec.send("exit\n\n", wait_replies=2, timeout=2)
        rec.meta("client-closed")
        header = {"t": 0.0, "dir": "meta", "event": "capture-header", "scenario": "14-registrations",
                  "title": "sofia::register / unregister / expire and the registration queries",
                  "freeswitch_version": switch.api("version").strip(), "connections": {"A": "inbound ESL"},
                  "commands": [r["raw"].strip() for r in rec.records if r["dir"] == "out"], "notes": notes}
        with out.open("w") as f:
            for r in [header] + rec.records:
                f.write(json.dumps(r) + "\n")
    finally:
        switch.stop()
        phones.stop()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
