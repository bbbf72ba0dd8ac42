#!/usr/bin/env python3
"""The HTTP API's cost (issue 19). One command:

    python benchmarks/api_bench.py                # full run, a few minutes
    python benchmarks/api_bench.py --workers 2    # esl-cb api --workers 2
    python benchmarks/api_bench.py --smoke        # seconds: that it still runs (numbers meaningless)

Starts `esl-cb sim`, `esl-cb run` and `esl-cb api` as separate processes against a fresh PostgreSQL
database (benchmarks/bench.py's Rig), stores 10,000 callbacks, then measures, each from this client:

- GET /api/v1/callbacks/{id} and POST /api/v1/callbacks: p50/p99 one request at a time, and the
  bookings a second with 8 at once (the goals: the read's p99 under 20 ms, 200 bookings a second);
- the controller's offer latency (an agent made available -> the offer's originate at the simulated
  switch, as bench.py's first row) with the API idle, then while the API serves 200 requests a second
  (reads, lists, queues and bookings), in one run: the API must not move it beyond noise.

No thresholds: it prints numbers, each row as soon as it is measured.
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench import Rig, row, wait_for  # noqa: E402  (patches gevent first)

import gevent  # noqa: E402
import httpx  # noqa: E402
from gevent.pool import Pool  # noqa: E402
from sqlalchemy import text  # noqa: E402

from benchmarks.common import esl_cb, free_port, pct, proc_stats, wait_port  # noqa: E402
from esl_cb.app.tokens import TokenService  # noqa: E402

STORED = 10_000
SEED = """
INSERT INTO contacts (direction, state, script, skill_id, original_ani, original_dnis, ani, dnis, priority_initial,
                      priority_acceleration, priority_max, callback_requested, callback_number, callback_caller_id,
                      call_delay_sec, attempts, arrived_at, queued_at, callback_requested_at)
SELECT 'inbound', 'callback_queued', '(bench)', s.id, n, '+13125557000', '+13125557000', n, 0, 0, 0, true, n,
       '+13125557000', 0, 0, now(), now() - (g || ' seconds')::interval, now()
  FROM generate_series(1, :count) g, skills s,
       LATERAL (SELECT '+1312' || lpad((4000000 + g)::text, 7, '0') AS n) num
 WHERE s.name = 'stored'
"""


class Api:
    def __init__(self, rig: Rig, tmp: Path, workers: int = 1, connections: int = 20) -> None:
        self.port = free_port()
        self.proc = esl_cb("api", "--db", rig.url, "--listen", f"127.0.0.1:{self.port}", "--rate-limit", "0",
                           "--workers", str(workers), "--db-connections", str(connections),
                           "--callbacks-per-number-per-day", "0", "--callbacks-per-caller-per-hour", "0",
                           "--log-level", "WARNING", log=(tmp / "api.log").open("wb"))
        wait_port(self.port)
        self.secret = TokenService(rig.store).create("bench", "supervisor").secret
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30,
                                   headers={"Authorization": f"Bearer {self.secret}"},
                                   limits=httpx.Limits(max_connections=64, max_keepalive_connections=64))

    def close(self) -> None:
        self.client.close()
        self.proc.terminate()
        self.proc.wait(10)


def store_callbacks(rig: Rig, count: int) -> list[int]:
    rig.store.add_skill("stored")
    with rig.store.engine.begin() as conn:
        conn.execute(text(SEED), {"count": count})
        ids = list(conn.execute(text("SELECT id FROM contacts WHERE script = '(bench)'")).scalars())
    # As autovacuum leaves a queue that has waited a while (its pages all-visible, its statistics known).
    with rig.store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE contacts"))
    return ids


def timed(call) -> float:
    t0 = time.perf_counter()
    r = call()
    ms = (time.perf_counter() - t0) * 1000
    if r.status_code >= 400:
        raise RuntimeError(f"{r.request.method} {r.request.url}: {r.status_code} {r.text[:200]}")
    return ms


def reads(api: Api, ids: list[int], n: int) -> list[float]:
    return [timed(lambda: api.client.get(f"/api/v1/callbacks/{random.choice(ids)}")) for _ in range(n)]


_numbers = iter(range(5_000_000, 9_999_999))


def booking() -> dict:
    return {"number": f"+1312{next(_numbers):07d}", "skill": "stored", "data": {"ticket": "bench"}}


def bookings(api: Api, n: int) -> list[float]:
    return [timed(lambda: api.client.post("/api/v1/callbacks", json=booking())) for _ in range(n)]


def bookings_per_second(api: Api, n: int, concurrency: int = 8) -> float:  # noqa: D103
    pool = Pool(concurrency)
    t0 = time.perf_counter()
    for _ in range(n):
        pool.spawn(timed, lambda: api.client.post("/api/v1/callbacks", json=booking()))
    pool.join(raise_error=True)
    return n / (time.perf_counter() - t0)


class Load:
    """`rate` API requests a second, started on a fixed schedule (each in its own greenlet); past
    MAX_IN_FLIGHT unanswered ones a request is not sent but counted as `behind` (an API that falls
    behind must not drown the client, which also measures the offers)."""

    MAX_IN_FLIGHT = 128

    def __init__(self, api: Api, ids: list[int], rate: float) -> None:
        self.api, self.ids, self.rate = api, ids, rate
        self.sent = self.failed = self.behind = self.in_flight = 0
        self.latencies: list[float] = []
        self.runner = gevent.spawn(self._run)

    def _one(self, i: int) -> None:
        """Of each 20: 12 reads of one callback, 4 pages of the list, 2 queue summaries, 2 bookings;
        one request in 200 is a wall screen reading its board: the supervisor page's request, the
        whole counts and the first 50 rows of each queue (queues?detail=true&limit=50)."""
        c = self.api.client
        k = i % 20
        if i % 200 == 199:
            call = lambda: c.get("/api/v1/queues", params={"detail": "true", "limit": 50})  # noqa: E731
        elif k < 12:
            call = lambda: c.get(f"/api/v1/callbacks/{random.choice(self.ids)}")  # noqa: E731
        elif k < 16:
            call = lambda: c.get("/api/v1/callbacks", params={"limit": 20})       # noqa: E731
        elif k < 18:
            call = lambda: c.get("/api/v1/queues")                                # noqa: E731
        else:
            call = lambda: c.post("/api/v1/callbacks", json=booking())            # noqa: E731
        self.in_flight += 1
        try:
            self.latencies.append(timed(call))
        except Exception:
            self.failed += 1
        finally:
            self.in_flight -= 1

    def _run(self) -> None:
        t0 = time.perf_counter()
        i = 0
        while True:
            due = t0 + i / self.rate
            gevent.sleep(max(0.0, due - time.perf_counter()))
            if self.in_flight >= self.MAX_IN_FLIGHT:
                self.behind += 1
            else:
                gevent.spawn(self._one, i)
                self.sent += 1
            i += 1

    def stop(self) -> float:
        """The rate achieved (requests started a second)."""
        self.runner.kill()
        return self.sent


def offer_latency(rig: Rig, name: str, ext: str, samples: int) -> list[float]:
    """An agent made available (store + NOTIFY, as the CLI does) while a contact waits -> its offer
    reaches the simulated switch. The agent rejects (Refused) and is made available again."""
    rig.agent(name, ext, name, "reject")
    rig.seed(name, 3, 0, "3125" + ext[:2])
    rig.new_originates()
    out = []
    for _ in range(samples):
        t0 = rig.available(name)
        o = wait_for(lambda: [x for x in rig.new_originates() if x["number"] == ext], 30, "the offer")[0]
        out.append((o["t"] - t0) * 1000)
        wait_for(lambda: [a for a in rig.store.agents() if a["name"] == name and a["state"] == "Refused"], 30,
                 "the refusal")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="a few seconds: that it runs")
    ap.add_argument("--samples", type=int, default=0, help="requests per latency row (default 1000, smoke 20)")
    ap.add_argument("--rate", type=float, default=200.0, help="API requests a second during the offers")
    ap.add_argument("--workers", type=int, default=1, help="esl-cb api --workers")
    ap.add_argument("--db-connections", type=int, default=20, help="esl-cb api --db-connections")
    ap.add_argument("--concurrency", type=int, default=8, help="bookings at once for the bookings a second")
    args = ap.parse_args()
    n = args.samples or (20 if args.smoke else 1000)
    offers = 10 if args.smoke else 200

    def say(line: str = "") -> None:
        print(line, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        rig = Rig(Path(tmp), 10.0)
        api = Api(rig, Path(tmp), args.workers, args.db_connections)
        try:
            ids = store_callbacks(rig, 1000 if args.smoke else STORED)
            say(f"esl-cb API benchmark {time.strftime('%Y-%m-%d %H:%M')} on {platform.node()} ({os.cpu_count()} "
                f"cores, Python {platform.python_version()}), {len(ids):,} callbacks stored, {n} requests per row, "
                f"API workers {args.workers} ({args.db_connections} database connections each), load average {os.getloadavg()[0]:.1f} at the start"
                + (" (SMOKE: numbers meaningless)" if args.smoke else ""))
            say()
            say("| measure (ms) | p50 | p95 | p99 | max | goal |")
            say("|---|---|---|---|---|---|")
            reads(api, ids, 20)                                           # warm the pools and caches
            say(row("GET /api/v1/callbacks/{id}, one at a time", reads(api, ids, n), "p99 < 20"))
            say(row("POST /api/v1/callbacks, one at a time", bookings(api, n), ""))
            per_second = bookings_per_second(api, 100 if args.smoke else 2000, args.concurrency)
            quiet = offer_latency(rig, "quiet", "9100", offers)
            say(row("offer latency, API idle", quiet, "(the baseline)"))
            cpu0 = proc_stats(api.proc.pid)[0]
            load = Load(api, ids, args.rate)
            t0 = time.perf_counter()
            busy = offer_latency(rig, "busy", "9200", offers)
            sent = load.stop()
            seconds = time.perf_counter() - t0
            wait_for(lambda: len(load.latencies) + load.failed >= sent, 60, "the last requests")
            api_cpu = (proc_stats(api.proc.pid)[0] - cpu0) / seconds * 100
            say(row(f"offer latency, API serving {len(load.latencies) / seconds:.0f} requests/s", busy,
                    "no change beyond noise"))
            say(row("  the API's requests meanwhile", load.latencies, ""))
            say()
            say(f"bookings a second, {args.concurrency} at once: {per_second:.0f} (goal 200)")
            say(f"during the load: {load.sent} requests sent in {seconds:.0f} s, {load.failed} failed, {load.behind} not "
                f"sent (over {Load.MAX_IN_FLIGHT} unanswered); the API's first process used {api_cpu:.0f}% of one "
                f"core; offer latency p50 {pct(busy, 50) - pct(quiet, 50):+.1f} ms, p99 "
                f"{pct(busy, 99) - pct(quiet, 99):+.1f} ms against idle")
        finally:
            api.close()
            rig.close()


if __name__ == "__main__":
    main()
