"""Controllers as members of the group that shares a database (issue 17, item 4): each one registers
(a membership with a new epoch, the fencing token), says it is alive (a heartbeat of that epoch),
and takes over what dead members held, as far as its own switch can answer for it.

- register(esl) -> epoch: our row inserted or replaced with a new epoch, remembered in self.epoch.
- heartbeat(esl): our row of our epoch gets the database's now(). No such row: another controller
  took us over while we stalled; Fenced is raised and nothing is re-inserted (register again, as a
  new member, after dropping what was held).
- adopt_dead(timeout, esl): members whose heartbeat is older than `timeout` seconds by the database's
  clock. One on our switch (the same esl address): all its open contacts and its agents become ours,
  its row is deleted (its next heartbeat is Fenced). One on another switch: only its callbacks waiting
  in the queue (callback_queued: no leg anywhere) become ours; contacts with a leg on its switch stay
  with it, and so does its row, until a controller of that switch adopts them (a later call of
  adopt_dead there takes a row already dead and kept); once nothing of it is left, it goes too.

Every time here is the database's, so the hosts' clocks do not matter. A contact taken over is fenced
from its former owner: every move made on a controller's behalf requires contacts.controller_id to
be that controller's (base.py).
"""
from __future__ import annotations

import logging

from sqlalchemy import delete, func, literal_column, select, text, update

from esl_cb.domain.states import ContactState as C
from esl_cb.netaddr import switch_identity as identity

from .base import Fenced, StoreBase, StoreError
from .models import Agent, Contact, ControllerMember

log = logging.getLogger(__name__)
_MEMBERS = ControllerMember.__table__
# SQLAlchemy stores SQLite's times as 'YYYY-MM-DD HH:MM:SS.ffffff' (UTC): the database's now in that shape.
_SQLITE_NOW = "strftime('%Y-%m-%d %H:%M:%f000', 'now')"

_PG_REGISTER = text("""
INSERT INTO controllers (id, started_at, heartbeat_at, esl) VALUES (:id, now(), now(), :esl)
ON CONFLICT (id) DO UPDATE SET started_at = now(), heartbeat_at = now(), esl = EXCLUDED.esl,
                               epoch = nextval('controllers_epoch_seq')
RETURNING epoch
""")
# max + 1, and above our own last epoch: a row deleted by an adopter does not give its epoch back to us.
_SQLITE_REGISTER = text(f"""
INSERT INTO controllers (id, started_at, heartbeat_at, esl, epoch)
VALUES (:id, {_SQLITE_NOW}, {_SQLITE_NOW}, :esl,
        max(coalesce((SELECT max(epoch) FROM controllers), 0), :previous) + 1)
ON CONFLICT (id) DO UPDATE SET started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at,
                               esl = excluded.esl, epoch = excluded.epoch
RETURNING epoch
""")
_PG_HEARTBEAT = text("UPDATE controllers SET heartbeat_at = now(), esl = :esl WHERE id = :id AND epoch = :epoch")
_SQLITE_HEARTBEAT = text(f"UPDATE controllers SET heartbeat_at = {_SQLITE_NOW}, esl = :esl "
                         "WHERE id = :id AND epoch = :epoch")


class ControllersStore(StoreBase):
    """Membership: register, heartbeat, adopt the dead."""

    def register(self, esl: str) -> int:
        """A fresh membership for this controller on switch `esl`: returns its new epoch (also self.epoch)."""
        if not self.controller_id:
            raise StoreError("only a controller registers: this store has no controller_id")
        esl = identity(esl)
        with self.engine.begin() as conn:
            if self._pg:
                epoch = conn.execute(_PG_REGISTER, {"id": self.controller_id, "esl": esl}).scalar_one()
            else:
                epoch = conn.execute(_SQLITE_REGISTER, {"id": self.controller_id, "esl": esl,
                                                        "previous": self.epoch or 0}).scalar_one()
        self.epoch = epoch
        self._warned_not_mine.clear()
        log.info("controller %s registered on switch %s, epoch %s", self.controller_id, esl, epoch)
        return epoch

    def heartbeat(self, esl: str) -> None:
        """Say we are alive (the database's now()); Fenced if we were taken over meanwhile."""
        if self.epoch is None:
            raise StoreError(f"controller {self.controller_id or '(none)'}: heartbeat before register(); "
                             "register first")
        with self.engine.begin() as conn:
            n = conn.execute(_PG_HEARTBEAT if self._pg else _SQLITE_HEARTBEAT,
                             {"id": self.controller_id, "epoch": self.epoch, "esl": identity(esl)}).rowcount
        if n == 0:
            raise Fenced(f"controller {self.controller_id} (epoch {self.epoch}) was taken over by another "
                         "controller while it stalled: drop what it holds and register again")
        self._beats.append(self.clock())

    def beat_through(self, seconds: float) -> bool:
        """Our own heartbeats committed all through the last `seconds`, none more than half of it apart."""
        now = self.clock()
        marks = [t for t in self._beats if t >= now - seconds]
        earlier = [t for t in self._beats if t < now - seconds]
        if not earlier:
            return False
        marks = [earlier[-1], *marks, now]
        return all(b - a <= seconds / 2 for a, b in zip(marks, marks[1:]))

    def adopt_dead(self, timeout: float, esl: str) -> list[str]:
        """Take over what dead controllers held that our switch `esl` can answer for (see the module's
        doc); returns the ids of those we took something from.

        Only once our own heartbeats went through for the whole timeout: a database away (a failover)
        silences every controller at once, and the first back must not take a live one's contacts for
        beats it could not write (issue 18)."""
        if not self.beat_through(timeout):
            return []
        if self._pg:
            cutoff = func.now() - func.make_interval(0, 0, 0, 0, 0, 0, float(timeout))
        else:
            cutoff = literal_column(f"strftime('%Y-%m-%d %H:%M:%f000', 'now', '-{float(timeout)} seconds')")
        taken = []
        with self.engine.begin() as conn:
            dead = conn.execute(select(_MEMBERS.c.id, _MEMBERS.c.esl, _MEMBERS.c.epoch).where(
                _MEMBERS.c.heartbeat_at < cutoff, _MEMBERS.c.id != self.controller_id).order_by(
                _MEMBERS.c.id).with_for_update(skip_locked=True)).all()
            for member in dead:
                if self._adopt(conn, member, esl):
                    taken.append(member.id)
        return taken

    def _adopt(self, conn, member, esl: str) -> bool:
        mine, open_ = Contact.controller_id == member.id, Contact.state != C.ENDED.value
        same_switch = _same_switch(member.esl, esl)
        waiting = conn.execute(update(Contact).where(mine, open_ if same_switch else
                                                     Contact.state == C.CALLBACK_QUEUED.value)
                               .values(controller_id=self.controller_id)).rowcount
        left = 0 if same_switch else conn.execute(select(func.count()).select_from(Contact).where(mine, open_)).scalar()
        if left:
            if (member.id, member.epoch) not in self._reported_left:          # once, not at every heartbeat
                self._reported_left.add((member.id, member.epoch))
                log.warning("controller %s (epoch %s) on switch %s stopped beating; %s on switch %s leaves it "
                            "its %d contacts with a leg on that switch, for a controller of that switch to take "
                            "over", member.id, member.epoch, member.esl, self.controller_id, esl, left)
            if waiting:
                log.warning("controller %s stopped beating; %s took over its %d callbacks waiting in the queue",
                            member.id, self.controller_id, waiting)
            return waiting > 0
        conn.execute(update(Agent).where(Agent.controller_id == member.id).values(controller_id=self.controller_id))
        conn.execute(delete(_MEMBERS).where(_MEMBERS.c.id == member.id, _MEMBERS.c.epoch == member.epoch))
        log.warning("controller %s (epoch %s) on switch %s stopped beating; %s took over its %d open contacts and "
                    "its agents", member.id, member.epoch, member.esl, self.controller_id, waiting)
        return True


def _same_switch(a: str | None, b: str | None) -> bool:
    """Two ESL addresses naming one switch (rows stored before addresses were normalised included)."""
    if not a or not b:
        return a == b
    try:
        return identity(a) == identity(b)
    except ValueError:
        return a == b
