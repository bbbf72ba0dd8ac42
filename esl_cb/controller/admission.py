"""Admission control for arriving callers (issue 18): past the controller's knee, new callers wait
for their first prompt instead of making every due dial and every agent's answer late.

One controller is one OS thread. Each arriving caller costs CPU from the moment we answer its
outbound socket (the connect, its events, its script's first prompt and database work); when callers
arrive faster than that CPU can serve them, every greenlet runs late, the CallDelaySec timers and the
agents' answers too (measured: on time at 60 callers a second on this 2-core machine, p99 3.5 s late
at 100/s). So the event loop's lateness decides: a sampling greenlet measures how late a short timer
fires; while it is later than `max_lag`, a new caller's outbound socket is not answered yet (the
switch holds the call; the caller hears what the dialplan played so far), and the callers waiting
are let in, oldest first, at a rate that finds the knee by itself: halved at each late sample,
raised by one at each on-time one (a caller's cost comes over its first seconds, so letting
them all in at the first on-time tick would only move the overload a little later). Nobody waits
more than `max_wait`: past it a caller is let in anyway. Callers already started, due dials and
agents' answers never wait here.
"""
from __future__ import annotations

import logging
import time
from collections import deque

import gevent
from gevent.event import Event as GEvent

log = logging.getLogger(__name__)


class Admission:
    def __init__(self, max_lag: float = 0.02, max_wait: float = 10.0, tick: float = 0.02, rate: float = 50.0,
                 min_rate: float = 5.0, max_rate: float = 1000.0) -> None:
        self.max_lag = max_lag          # seconds; 0 turns admission control off
        self.max_wait = max_wait
        self.tick = tick
        self.rate = rate                # callers a second let in while some wait
        self.min_rate, self.max_rate = min_rate, max_rate
        self._credit = 0.0
        self.lag = 0.0                  # the last sample: how late a `tick` timer fired
        self.waiting: deque[GEvent] = deque()
        self.delayed = 0                # callers who had to wait (esl_cb_admission_delayed_total)
        self.admitted_late = 0          # ... of whom let in by `max_wait` rather than by the loop
        self.metrics = None
        self._probe: gevent.Greenlet | None = None
        self._said_at: float | None = None      # said in the log at most once a minute

    def start(self) -> "Admission":
        if self.max_lag > 0 and self._probe is None:
            self._probe = gevent.spawn(self._sample)
        return self

    def stop(self) -> None:
        if self._probe is not None:
            self._probe.kill(block=False)
            self._probe = None

    def overloaded(self) -> bool:
        return self.max_lag > 0 and self.lag > self.max_lag

    def admit(self) -> float:
        """An arriving caller's greenlet, before any work for it: wait while the loop is late (behind
        the callers who wait already). Returns the seconds waited."""
        if not self.waiting and not self.overloaded():
            return 0.0
        turn = GEvent()
        self.waiting.append(turn)
        self.delayed += 1
        if self.metrics is not None:
            self.metrics.admission_delayed.inc()
        self._show()
        if self._said_at is None or time.monotonic() - self._said_at > 60:
            self._said_at = time.monotonic()
            log.warning("the event loop is %.0f ms late: new callers wait for their first prompt (at most %gs) so "
                        "that due dials and agents' answers stay on time (esl_cb_admission_delayed_total)",
                        self.lag * 1000, self.max_wait)
        started = time.monotonic()
        try:
            if not turn.wait(self.max_wait):
                self.admitted_late += 1
        finally:
            try:
                self.waiting.remove(turn)
            except ValueError:
                pass                    # let in by the sampler, which took it off the line
            self._show()
        return time.monotonic() - started

    def _sample(self) -> None:
        while True:
            started = time.monotonic()
            gevent.sleep(self.tick)
            self.lag = max(time.monotonic() - started - self.tick, 0.0)
            self.let_in()

    def let_in(self) -> int:
        """One tick: adjust the rate to the loop's lateness and let in the oldest waiting callers."""
        if self.overloaded():
            self.rate = max(self.rate / 2, self.min_rate)
            self._credit = 0.0
            return 0
        if not self.waiting:
            self._credit = 0.0
            return 0
        self.rate = min(self.rate + 1, self.max_rate)
        self._credit = min(self._credit + self.rate * self.tick, max(self.rate * self.tick, 1.0))
        n = min(int(self._credit), len(self.waiting))
        self._credit -= n
        for _ in range(n):
            self.waiting.popleft().set()
        if n:
            self._show()
        return n

    def _show(self) -> None:
        if self.metrics is not None:
            self.metrics.admission_waiting.set(len(self.waiting))
