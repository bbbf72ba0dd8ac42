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

    def set_rate(self, rate: float) -> None:
        """A new rate (this controller's share of its switch changed: another joined or left)."""
        if rate <= 0:
            raise ValueError("rate must be positive")
        self._refill()
        self.rate = rate
        self.burst = max(2, int(rate // 5))
        self._tokens = min(self._tokens, float(self.burst))

    def try_take(self, urgent: bool = False) -> bool:
        """Take a token if one is there now (never waits)."""
        need = 1.0 if urgent or self.burst < 2 else 2.0
        self._refill()
        if self._tokens < need - 1e-9:
            return False
        self._tokens -= 1.0
        return True

    def refund(self) -> None:
        """Give back a token taken for an originate that did not go (nothing to offer after all)."""
        self._refill()
        self._tokens = min(self.burst, self._tokens + 1.0)

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


class SwitchBackoff:
    """FreeSWITCH refuses a new session at once when it is full (max-sessions, sessions-per-second,
    no RTP port: -ERR DESTINATION_OUT_OF_ORDER). Offering again at once only spends the session
    budget that callers need (measured: 170 originates in 10 s for one contact and one agent), so
    consecutive refusals pause the whole dispatcher, and each refused agent is left alone for a
    while; both pauses grow and are capped.

    After a pause one originate goes out as a probe. A refusal comes back within milliseconds; a
    taken call answers only when the phone is picked up (its BACKGROUND_JOB waits for that), so a
    probe not refused within `probe_window` seconds counts as taken and ends the episode."""

    def __init__(self, base: float = 0.5, cap: float = 30.0, agent_base: float = 2.0, agent_cap: float = 120.0,
                 probe_window: float = 0.5, clock: Callable[[], float] = time.monotonic) -> None:
        self.base, self.cap = base, cap
        self.agent_base, self.agent_cap = agent_base, agent_cap
        self.probe_window = probe_window
        self._clock = clock
        self.refusals = 0                       # consecutive, switch-wide
        self.total_refusals = 0
        self._agent_refusals: dict[int, int] = {}
        self._until = 0.0
        self._probe_until = 0.0
        self.started_at: float | None = None    # when this episode of refusals began

    def refused(self, agent_id: int | None = None) -> tuple[float, float]:
        """Note a refusal; returns (the dispatcher's pause, the agent's pause) in seconds."""
        now = self._clock()
        if self.refusals == 0:
            self.started_at = now
        self.refusals += 1
        self.total_refusals += 1
        self._probe_until = 0.0
        pause = min(self.base * 2 ** (self.refusals - 1), self.cap)
        self._until = max(self._until, now + pause)
        agent_pause = 0.0
        if agent_id is not None:
            n = self._agent_refusals.get(agent_id, 0) + 1
            self._agent_refusals[agent_id] = n
            agent_pause = min(self.agent_base * 2 ** (n - 1), self.agent_cap)
        return pause, agent_pause

    def accepted(self, agent_id: int | None = None) -> int:
        """The switch took an originate: returns how many refusals this ends (0: none were pending)."""
        if agent_id is not None:
            self._agent_refusals.pop(agent_id, None)
        ended, self.refusals, self._until, self._probe_until, self.started_at = self.refusals, 0, 0.0, 0.0, None
        return ended

    def sent(self) -> int | None:
        """An originate went out. While the switch is refusing it is a probe: nothing more goes out
        until the probe window has passed. Returns the token for probe_passed(), or None."""
        if not self.refusals:
            return None
        self._probe_until = self._clock() + self.probe_window
        return self.total_refusals

    def probe_passed(self, token: int) -> bool:
        """The probe window is over: True if no refusal came since (the switch has room again)."""
        return self.refusals > 0 and self.total_refusals == token

    def remaining(self) -> float:
        """Seconds the dispatcher should still wait before the next offer."""
        now = self._clock()
        return max(self._until - now, self._probe_until - now, 0.0)
