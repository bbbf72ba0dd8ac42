"""Where a queued contact stands (the Queuestatus action): its place in its skill's queue, the
skill's agents and its recent handle time, read in two statements (the second at most once a minute
per skill, see Cost). Read-only: nothing is locked, so the answer is a snapshot (a claim a moment
later may change it).

- position: 1 + the waiting contacts of the same skill (`queued`, `callback_queued`, live callers and
  callbacks alike) ahead of it in SPEC 3 order: effective priority (esl_cb/db/sqlexpr.py, the twin
  of the order of the view claim_queue, migration 0007) descending, then queued_at, then id. A
  callback waiting for its retry time counts: it keeps its place. A contact an agent has (`offered`:
  the phone rings; `connected`: answered, the script is about to stop) is at 1 and `being_served`.
- agents_staffed: agents with the skill who are at work (Available, Offered, OnCall, WrapUp);
  agents_available: those Available now and not held back after a full switch (what a claim takes).
- aht_sec: the skill's average handle time over the last hour (domain/ewt.py AHT_WINDOW_SEC): for
  contacts that ended `handled` or `callback_completed` in that hour, the time an agent was tied
  up by each, from the offer to the hangup (ended_at - offered_at; for a callback this includes its
  CallDelaySec and the dial), plus the skill's wrap-up time (the configured one: an agent's own
  override, or a wrap-up ended early, is not seen). None when there is none: the domain uses its
  default (which has no wrap-up added).

Cost: the place and the agents are read through indexes (ix_contacts_state_skill, the agents'
tables); the handle time through ix_contacts_skill_ended (migration 0006; before it, a scan of the
skill's ended contacts: 65 ms for 400,000 on PostgreSQL). It barely moves in a minute, so each store
keeps it per skill for AHT_CACHE_SEC.

'in_hours' is the skill's callbacks_open (its opening hours, kept by the controllers).
"""
from __future__ import annotations

import time
from datetime import datetime, timedelta

from sqlalchemy import and_, func, or_, select, tuple_
from sqlalchemy.orm import aliased

from esl_cb.domain.ewt import AHT_WINDOW_SEC
from esl_cb.domain.states import AgentState as A
from esl_cb.domain.states import ContactState as C
from esl_cb.domain.states import Outcome

from .base import NotFound, StaleState, StoreBase, utcnow
from .models import Agent, AgentSkill, Contact, Skill
from .sqlexpr import effective_priority, minutes_between

WAITING = (C.QUEUED.value, C.CALLBACK_QUEUED.value)
SERVED = (C.OFFERED.value, C.CONNECTED.value)
STAFFED = (A.AVAILABLE.value, A.OFFERED.value, A.ON_CALL.value, A.WRAP_UP.value)
HANDLED = (Outcome.HANDLED.value, Outcome.CALLBACK_COMPLETED.value)
AHT_CACHE_SEC = 60.0            # how old the handle time a store hands out may be


class QueueStatusStore(StoreBase):
    """The Queuestatus action's read."""

    def queue_status(self, contact_id: int, now: datetime | None = None,
                     aht_max_age: float = AHT_CACHE_SEC, conn=None) -> dict:
        """{'position', 'being_served', 'agents_staffed', 'agents_available', 'aht_sec', 'aht_samples',
        'state'}
        of a contact in the queue; StaleState when it is not queued, NotFound when there is none.
        The handle time may be up to `aht_max_age` seconds old. `conn`: read within that transaction
        (a booking reads its own place before it commits)."""
        now = now or utcnow()
        if conn is not None:
            return self._queue_status(conn, contact_id, now, aht_max_age)
        with self.engine.connect() as conn:
            return self._queue_status(conn, contact_id, now, aht_max_age)

    def _queue_status(self, conn, contact_id: int, now: datetime, aht_max_age: float) -> dict:
        row = conn.execute(self._status_query(contact_id, now)).first()
        if row is None:
            raise NotFound(f"no contact {contact_id}")
        if row.state not in WAITING + SERVED or row.skill_id is None:
            raise StaleState(f"contact {contact_id} is {row.state}, not in a queue: Queuestatus needs a "
                             "queued contact (run Reqagent first)")
        aht, samples = self._recent_aht(conn, row.skill_id, now, aht_max_age)
        in_hours = conn.execute(select(Skill.callbacks_open).where(Skill.id == row.skill_id)).scalar()
        served = row.state in SERVED
        return {"position": 1 if served else int(row.ahead) + 1, "being_served": served,
                "agents_staffed": int(row.staffed), "agents_available": int(row.available),
                "aht_sec": aht, "aht_samples": samples, "state": row.state, "in_hours": bool(in_hours)}

    def cached_aht(self, skill_id: int, max_age: float = AHT_CACHE_SEC) -> tuple[float | None, int] | None:
        """The skill's handle time as this store read it within `max_age` seconds; None: not kept."""
        kept = self.__dict__.get("_aht_cache", {}).get(skill_id)
        if kept is not None and time.monotonic() - kept[0] < max_age:
            return kept[1], kept[2]
        return None

    def _recent_aht(self, conn, skill_id: int, now: datetime, max_age: float) -> tuple[float | None, int]:
        cache: dict[int, tuple[float, float | None, int]] = self.__dict__.setdefault("_aht_cache", {})
        kept = self.cached_aht(skill_id, max_age)
        if kept is not None:
            return kept
        recent = (Contact.state == C.ENDED.value, Contact.skill_id == skill_id, Contact.outcome.in_(HANDLED),
                  Contact.ended_at >= now - timedelta(seconds=AHT_WINDOW_SEC), Contact.offered_at.is_not(None))
        mean, samples = conn.execute(select(func.avg(minutes_between(Contact.offered_at, Contact.ended_at) * 60.0),
                                            func.count()).where(*recent)).one()
        # The agent is tied up until their wrap-up ends too: the skill's wrap-up time is added (issue 20).
        wrap = conn.execute(select(Skill.wrap_up_sec).where(Skill.id == skill_id)).scalar() or 0
        value = (float(mean) + wrap if samples else None, int(samples))
        cache[skill_id] = (time.monotonic(), *value)
        return value

    @staticmethod
    def _status_query(contact_id: int, now: datetime):
        """The contact's state and skill, how many wait ahead of it (SPEC 3: effective priority, then
        the time queued, then the id), its skill's agents staffed and available: one statement.

        The count never evaluates the priority expression over the whole queue (10,000 waiting cost
        ~8 ms that way): for a contact whose priority does not accelerate, the effective priority
        least(initial + 0 x minutes, greatest(max, initial)) is `initial`, so those ahead are
        counted on index ix_contacts_waiting_fixed (migration 0012) as ranges: a higher initial, or
        the same and queued earlier. Only accelerating contacts (ix_contacts_waiting_accelerating)
        get the full expression; the contact's own priority is computed once (a materialised CTE)."""
        me, other = aliased(Contact, name="me"), aliased(Contact, name="other")

        def priority(c):
            return effective_priority(c.priority_initial, c.priority_acceleration, c.priority_max, c.queued_at, now)
        m = select(me.id, me.state, me.skill_id, me.queued_at, priority(me).label("p")).where(
            me.id == contact_id).cte("m").prefix_with("MATERIALIZED", dialect="postgresql")
        theirs = priority(other)

        def waiting(*where):
            return select(func.count()).select_from(other).where(
                other.skill_id == m.c.skill_id, other.state.in_(WAITING), *where).scalar_subquery()
        fixed = other.priority_acceleration == 0
        ahead = (waiting(fixed, other.priority_initial > m.c.p)
                 + waiting(fixed, other.priority_initial == m.c.p,
                           tuple_(other.queued_at, other.id) < tuple_(m.c.queued_at, m.c.id))
                 + waiting(other.priority_acceleration != 0, other.id != m.c.id,
                           or_(theirs > m.c.p, and_(theirs == m.c.p, or_(
                               other.queued_at < m.c.queued_at,
                               and_(other.queued_at == m.c.queued_at, other.id < m.c.id))))))

        def agents(*where):
            return select(func.count()).select_from(Agent).join(AgentSkill, AgentSkill.agent_id == Agent.id).where(
                AgentSkill.skill_id == m.c.skill_id, *where).scalar_subquery()
        staffed = agents(Agent.state.in_(STAFFED))
        available = agents(Agent.state == A.AVAILABLE.value,
                           or_(Agent.offer_not_before.is_(None), Agent.offer_not_before <= now))
        return select(m.c.state, m.c.skill_id, ahead.label("ahead"), staffed.label("staffed"),
                      available.label("available")).select_from(m)
