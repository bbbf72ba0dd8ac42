#!/usr/bin/env python3
"""Simulator scale: concurrent channels held and events/s delivered to one subscriber.

Starts `esl-cb sim` as its own process, subscribes with `event plain ALL` on a
raw socket (framing only, so the subscriber is not the bottleneck), originates
N parked channels with bgapi, and prints what the switch sustained.

    python benchmarks/sim_scale.py [--channels 2000] [--smoke]
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import free_port, proc_stats  # noqa: E402
from esl_cb.esl.wire import FrameReader  # noqa: E402


class Conn:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.reader = FrameReader()
        self.pending = []

    def frames(self, timeout: float = 5.0):
        self.sock.settimeout(timeout)
        data = self.sock.recv(1 << 20)
        if not data:
            raise EOFError
        return self.reader.feed(data)

    def command(self, line: str):
        self.sock.sendall(line.encode() + b"\n\n")
        want = "api/response" if line.startswith("api ") else "command/reply"
        while True:
            for f in self.frames():
                if f.get("Content-Type") == want:
                    return f


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--channels", type=int, default=2000)
    ap.add_argument("--smoke", action="store_true", help="a few seconds, for CI")
    args = ap.parse_args()
    n = 100 if args.smoke else args.channels
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", "from cli import main; main()", "sim", "--listen",
                             f"127.0.0.1:{port}", "--max-sessions", str(n + 100)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        deadline = time.time() + 10
        while True:
            try:
                ctl = Conn(port)
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)
        ctl.frames()
        ctl.command("auth ClueCon")
        ctl.command("api sim endpoint 5551000 answer 0.01")
        sub = Conn(port)
        sub.frames()
        sub.command("auth ClueCon")
        sub.command("event plain ALL")
        cpu0, _ = proc_stats(proc.pid)
        t0 = time.perf_counter()
        for i in range(n):
            ctl.sock.sendall(b"bgapi originate {origination_uuid=00000000-0000-4000-8000-%012d}"
                             b"sofia/gateway/pstn/5551000 &park()\n\n" % i)
        events = 0
        parks = 0
        while parks < n:
            for f in sub.frames(30):
                if f.get("Content-Type") == "text/event-plain":
                    events += 1
                    if b"Event-Name: CHANNEL_PARK\n" in f.body[:40]:
                        parks += 1
        elapsed = time.perf_counter() - t0
        cpu1, rss = proc_stats(proc.pid)
        ctl.command("api sim coredb 0")         # read the live table, not the batch written 200 ms ago
        reply = ctl.command("api show channels as json")
        held = int(reply.body.split(b'"row_count":', 1)[1].split(b",", 1)[0].strip(b" }\n"))
        print("simulator scale benchmark (one simulator process, one `event plain ALL` subscriber)")
        print(f"  channels originated and parked : {n}")
        print(f"  channels held at the end       : {held}")
        print(f"  events delivered               : {events} in {elapsed:.2f} s = {events / elapsed:,.0f} events/s")
        print(f"  simulator CPU                  : {cpu1 - cpu0:.2f} s ({(cpu1 - cpu0) / elapsed * 100:.0f}% of one core)")
        print(f"  simulator RSS                  : {rss / 1e6:.1f} MB ({rss / max(held, 1) / 1024:.1f} KiB per channel)")
    finally:
        proc.terminate()
        proc.wait(5)


if __name__ == "__main__":
    main()
