"""Originate pacing: FreeSWITCH refuses, at once, every new session over its `sessions-per-second`
(-ERR DESTINATION_OUT_OF_ORDER); it does not queue them. So the controller spaces its own.

A token bucket: `rate` originates a second on average, at most `burst` back to back. FreeSWITCH
counts sessions per calendar second, so any one second sees at most burst + rate of ours.
The last token is kept for urgent originates (a callback due now): offers to agents never make a
CallDelaySec dial wait.
"""
from __future__ import annotations

import time
from typing import Callable

import gevent


class OriginatePacer:
    def __init__(self, rate: float, burst: int | None = None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = gevent.sleep) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = burst if burst is not None else max(2, int(rate // 5))
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(self.burst)
        self._at = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now

    def wait(self, urgent: bool = False) -> float:
        """Block (this greenlet only) until an originate may go; returns the seconds waited.
        Non-urgent originates leave the last token for urgent ones."""
        need = 1.0 if urgent or self.burst < 2 else 2.0
        waited = 0.0
        self._refill()
        while self._tokens < need - 1e-9:       # (float sums: 0.99999999 is a whole token)
            pause = (need - self._tokens) / self.rate
            self._sleep(pause)
            waited += pause
            self._refill()
        self._tokens = max(self._tokens - 1.0, 0.0)
        return waited
