"""The end of an agent's wrap-up or delay after a miss, on time (issue 20).

The store tells us of each hold with an end as it stores it (`Store.hold_listener`); a timer here
ends it then (`Store.end_holds` for that agent, guarded by the stored end time, so a hold ended early
by the agent or replaced meanwhile is left alone) and wakes the dispatcher. The dispatcher's sweep
ends every due hold as well: a controller that crashed, or another controller's agent, is never left
in WrapUp or a delay for good.
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Callable

import gevent
from sqlalchemy.exc import SQLAlchemyError

from esl_cb.db.agent_states import AgentHold
from esl_cb.db.store import Store, as_utc

log = logging.getLogger(__name__)
LATE = 0.002       # seconds past the stored end (stored from this process's clock, as end_holds compares)


class HoldTimers:
    def __init__(self, store: Store, wake: Callable[[], None]) -> None:
        self.store = store
        self.wake = wake
        self._timers: dict[int, gevent.Greenlet] = {}
        store.hold_listener = self.hold

    def hold(self, hold: AgentHold) -> None:
        until = as_utc(hold.until)
        if until is None:
            return
        delay = max((until - datetime.now(timezone.utc)).total_seconds(), 0.0) + LATE
        old = self._timers.pop(hold.agent_id, None)
        if old is not None:
            old.kill(block=False)
        self._timers[hold.agent_id] = gevent.spawn_later(delay, self._end, hold.agent_id, until)

    def _end(self, agent_id: int, until: datetime) -> None:
        early = (until - datetime.now(timezone.utc)).total_seconds()
        if early > 0:           # the loop's clock may run a little ahead of the wall clock
            gevent.sleep(early + LATE)
        self._timers.pop(agent_id, None)
        try:
            if self.store.end_holds(agent_id):
                self.wake()
        except SQLAlchemyError as e:      # the dispatcher's sweep ends it once the database is back
            log.warning("agent %s: ending wrap-up or delay failed (%s); the sweep will", agent_id, type(e).__name__)

    def stop(self) -> None:
        for g in self._timers.values():
            g.kill(block=False)
        self._timers.clear()
