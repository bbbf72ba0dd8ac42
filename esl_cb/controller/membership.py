"""This controller's membership among the controllers sharing a database: a heartbeat, an epoch
(fencing token) and a lease.

A controller that was only slow (a long GC pause, a stalled disk, SIGSTOP, a network blip past
`heartbeat_timeout`) is taken for dead: another adopts its contacts and deletes its membership. When
it runs again it must not act on what it held (issue 17: two controllers dialled and bridged the same
contacts). Three things stop it:

- the database refuses its moves of contacts it no longer owns (the owner check in db/);
- its next heartbeat finds its membership gone (`Fenced`): it drops what it held and joins again as
  a new member, with a new epoch;
- and before a due dial or an offer, with no database work in the way, the lease: the controller
  acts only while its last successful heartbeat is recent enough that nobody can have adopted it
  yet (`heartbeat_timeout` minus a margin, counted from before that heartbeat was sent, while the
  adopter counts on the database's clock from after). Past the lease it first beats once, then acts
  only if that beat says it is still a member.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

from gevent.lock import Semaphore
from sqlalchemy.exc import SQLAlchemyError

from esl_cb.db.base import Fenced
from esl_cb.db.store import Store

log = logging.getLogger(__name__)


class Membership:
    def __init__(self, store: Store, esl: str, timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.esl = esl
        self.timeout = timeout
        # Clock rates differ a little and a check precedes its originate by a moment.
        self.lease = max(timeout - max(1.0, 0.2 * timeout), timeout / 2)
        self._clock = clock
        self._until = 0.0
        self._lock = Semaphore()
        self.epoch: int | None = None
        self.on_fenced: Callable[[], None] = lambda: None     # the controller drops what it held
        self.fenced_count = 0

    def join(self) -> int:
        sent = self._clock()
        self.epoch = self.store.register(self.esl)
        self._until = sent + self.lease
        log.info("controller %s joined as epoch %d", self.store.controller_id, self.epoch)
        return self.epoch

    def beat(self) -> bool:
        """One heartbeat. False when we were taken over (then we have already started over)."""
        with self._lock:
            if self.epoch is None:
                self.join()
                return True
            sent = self._clock()
            try:
                self.store.heartbeat(self.esl)
            except Fenced:
                self._fenced(sent)
                return False
            self._until = sent + self.lease
            return True

    def valid(self) -> bool:
        return self.epoch is not None and self._clock() < self._until

    def may_act(self) -> bool:
        """May this controller act on its contacts now? In memory while the lease holds; past it, one
        heartbeat decides (a stalled controller learns here that it was taken over)."""
        if self.valid():
            return True
        try:
            return self.beat() and self.valid()
        except SQLAlchemyError as e:
            log.warning("membership: the database did not answer (%s); not acting until it does", type(e).__name__)
            return False

    def _fenced(self, sent: float) -> None:
        stalled = sent - (self._until - self.lease)
        self.fenced_count += 1
        log.warning("controller %s (epoch %s) was taken over by another controller: no heartbeat got through for "
                    "%.1fs; dropping what it held and starting over as a new member", self.store.controller_id,
                    self.epoch, stalled)
        self.epoch = None
        self.on_fenced()
        self.join()
