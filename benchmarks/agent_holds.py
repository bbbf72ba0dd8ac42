#!/usr/bin/env python3
"""How late is the next offer after an agent's wrap-up ends (issue 20)? On the simulator with a real
PostgreSQL: one agent, two live callers at a time; the first talks and hangs up, the second waits.

  wrap-up N s   the stored end of the wrap-up (the OnCall -> WrapUp row + N) -> the second caller's
                offer stored (offered_at): the controller's timer, the claim, no sweep needed
  wrap-up 0     the first contact's end (ended_at) -> the second's offer: the same statement as
                before issue 20 (esl_cb_complete frees the agent and claims)

Both are the database's times (one clock). Prints p50 / p95 / max in ms.

    python benchmarks/agent_holds.py [--rounds 20] [--wrap-up 1]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

from gevent import monkey  # noqa: E402

monkey.patch_all()
from psycogreen.gevent import patch_psycopg  # noqa: E402

patch_psycopg()
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from esl_cb.app import AgentService  # noqa: E402
from esl_cb.db.migrate import upgrade  # noqa: E402
from esl_cb.db.store import as_utc  # noqa: E402
from tests.fixtures import create_database, drop_database, wait_until  # noqa: E402
from tests.harness import Harness  # noqa: E402
from tests.test_callback_flow import quick_script  # noqa: E402


def rounds(h: Harness, n: int, wrap: int) -> list[float]:
    AgentService(h.store).set_settings("support", skill=True, wrap_up=wrap)
    lags = []
    for _ in range(n):
        first_uuid = h.call("3125550100")
        first = h.store.contact(wait_until(lambda: h.last_contact("connected"), 15, what="first connected"))
        h.call("3125550101")
        second_id = wait_until(lambda: h.last_contact("queued"), 15, what="second queued")
        h.sim_api(f"hangup {first_uuid}")
        wait_until(lambda: h.store.contact(second_id).state == "connected", 15, what="second connected")
        ended = h.store.contact(first.id)
        second = h.store.contact(second_id)
        if wrap:
            row = h.rows("SELECT at FROM agent_state_history WHERE to_state = 'WrapUp' AND contact_id = :c",
                         c=first.id)[0]
            start = as_utc(row["at"]) + timedelta(seconds=wrap)
        else:
            start = as_utc(ended.ended_at)
        lags.append((as_utc(second.offered_at) - start).total_seconds() * 1000)
        h.sim_api(f"hangup {second.caller_uuid}")
        wait_until(lambda: h.store.agent("ann").state == "Available", 15, what="ann free again")
    return lags


def summary(name: str, lags: list[float]) -> str:
    q = statistics.quantiles(lags, n=20) if len(lags) > 1 else lags * 19
    return f"| {name} | {len(lags)} | {statistics.median(lags):.1f} | {q[18]:.1f} | {max(lags):.1f} |"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--wrap-up", type=int, default=1)
    args = ap.parse_args()
    url = create_database()
    upgrade(url)
    h = Harness(url, quick_script())
    h.last_contact = lambda state: h.count(
        "SELECT max(id) FROM contacts WHERE state = :s", s=state)
    try:
        h.agent("ann", "1001", answer=0.1)
        h.available("ann")
        with_wrap = rounds(h, args.rounds, args.wrap_up)
        without = rounds(h, args.rounds, 0)
    finally:
        h.close()
    print(f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, {platform.node()}, "
          f"{len(os.sched_getaffinity(0))} CPUs (shared with other work)")
    print("| from -> the next offer stored | n | p50 ms | p95 ms | max ms |")
    print("|---|---|---|---|---|")
    print(summary(f"wrap-up end ({args.wrap_up} s) -> offer", with_wrap))
    print(summary("contact ended (wrap-up 0) -> offer, one statement", without), flush=True)
    time.sleep(1.0)              # the controller's last connections close
    drop_database(url)

if __name__ == "__main__":
    main()
