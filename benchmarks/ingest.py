"""Event ingest on one core: our reader versus greenswitch's parse path, on recorded FreeSWITCH frames."""
from __future__ import annotations

import io
import json
import time
from pathlib import Path

from esl_cb.esl.inbound import parse_event
from esl_cb.esl.wire import FrameReader

CAPTURES = Path(__file__).resolve().parent.parent / "tests" / "captures"


def recorded_stream(copies: int) -> tuple[bytes, int]:
    frames = []
    for f in sorted(CAPTURES.glob("0[3-5]*.jsonl")):
        for line in f.open():
            r = json.loads(line)
            if r.get("dir") == "in" and r["raw"].startswith("Content-Length:") and "text/event-plain" in r["raw"][:60]:
                frames.append(r["raw"].encode())
    one = b"".join(frames)
    return one * copies, len(frames) * copies


def ours(stream: bytes) -> tuple[float, list[tuple[str, str]]]:
    reader = FrameReader()
    seen = []
    t = time.perf_counter()
    for i in range(0, len(stream), 65536):
        for frame in reader.feed(stream[i:i + 65536]):
            ev = parse_event(frame)
            seen.append((ev.name, ev.uuid))          # what the controller's router reads
    return time.perf_counter() - t, seen


def greenswitch_path(stream: bytes) -> tuple[float, int]:
    from greenswitch.esl import ESLProtocol

    proto = ESLProtocol()
    proto.sock = None
    proto.sock_file = io.BytesIO(stream)
    proto.connected = True
    t = time.perf_counter()
    proto.receive_events()                          # its reader: readline, unquote, split, queue
    return time.perf_counter() - t, proto._esl_event_queue.qsize()


def run(copies: int = 40) -> dict:
    stream, n = recorded_stream(copies)
    t_ours, seen = ours(stream)
    t_gs, n_gs = greenswitch_path(stream)
    expected = []
    reader = FrameReader()
    for frame in reader.feed(stream):
        ev = parse_event(frame)
        expected.append((ev.name, ev.uuid))
    return {"events": n, "ours_per_s": n / t_ours, "greenswitch_per_s": n_gs / t_gs, "greenswitch_events": n_gs,
            "lossless_in_order": seen == expected and len(seen) == n}


if __name__ == "__main__":
    print(run())
