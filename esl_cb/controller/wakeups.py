"""Who claims first when a NOTIFY wakes every controller (issue 18).

An operator's or a program's change (an agent made available, a callback booked, a skill opened) is
NOTIFYed to every controller on the database. If all of them claim at once, one wins and the others
run a claim for nothing at the same moment: on shared cores the winner then waits for a CPU, and its
offer leaves later (measured: benchmarks/RESULTS.md, "Two switches against one").

So each NOTIFY has one controller that claims at once: among the controllers that may offer now (a
heartbeat within the timeout, a switch not draining; read at each heartbeat), the one its payload's
CRC-32 picks. The others claim too, but `others_after` seconds later: by then the chosen one has made
its offer, and if it could not (it is down, stalled, paced, draining since the last heartbeat), the
work is still found within that delay, well before any poll interval. `others_after` 0: every
controller claims at once (the behaviour before).

An agent whose phone registers on the switches themselves is claimed only by a controller of a switch
that has a registration of it (migration 0016): for their NOTIFY (`agent NAME`) the pick is made among
those controllers (`reach`, read at each heartbeat too), else that offer would always wait the delay.
A registration's change (`phones`) wakes every controller at once: which switch it was is not said.
"""
from __future__ import annotations

import logging
import zlib
from typing import Callable, Iterable

import gevent

log = logging.getLogger(__name__)


class WakeRouter:
    def __init__(self, controller_id: str, wake: Callable[[float | None], None], others_after: float) -> None:
        self.me = controller_id
        self.wake = wake
        self.others_after = others_after
        self.members: list[str] = []           # the controllers that may offer, sorted (empty: unknown yet)
        self.reach: dict[str, set[str]] = {}     # agent name -> controllers whose switch has their phone
        self._later: gevent.Greenlet | None = None
        self.woken_now = 0
        self.woken_later = 0
        self.counted: Callable[[str], None] | None = None      # metrics: "now" or "later"

    def set_members(self, ids: Iterable[str]) -> None:
        members = sorted(set(ids))
        if members != self.members:
            log.info("wake-ups: %d controller(s) may offer: %s", len(members), ", ".join(members) or "none")
        self.members = members

    def set_reach(self, reach: dict[str, set[str]]) -> None:
        self.reach = reach

    def chosen(self, payload: str) -> str:
        """The controller that claims at once for this NOTIFY (the same answer in every controller that
        read the same members)."""
        if not self.members:
            return self.me
        among = self.members
        if payload.startswith("agent "):
            able = self.reach.get(payload[6:])
            if able:
                among = [m for m in self.members if m in able] or self.members
        return among[zlib.crc32(payload.encode()) % len(among)]

    def on_notify(self, payloads: list[str], arrived: float) -> None:
        """From the LISTEN greenlet: never blocks."""
        if self.others_after <= 0 or self.me not in self.members or "phones" in payloads \
                or any(self.chosen(p) == self.me for p in payloads):
            self.woken_now += 1
            if self.counted is not None:
                self.counted("now")
            self.wake(arrived)
            return
        self.woken_later += 1
        if self.counted is not None:
            self.counted("later")
        if self._later is None:        # several NOTIFYs in the meantime: one claim covers them all
            self._later = gevent.spawn_later(self.others_after, self._wake_later)

    def _wake_later(self) -> None:
        self._later = None
        self.wake(None)

    def stop(self) -> None:
        if self._later is not None:
            self._later.kill(block=False)
            self._later = None
