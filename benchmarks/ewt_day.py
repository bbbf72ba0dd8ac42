#!/usr/bin/env python3
"""How good is Queuestatus' estimated wait? A simulated working day of one skill, no telephony and no
database: a discrete-event simulation that asks the domain's own estimate_wait at every arrival.

The day (defaults; flags change them):

- 08:00-18:00, arrivals Poisson with a half-hourly curve (a morning peak, a lunch dip, an afternoon
  peak): about 930 calls a day;
- handle times log-normal, mean 240 s, coefficient of variation 0.8 (or --handle exponential);
- a staffing plan per half hour by square-root staffing on the forecast curve (agents =
  load + 0.5 x sqrt(load), rounded), so waits build at the peaks; an agent leaving at the end of a
  shift finishes the call first (and still counts as staffed, as OnCall does in the store);
- FIFO, the SPEC order for equal priorities;
- callers abandon after an exponential patience (mean 300 s; --patience 0: nobody does);
- a caller told a wait over the threshold (120 s) takes a callback with probability 0.4: it keeps
  its place and never abandons, and the agent spends 15 s more on it (CallDelaySec and the dial).

At each arrival: position = waiting + 1, staffed = agents on shift (idle or busy), available = idle
agents, AHT = the mean handle time (offer to hangup) of the calls that ended in the last hour, or
DEFAULT_AHT_SEC with none (what esl_cb/db/queue_status.py reads). Our estimate is compared with the
wait that followed (arrival to an agent taking the contact), for every contact that was served;
abandoned callers have no actual wait and are left out. The same is done 30 s after arrival for
those still waiting (the example script's first announcement, after its music). For reference, the
classic last-to-enter-service estimate (the wait of the contact that most recently reached an
agent) is scored on the same contacts.

    python benchmarks/ewt_day.py [--days 20] [--seed 1] [--handle lognormal|exponential]
                                 [--patience 300] [--threshold 120] [--staffing-beta 0.5]
"""
from __future__ import annotations

import argparse
import heapq
import math
import os
import random
import statistics
import sys
from collections import deque
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from esl_cb.domain.ewt import AHT_WINDOW_SEC, estimate_wait, recent_aht  # noqa: E402

OPEN, CLOSE = 8 * 3600, 18 * 3600
INTERVAL = 1800
# Calls per hour, per half hour from 08:00 (a typical inbound day: morning peak, lunch dip, afternoon peak).
CURVE = [40, 70, 100, 120, 135, 130, 115, 95, 80, 85, 100, 115, 120, 110, 95, 80, 65, 50, 40, 30]
MEAN_HANDLE = 240.0
CALLBACK_EXTRA = 15.0          # CallDelaySec and the dial: the agent is tied up this much longer


@dataclass
class Contact:
    arrived: float
    estimate: int
    position: int
    staffed: int
    available: int
    les: float | None = None             # the last-to-enter-service estimate at arrival
    callback: bool = False
    served_at: float | None = None
    abandoned: bool = False
    checks: list = field(default_factory=list)   # (estimate, remaining wait) 30 s in


class Day:
    def __init__(self, rnd: random.Random, args) -> None:
        self.rnd, self.args = rnd, args
        self.events: list = []
        self.seq = 0
        self.queue: deque[Contact] = deque()
        self.waiting = 0                         # in the queue and not abandoned
        self.idle = 0
        self.busy = 0
        self.leaving = 0                         # busy agents who go when their call ends
        self.ended: deque[tuple[float, float]] = deque()  # (ended at, handle time), last hour
        self.contacts: list[Contact] = []
        self.last_entered_wait: float | None = None

    # -- the plan -------------------------------------------------------------------------
    def staff_for(self, i: int) -> int:
        load = CURVE[i] * MEAN_HANDLE / 3600
        return max(1, round(load + self.args.staffing_beta * math.sqrt(load)))

    def handle_time(self) -> float:
        if self.args.handle == "exponential":
            return self.rnd.expovariate(1 / MEAN_HANDLE)
        cv = 0.8
        sigma = math.sqrt(math.log(1 + cv * cv))
        return self.rnd.lognormvariate(math.log(MEAN_HANDLE) - sigma * sigma / 2, sigma)

    def at(self, t: float, kind: str, data=None) -> None:
        self.seq += 1
        heapq.heappush(self.events, (t, self.seq, kind, data))

    # -- the run ----------------------------------------------------------------------------
    def run(self) -> list[Contact]:
        for i in range(len(CURVE)):
            self.at(OPEN + i * INTERVAL, "shift", self.staff_for(i))
            # Arrivals: a Poisson process at this half hour's rate.
            t, end = OPEN + i * INTERVAL, OPEN + (i + 1) * INTERVAL
            while True:
                t += self.rnd.expovariate(CURVE[i] / 3600)
                if t >= end:
                    break
                self.at(t, "arrival")
        self.at(CLOSE, "shift", 0)
        while self.events:
            t, _, kind, data = heapq.heappop(self.events)
            getattr(self, "on_" + kind)(t, data)
        return self.contacts

    def aht(self, now: float) -> float:
        while self.ended and self.ended[0][0] < now - AHT_WINDOW_SEC:
            self.ended.popleft()
        return recent_aht([h for _, h in self.ended])

    def on_shift(self, now: float, staff: int) -> None:
        on = self.idle + self.busy - self.leaving
        if staff > on:
            back = min(self.leaving, staff - on)        # a leaver stays on instead of a new agent
            self.leaving -= back
            self.idle += staff - on - back
        else:
            gone = min(self.idle, on - staff)
            self.idle -= gone
            self.leaving += on - staff - gone
        self.dispatch(now)

    def on_arrival(self, now: float, _) -> None:
        staffed, available = self.idle + self.busy, self.idle
        position = self.waiting + 1
        c = Contact(now, estimate_wait(position, staffed, available, self.aht(now)), position, staffed, available,
                    les=0.0 if position <= available else self.last_entered_wait)
        self.contacts.append(c)
        if c.estimate > self.args.threshold and self.rnd.random() < self.args.callback_share:
            c.callback = True
        self.queue.append(c)
        self.waiting += 1
        if not c.callback and self.args.patience > 0:
            self.at(now + self.rnd.expovariate(1 / self.args.patience), "abandon", c)
        self.at(now + 30, "check", c)
        self.dispatch(now)

    def on_abandon(self, now: float, c: Contact) -> None:
        if c.served_at is None and not c.abandoned:
            c.abandoned = True
            self.waiting -= 1

    def on_check(self, now: float, c: Contact) -> None:
        if c.served_at is not None or c.abandoned:
            return
        position = 1 + sum(1 for x in self.queue if x is not c and not x.abandoned and x.served_at is None
                           and x.arrived < c.arrived)
        c.checks.append(estimate_wait(position, self.idle + self.busy, self.idle, self.aht(now)))

    def on_end(self, now: float, started_and_handle: tuple[float, float]) -> None:
        self.ended.append((now, started_and_handle[1]))
        self.busy -= 1
        if self.leaving:
            self.leaving -= 1
        else:
            self.idle += 1
        self.dispatch(now)

    def dispatch(self, now: float) -> None:
        while self.idle and self.waiting:
            c = self.queue.popleft()
            if c.abandoned:
                continue
            self.waiting -= 1
            self.idle -= 1
            self.busy += 1
            c.served_at = now
            self.last_entered_wait = now - c.arrived
            handle = self.handle_time() + (CALLBACK_EXTRA if c.callback else 0)
            self.at(now + handle, "end", (now, handle))
        while self.queue and self.queue[0].abandoned:
            self.queue.popleft()


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def score(pairs: list[tuple[float, float]], threshold: float) -> dict:
    """pairs: (estimate, actual) seconds."""
    errors = [e - a for e, a in pairs]
    absolute = [abs(x) for x in errors]
    waited = [(e, a) for e, a in pairs if a >= 60]
    confusion = {(x, y): 0 for x in (True, False) for y in (True, False)}
    for e, a in pairs:
        confusion[(e > threshold, a > threshold)] += 1
    return {
        "n": len(pairs), "mean_abs": statistics.fmean(absolute), "median_abs": statistics.median(absolute),
        "p90_abs": pct(absolute, 0.9), "bias": statistics.fmean(errors),
        "mean_actual": statistics.fmean(a for _, a in pairs),
        "wape": sum(absolute) / max(sum(a for _, a in pairs), 1e-9),
        "mape_60": statistics.fmean(abs(e - a) / a for e, a in waited) if waited else float("nan"),
        "median_pe_60": statistics.median(abs(e - a) / a for e, a in waited) if waited else float("nan"),
        "confusion": confusion,
    }


def show(title: str, s: dict, threshold: float) -> None:
    c = s["confusion"]
    said_over, over = c[(True, True)] + c[(True, False)], c[(True, True)] + c[(False, True)]
    print(f"\n{title}: {s['n']} contacts, actual wait mean {s['mean_actual']:.0f} s")
    print(f"  absolute error   mean {s['mean_abs']:.0f} s   median {s['median_abs']:.0f} s   p90 {s['p90_abs']:.0f} s")
    print(f"  bias (estimate - actual)  {s['bias']:+.0f} s")
    print(f"  relative error   total |error| / total wait {s['wape']:.0%};  waits of 60 s or more: "
          f"mean {s['mape_60']:.0%}, median {s['median_pe_60']:.0%}")
    print(f"  'over {threshold:g} s'         actually over   actually not")
    print(f"     said over         {c[(True, True)]:>8}   {c[(True, False)]:>12}")
    print(f"     said not over     {c[(False, True)]:>8}   {c[(False, False)]:>12}")
    if said_over and over:
        print(f"  of those told 'over', {c[(True, True)] / said_over:.0%} waited over (precision); of those who "
              f"waited over, {c[(True, True)] / over:.0%} were told so (recall)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--days", type=int, default=20)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--handle", choices=("lognormal", "exponential"), default="lognormal")
    p.add_argument("--patience", type=float, default=300.0, help="mean seconds before a caller hangs up; 0: never")
    p.add_argument("--threshold", type=float, default=120.0)
    p.add_argument("--callback-share", type=float, default=0.4)
    p.add_argument("--staffing-beta", type=float, default=0.5)
    args = p.parse_args()
    contacts: list[Contact] = []
    for d in range(args.days):
        contacts += Day(random.Random(args.seed * 1000 + d), args).run()
    served = [c for c in contacts if c.served_at is not None]
    queued = [c for c in served if c.position > c.available]
    print(f"{args.days} simulated days: {len(contacts)} calls ({len(contacts) / args.days:.0f} a day), "
          f"{len(served)} served, {sum(c.abandoned for c in contacts)} abandoned, "
          f"{sum(c.callback for c in contacts)} took a callback; {len(served) - len(queued)} found an agent free "
          f"(estimate 0, waited 0). Handle times {args.handle}, mean {MEAN_HANDLE:g} s.")
    print(f"Staffing per half hour: {[Day(random.Random(0), args).staff_for(i) for i in range(len(CURVE))]}")
    show("At arrival, callers who had to queue", score([(c.estimate, c.served_at - c.arrived) for c in queued],
                                                       args.threshold), args.threshold)
    show("At arrival, every served caller", score([(c.estimate, c.served_at - c.arrived) for c in served],
                                                  args.threshold), args.threshold)
    later = [(c.checks[0], c.served_at - c.arrived - 30) for c in served if c.checks]
    if later:
        show("30 s in (the example script's first announcement), remaining wait", score(later, args.threshold),
             args.threshold)
    les = [(c.les, c.served_at - c.arrived) for c in queued if c.les is not None]
    if les:
        show("Reference: last-to-enter-service estimate, callers who had to queue", score(les, args.threshold),
             args.threshold)


if __name__ == "__main__":
    main()
