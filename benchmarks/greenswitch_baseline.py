#!/usr/bin/env python3
"""The baseline the issue asks for: stock greenswitch InboundESL with `event plain ALL` and a plain
gevent timer beside it. Prints (JSON) how late a 20 ms timer fires while events stream in.

    python benchmarks/greenswitch_baseline.py --esl 127.0.0.1:8021 --seconds 8
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
import greenswitch  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--esl", required=True)
    ap.add_argument("--seconds", type=float, default=8.0)
    args = ap.parse_args()
    host, port = args.esl.rsplit(":", 1)
    esl = greenswitch.InboundESL(host=host, port=int(port), password="ClueCon")
    esl.connect()
    events = [0]
    esl.register_handle("*", lambda ev: events.__setitem__(0, events[0] + 1))
    esl.send("event plain ALL")
    late = []
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        t = time.monotonic()
        gevent.sleep(0.02)
        late.append((time.monotonic() - t - 0.02) * 1000)
    print(json.dumps({"timer_late_ms": late, "events": events[0]}))


if __name__ == "__main__":
    main()
