"""Persistence: every state change of a contact or agent, written before anyone acts on it.

Each transition is one guarded UPDATE (... WHERE id = :id AND state = :expected).
Zero rows updated means someone else (another controller, a hangup) got there
first: callers get False or a StaleState error, never a silent no-op.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Iterable

from sqlalchemy import (DateTime, Engine, create_engine, event, func, insert, literal, or_, select, text,
                        update)
from sqlalchemy.exc import IntegrityError

from esl_cb.domain.queue import Priority
from esl_cb.domain.states import AgentState as A
from esl_cb.domain.states import ContactState as C
from esl_cb.domain.states import Outcome, contact_can

from .models import Agent, AgentSkill, CallbackAttempt, Contact, Controller, Leg, Skill
from .sqlexpr import effective_priority

log = logging.getLogger(__name__)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class StoreError(Exception):
    """A persistence operation that cannot be done as asked (the message says why)."""


class StaleState(StoreError):
    """The row was not in the state the caller expected."""


class NotFound(StoreError):
    pass


@dataclass(frozen=True)
class Offer:
    """A contact and an agent claimed for each other in one transaction."""

    contact_id: int
    agent_id: int
    agent_name: str
    dial_string: str
    agent_leg_uuid: str
    callback: bool
    caller_uuid: str | None
    contact_number: str
    skill: str


@dataclass(frozen=True)
class DialPlan:
    contact_id: int
    agent_id: int
    agent_leg_uuid: str
    number: str
    caller_id: str
    attempt_no: int
    leg_uuid: str


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()
        return engine
    return create_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)


def as_utc(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; everything we store is UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


_PG_CLAIM = text("SELECT * FROM esl_cb_claim(:now, :leg, :ctl)")
_PG_COMPLETE = text("SELECT * FROM esl_cb_complete(:id, :now, :leg, :ctl)")


class Store:
    def __init__(self, url_or_engine: str | Engine, controller_id: str = "") -> None:
        self.engine = make_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
        self.controller_id = controller_id
        # PostgreSQL dispatches through the functions of migration 0003: one statement, its own
        # transaction (autocommit), so no BEGIN/COMMIT round trips on the hot path.
        self._pg = self.engine.dialect.name == "postgresql"
        self._autocommit = self.engine.execution_options(isolation_level="AUTOCOMMIT")

    def close(self) -> None:
        self.engine.dispose()

    # -- skills and agents ----------------------------------------------
    def skill_id(self, conn, name: str, create: bool = True) -> int:
        sid = conn.execute(select(Skill.id).where(Skill.name == name)).scalar()
        if sid is None:
            if not create:
                raise NotFound(f"no skill named {name!r}")
            try:
                with conn.begin_nested():          # many callers can meet a new skill at once
                    sid = conn.execute(insert(Skill).values(name=name).returning(Skill.id)).scalar()
            except IntegrityError:
                sid = conn.execute(select(Skill.id).where(Skill.name == name)).scalar()
        return sid

    def add_skill(self, name: str) -> int:
        with self.engine.begin() as conn:
            return self.skill_id(conn, name)

    def list_skills(self) -> list[str]:
        with self.engine.connect() as conn:
            return list(conn.execute(select(Skill.name).order_by(Skill.name)).scalars())

    def add_agent(self, name: str, dial_string: str, skills: Iterable[str]) -> int:
        with self.engine.begin() as conn:
            if conn.execute(select(Agent.id).where(Agent.name == name)).scalar() is not None:
                raise StoreError(f"agent {name!r} already exists; remove it first or pick another name")
            aid = conn.execute(insert(Agent).values(
                name=name, dial_string=dial_string, state=A.LOGGED_OUT.value,
                state_changed_at=utcnow()).returning(Agent.id)).scalar()
            for s in skills:
                conn.execute(insert(AgentSkill).values(agent_id=aid, skill_id=self.skill_id(conn, s)))
            return aid

    def remove_agent(self, name: str) -> None:
        with self.engine.begin() as conn:
            row = conn.execute(select(Agent.id, Agent.state).where(Agent.name == name)).first()
            if row is None:
                raise NotFound(f"no agent named {name!r}")
            if row.state in (A.OFFERED.value, A.ON_CALL.value):
                raise StoreError(f"agent {name!r} is {row.state}; make them unavailable and wait for the call to end")
            conn.execute(AgentSkill.__table__.delete().where(AgentSkill.agent_id == row.id))
            conn.execute(Agent.__table__.delete().where(Agent.id == row.id))

    def agent(self, name: str):
        with self.engine.connect() as conn:
            row = conn.execute(select(Agent.__table__).where(Agent.name == name)).first()
        if row is None:
            raise NotFound(f"no agent named {name!r}")
        return row

    def agents(self) -> list[dict]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(Agent.__table__).order_by(Agent.name)).all()
            skills = conn.execute(select(AgentSkill.agent_id, Skill.name).join(Skill)).all()
        by_agent: dict[int, list[str]] = {}
        for aid, sname in skills:
            by_agent.setdefault(aid, []).append(sname)
        return [{"id": a.id, "name": a.name, "dial_string": a.dial_string, "state": a.state,
                 "state_changed_at": as_utc(a.state_changed_at), "available_since": as_utc(a.available_since),
                 "contact_id": a.contact_id, "skills": sorted(by_agent.get(a.id, []))} for a in rows]

    def set_agent_state(self, name: str, to: A, allowed_from: Iterable[A]) -> A:
        """Operator-driven agent state change (CLI); refused with the reason when not allowed."""
        allowed = [s.value for s in allowed_from]
        with self.engine.begin() as conn:
            row = conn.execute(select(Agent.id, Agent.state).where(Agent.name == name)).first()
            if row is None:
                raise NotFound(f"no agent named {name!r}")
            if row.state == to.value:
                raise StoreError(f"agent {name!r} is already {to.value}")
            if row.state not in allowed:
                raise StoreError(f"agent {name!r} is {row.state}; it cannot go to {to.value} now")
            values = dict(state=to.value, state_changed_at=utcnow())
            if to is A.AVAILABLE:
                values["available_since"] = utcnow()
            res = conn.execute(update(Agent).where(Agent.id == row.id, Agent.state == row.state).values(**values))
            if res.rowcount != 1:
                raise StaleState(f"agent {name!r} changed state meanwhile; try again")
            log.info("agent %s %s -[operator]-> %s", name, row.state, to.value)
            return A(row.state)

    # -- contacts -------------------------------------------------------
    def create_contact(self, caller_uuid: str, ani: str, dnis: str, script: str, from_number: str,
                       to_number: str) -> int:
        return self.arrive(caller_uuid, ani, dnis, script, from_number, to_number)[0]

    def arrive(self, caller_uuid: str, ani: str, dnis: str, script: str, from_number: str, to_number: str,
               callback_number: str | None = None) -> tuple[int, int | None]:
        """A caller arrived: store the contact and its leg, and (with `callback_number`) find a
        callback of theirs still waiting, in one transaction. Returns (contact id, pending id)."""
        now = utcnow()
        with self.engine.begin() as conn:
            pending = conn.execute(self._pending_query(callback_number)).scalar() if callback_number else None
            cid = conn.execute(insert(Contact).values(
                direction="inbound", state=C.ARRIVED.value, script=script, caller_uuid=caller_uuid,
                original_ani=ani, original_dnis=dnis, ani=ani, dnis=dnis, priority_initial=0,
                priority_acceleration=0, priority_max=0, callback_requested=False, call_delay_sec=0,
                attempts=0, arrived_at=now, controller_id=self.controller_id).returning(Contact.id)).scalar()
            conn.execute(insert(Leg).values(uuid=caller_uuid, contact_id=cid, kind="caller", direction="inbound",
                                            from_number=from_number, to_number=to_number, started_at=now,
                                            answered_at=now))
        log.info("contact %s created for call %s from %s to %s", cid, caller_uuid, ani, dnis)
        return cid, pending

    def contact(self, contact_id: int):
        with self.engine.connect() as conn:
            row = conn.execute(select(Contact.__table__).where(Contact.id == contact_id)).first()
        if row is None:
            raise NotFound(f"no contact {contact_id}")
        return row

    def _move(self, conn, contact_id: int, expected: Iterable[C], to: C, reason: str, **values) -> bool:
        expected = list(expected)
        illegal = [s.value for s in expected if not contact_can(s, to)]
        if illegal:
            raise ValueError(f"contact {contact_id}: {'|'.join(illegal)} -> {to.value} is not a legal transition")
        res = conn.execute(update(Contact).where(
            Contact.id == contact_id, Contact.state.in_([s.value for s in expected])).values(state=to.value, **values))
        if res.rowcount == 1:
            log.info("contact %s %s -[%s]-> %s", contact_id, "|".join(s.value for s in expected), reason, to.value)
            return True
        return False

    def queue_contact(self, contact_id: int, skill: str, priority: Priority) -> None:
        with self.engine.begin() as conn:
            sid = self.skill_id(conn, skill)
            ok = self._move(conn, contact_id, [C.ARRIVED], C.QUEUED, "reqagent", skill_id=sid, queued_at=utcnow(),
                            priority_initial=priority.initial, priority_acceleration=priority.acceleration,
                            priority_max=priority.maximum)
            if not ok:
                # Reqagent again (another skill or new priorities) keeps the place in the queue.
                ok = conn.execute(update(Contact).where(
                    Contact.id == contact_id, Contact.state == C.QUEUED.value).values(
                    skill_id=sid, priority_initial=priority.initial, priority_acceleration=priority.acceleration,
                    priority_max=priority.maximum)).rowcount == 1
            if not ok:
                raise StaleState(f"contact {contact_id} cannot be queued now: {self._state(conn, contact_id)}")

    @staticmethod
    def _lock_contact(conn, contact_id: int):
        """Read a contact to change it: the row stays locked until commit, so two hangups of one
        conversation (agent and customer legs) cannot both act on the state they read."""
        return conn.execute(select(Contact.__table__).where(Contact.id == contact_id).with_for_update()).first()

    def _state(self, conn, contact_id: int) -> str:
        return conn.execute(select(Contact.state).where(Contact.id == contact_id)).scalar() or "missing"

    def request_callback(self, contact_id: int, number: str, caller_id: str, delay: int, ani: str,
                         dnis: str) -> int:
        """The Callback action: durable before the caller is hung up (SPEC 2, rule 2).

        At most one open callback per number and skill: a second request takes over the
        existing one (which keeps the earlier of the two places). Returns the contact id
        that now carries the callback."""
        now = utcnow()
        values = dict(callback_requested=True, callback_number=number, callback_caller_id=caller_id,
                      call_delay_sec=delay, callback_requested_at=now, ani=ani, dnis=dnis, caller_uuid=None)
        with self.engine.begin() as conn:
            me = self._lock_contact(conn, contact_id)
            if me is None:
                raise NotFound(f"no contact {contact_id}")
            if me.skill_id is not None:
                if conn.dialect.name == "postgresql":
                    # Serialise requests for one number and skill, so two cannot both miss each other.
                    conn.execute(select(func.pg_advisory_xact_lock(func.hashtext(f"{number}/{me.skill_id}"))))
                other = conn.execute(select(Contact.__table__).where(
                    Contact.callback_number == number, Contact.skill_id == me.skill_id, Contact.id != contact_id,
                    Contact.callback_requested.is_(True), Contact.state != C.ENDED.value).order_by(
                    Contact.queued_at).limit(1)).first()
                if other is not None and me.state in (C.QUEUED.value, C.OFFERED.value):
                    earliest = min(as_utc(other.queued_at), as_utc(me.queued_at) or now)
                    conn.execute(update(Contact).where(Contact.id == other.id).values(
                        queued_at=earliest, callback_caller_id=caller_id, call_delay_sec=delay, ani=ani, dnis=dnis,
                        priority_initial=max(other.priority_initial, me.priority_initial),
                        priority_acceleration=max(other.priority_acceleration, me.priority_acceleration),
                        priority_max=max(other.priority_max, me.priority_max)))
                    if me.state == C.OFFERED.value:
                        self._release_agent(conn, me.agent_id, me.id, now)
                    self._move(conn, contact_id, [C(me.state)], C.ENDED, f"duplicate of contact {other.id}",
                               outcome=Outcome.MERGED.value, ended_at=now, callback_requested=True,
                               callback_number=number, callback_requested_at=now,
                               last_error=f"callback merged into contact {other.id}")
                    log.info("contact %s callback for %s merged into pending contact %s (keeps the earlier place)",
                             contact_id, number, other.id)
                    return other.id
            if self._move(conn, contact_id, [C.QUEUED], C.CALLBACK_QUEUED, "callback", **values):
                return contact_id
            # An agent is being offered right now: the offer goes on, as a callback.
            res = conn.execute(update(Contact).where(
                Contact.id == contact_id, Contact.state == C.OFFERED.value).values(**values))
            if res.rowcount == 1:
                log.info("contact %s offered -[callback]-> offered (as a callback)", contact_id)
                return contact_id
            raise StaleState(f"contact {contact_id} is {self._state(conn, contact_id)}: a callback needs a queued "
                             "contact (run Reqagent first)")

    @staticmethod
    def _pending_query(number: str):
        return select(Contact.id).where(Contact.callback_number == number, Contact.callback_requested.is_(True),
                                        Contact.state != C.ENDED.value).order_by(Contact.queued_at).limit(1)

    # -- controllers ----------------------------------------------------
    def heartbeat(self, esl: str) -> None:
        now = utcnow()
        with self.engine.begin() as conn:
            n = conn.execute(update(Controller).where(Controller.id == self.controller_id).values(
                heartbeat_at=now, esl=esl)).rowcount
            if n == 0:
                conn.execute(insert(Controller).values(id=self.controller_id, started_at=now, heartbeat_at=now,
                                                       esl=esl))

    def adopt_dead(self, timeout: float) -> list[str]:
        """Take over the open contacts of controllers whose heartbeat stopped; returns their ids."""
        limit = utcnow() - timedelta(seconds=timeout)
        with self.engine.begin() as conn:
            dead = [r.id for r in conn.execute(select(Controller.id).where(
                Controller.heartbeat_at < limit, Controller.id != self.controller_id).with_for_update(
                skip_locked=True)).all()]
            for cid in dead:
                n = conn.execute(update(Contact).where(Contact.controller_id == cid, Contact.state != C.ENDED.value)
                                 .values(controller_id=self.controller_id)).rowcount
                conn.execute(update(Agent).where(Agent.controller_id == cid).values(controller_id=self.controller_id))
                conn.execute(Controller.__table__.delete().where(Controller.id == cid))
                log.warning("controller %s stopped beating; %s took over its %d open contacts", cid,
                            self.controller_id, n)
            return dead

    def end_contact(self, contact_id: int, expected: Iterable[C], outcome: Outcome, reason: str,
                    error: str | None = None) -> bool:
        with self.engine.begin() as conn:
            return self._move(conn, contact_id, expected, C.ENDED, reason, outcome=outcome.value,
                              ended_at=utcnow(), last_error=error)

    def cancel(self, contact_id: int, reason: str, force: bool = False) -> str:
        """Cancel a waiting callback (or live contact). A callback being dialled or in
        conversation is refused with the reason, unless force (used when shutting a demo)."""
        with self.engine.begin() as conn:
            row = self._lock_contact(conn, contact_id)
            if row is None:
                raise NotFound(f"no contact {contact_id}")
            if row.state == C.ENDED.value:
                raise StoreError(f"contact {contact_id} already ended ({row.outcome})")
            waiting = [C.QUEUED, C.CALLBACK_QUEUED, C.ARRIVED]
            allowed = waiting + ([C.OFFERED, C.ACCEPTED, C.DIALLING, C.CONNECTED] if force else [])
            if C(row.state) not in allowed:
                what = {"offered": "an agent's phone is ringing for it", "accepted": "an agent accepted it and "
                        "the dial is due", "dialling": "it is being dialled", "connected": "it is in conversation"}
                raise StoreError(f"contact {contact_id} cannot be cancelled now: {what.get(row.state, row.state)}; "
                                 "try again when it is back in the queue")
            self._release_agent(conn, row.agent_id, row.id, utcnow())
            if not self._move(conn, contact_id, [C(row.state)], C.ENDED, reason, outcome=Outcome.CANCELLED.value,
                              ended_at=utcnow(), last_error=reason):
                raise StaleState(f"contact {contact_id} changed state meanwhile; try again")
            return row.state

    def contacts_in(self, states: Iterable[C], mine: bool = False) -> list:
        with self.engine.connect() as conn:
            q = select(Contact.__table__).where(Contact.state.in_([s.value for s in states]))
            if mine:
                q = q.where(Contact.controller_id == self.controller_id)
            return list(conn.execute(q.order_by(Contact.id)).all())

    # -- dispatch -------------------------------------------------------
    def claim_offer(self, new_leg_uuid: str) -> Offer | None:
        """Pick the best waiting contact and the longest-idle available agent with its skill,
        and mark both Offered in one transaction. None when nothing can be matched."""
        now = utcnow()
        if self._pg:
            with self._autocommit.connect() as conn:
                row = conn.execute(_PG_CLAIM, {"now": now, "leg": new_leg_uuid, "ctl": self.controller_id}).first()
            return self._claimed(row, new_leg_uuid)
        with self.engine.begin() as conn:
            return self._claim(conn, new_leg_uuid, now)

    @staticmethod
    def _offer(pair, leg_uuid: str) -> Offer:
        """The Offer of a claimed pair (a row shaped like esl_cb_claim's result)."""
        return Offer(pair.contact_id, pair.agent_id, pair.agent_name, pair.dial_string, leg_uuid,
                     pair.contact_state == C.CALLBACK_QUEUED.value, pair.caller_uuid,
                     pair.callback_number or pair.original_ani, pair.skill)

    @classmethod
    def _claimed(cls, row, leg_uuid: str) -> Offer | None:
        if row is None or row.contact_id is None:
            return None
        log.info("contact %s %s -[offer to %s]-> offered", row.contact_id, row.contact_state, row.agent_name)
        log.info("agent %s Available -[offer contact %s]-> Offered", row.agent_name, row.contact_id)
        return cls._offer(row, leg_uuid)

    def _claim(self, conn, new_leg_uuid: str, now: datetime) -> Offer | None:
        # The generic (SQLite) twin of esl_cb_claim: the database orders the queue (SPEC 3:
        # effective priority, then first queued; the agent idle longest) and hands back one pair,
        # so no queue travels to Python. (SQLite ignores FOR UPDATE; it has one writer at a time.)
        waiting = [C.QUEUED.value, C.CALLBACK_QUEUED.value]
        pair = conn.execute(
            select(Contact.id.label("contact_id"), Contact.state.label("contact_state"), Contact.caller_uuid,
                   Contact.callback_number, Contact.original_ani, Skill.name.label("skill"),
                   Agent.id.label("agent_id"), Agent.name.label("agent_name"), Agent.dial_string)
            .join(Skill, Skill.id == Contact.skill_id)
            .join(AgentSkill, AgentSkill.skill_id == Contact.skill_id)
            .join(Agent, Agent.id == AgentSkill.agent_id)
            .where(Agent.state == A.AVAILABLE.value, Contact.state.in_(waiting),
                   or_(Agent.offer_not_before.is_(None), Agent.offer_not_before <= now),
                   or_(Contact.retry_at.is_(None), Contact.retry_at <= now))
            .order_by(effective_priority(Contact.priority_initial, Contact.priority_acceleration,
                                         Contact.priority_max, Contact.queued_at, now).desc(),
                      Contact.queued_at, Contact.id,
                      func.coalesce(Agent.available_since, literal(now, DateTime(timezone=True))), Agent.id)
            .limit(1)
            .with_for_update(of=[Contact.__table__, Agent.__table__], skip_locked=True)).first()
        if pair is None:
            return None
        got_agent = conn.execute(update(Agent).where(Agent.id == pair.agent_id, Agent.state == A.AVAILABLE.value).values(
            state=A.OFFERED.value, state_changed_at=now, contact_id=pair.contact_id, leg_uuid=new_leg_uuid,
            controller_id=self.controller_id)).rowcount == 1
        if not got_agent or not self._move(conn, pair.contact_id, [C(pair.contact_state)], C.OFFERED,
                                           f"offer to {pair.agent_name}", offered_at=now, agent_id=pair.agent_id,
                                           agent_leg_uuid=new_leg_uuid, controller_id=self.controller_id):
            conn.rollback()       # without row locks someone else took one of the two
            return None
        log.info("agent %s Available -[offer contact %s]-> Offered", pair.agent_name, pair.contact_id)
        return self._offer(pair, new_leg_uuid)

    def offer_failed(self, offer: Offer, refused: bool, reason: str, not_before: float = 0.0) -> None:
        """The agent declined, did not answer, or could not be rung: the contact keeps its place.
        With `not_before` (seconds), the agent is not offered again before then (the switch was full)."""
        now = utcnow()
        with self.engine.begin() as conn:
            row = self._lock_contact(conn, offer.contact_id)
            back = C.CALLBACK_QUEUED if row and row.callback_requested else C.QUEUED
            self._move(conn, offer.contact_id, [C.OFFERED], back, reason, agent_id=None, agent_leg_uuid=None)
            to = A.REFUSED if refused else A.AVAILABLE
            conn.execute(update(Agent).where(Agent.id == offer.agent_id, Agent.state == A.OFFERED.value,
                                             Agent.contact_id == offer.contact_id).values(
                state=to.value, state_changed_at=now, contact_id=None, leg_uuid=None,
                offer_not_before=now + timedelta(seconds=not_before) if not_before > 0 else None))
            log.info("agent %s Offered -[%s]-> %s%s", offer.agent_name, reason, to.value,
                     f" (not offered for {not_before:g}s)" if not_before > 0 else "")

    def accept_live(self, offer: Offer) -> bool:
        now = utcnow()
        with self.engine.begin() as conn:
            res = conn.execute(update(Contact).where(
                Contact.id == offer.contact_id, Contact.state == C.OFFERED.value,
                Contact.callback_requested.is_(False)).values(state=C.CONNECTED.value, accepted_at=now,
                                                              connected_at=now))
            if res.rowcount != 1:
                return False
            log.info("contact %s offered -[agent %s answered]-> connected", offer.contact_id, offer.agent_name)
            self._agent_on_call(conn, offer, now)
            self._add_leg(conn, offer.agent_leg_uuid, offer.contact_id, "agent", offer.agent_id,
                          offer.contact_number, offer.dial_string, now)
            return True

    def accept_callback(self, offer: Offer, delay: int, answered_at: datetime | None = None) -> datetime | None:
        """Agent answered a callback offer: the CallDelaySec timer is persisted as a due time,
        counted from the moment the agent answered."""
        now = utcnow()
        due = (answered_at or now) + timedelta(seconds=delay)
        with self.engine.begin() as conn:
            if not self._move(conn, offer.contact_id, [C.OFFERED], C.ACCEPTED, f"agent {offer.agent_name} answered",
                              accepted_at=now, dial_due_at=due):
                return None
            self._agent_on_call(conn, offer, now)
            self._add_leg(conn, offer.agent_leg_uuid, offer.contact_id, "agent", offer.agent_id,
                          offer.contact_number, offer.dial_string, now)
            return due

    def _agent_on_call(self, conn, offer: Offer, now: datetime) -> None:
        res = conn.execute(update(Agent).where(Agent.id == offer.agent_id, Agent.state == A.OFFERED.value,
                                               Agent.contact_id == offer.contact_id).values(
            state=A.ON_CALL.value, state_changed_at=now))
        if res.rowcount != 1:
            raise StaleState(f"agent {offer.agent_name} was not Offered when answering contact {offer.contact_id}")
        log.info("agent %s Offered -[answered contact %s]-> OnCall", offer.agent_name, offer.contact_id)

    def _add_leg(self, conn, uuid: str, contact_id: int, kind: str, agent_id: int | None, frm: str, to: str,
                 answered: datetime | None) -> None:
        conn.execute(insert(Leg).values(uuid=uuid, contact_id=contact_id, kind=kind,
                                        direction="inbound" if kind == "caller" else "outbound",
                                        agent_id=agent_id, from_number=frm, to_number=to,
                                        started_at=answered or utcnow(), answered_at=answered))

    def refuse_accepted(self, offer: Offer, reason: str) -> None:
        """An accepted callback that must not be dialled (CallDelaySec >= 60): agent Refused, place kept."""
        now = utcnow()
        with self.engine.begin() as conn:
            self._move(conn, offer.contact_id, [C.OFFERED, C.ACCEPTED], C.CALLBACK_QUEUED, reason,
                       agent_id=None, agent_leg_uuid=None, dial_due_at=None, last_error=reason)
            conn.execute(update(Agent).where(Agent.id == offer.agent_id).values(
                state=A.REFUSED.value, state_changed_at=now, contact_id=None, leg_uuid=None))
            log.info("agent %s -[%s]-> Refused", offer.agent_name, reason)

    def prepare_dial(self, contact_id: int, leg_uuid: str) -> DialPlan | None:
        """Persist the coming attempt, with its origination uuid, when the agent accepts: at the due
        time the originate goes out with no database work in the way, and after a crash the stored
        uuid decides whether it was sent (it is never sent twice)."""
        with self.engine.begin() as conn:
            c = self._lock_contact(conn, contact_id)
            if c is None or c.state != C.ACCEPTED.value:
                return None
            # Rows are numbered by every dial; `attempts` counts only those that count against the
            # limit (an attempt the agent cut short does not).
            row_no = (conn.execute(select(func.max(CallbackAttempt.attempt_no)).where(
                CallbackAttempt.contact_id == contact_id)).scalar() or 0) + 1
            due = as_utc(c.dial_due_at) or utcnow()
            res = conn.execute(update(Contact).where(Contact.id == contact_id, Contact.state == C.ACCEPTED.value,
                                                     Contact.callback_leg_uuid.is_(None)).values(
                attempts=c.attempts + 1, callback_leg_uuid=leg_uuid))
            if res.rowcount != 1:
                return None
            conn.execute(insert(CallbackAttempt).values(
                contact_id=contact_id, attempt_no=row_no, leg_uuid=leg_uuid, agent_id=c.agent_id,
                number=c.callback_number, caller_id=c.callback_caller_id, started_at=due))
            return DialPlan(contact_id, c.agent_id, c.agent_leg_uuid, c.callback_number, c.callback_caller_id,
                            row_no, leg_uuid)

    def prepared_plan(self, contact_id: int) -> DialPlan | None:
        with self.engine.connect() as conn:
            c = self._lock_contact(conn, contact_id)
            if c is None or c.state != C.ACCEPTED.value or not c.callback_leg_uuid:
                return None
            no = conn.execute(select(CallbackAttempt.attempt_no).where(
                CallbackAttempt.leg_uuid == c.callback_leg_uuid)).scalar()
            return DialPlan(c.id, c.agent_id, c.agent_leg_uuid, c.callback_number, c.callback_caller_id, no or 0,
                            c.callback_leg_uuid)

    def mark_dialling(self, plan: DialPlan) -> bool:
        """Right after the originate went out: the contact is being dialled, and the leg is billed."""
        now = utcnow()
        with self.engine.begin() as conn:
            if not self._move(conn, plan.contact_id, [C.ACCEPTED], C.DIALLING, f"dial attempt {plan.attempt_no}",
                              dialled_at=now):
                return False
            conn.execute(update(CallbackAttempt).where(CallbackAttempt.leg_uuid == plan.leg_uuid).values(
                started_at=now))
            if conn.execute(select(Leg.uuid).where(Leg.uuid == plan.leg_uuid)).scalar() is None:
                conn.execute(insert(Leg).values(uuid=plan.leg_uuid, contact_id=plan.contact_id, kind="callback",
                                                direction="outbound", agent_id=plan.agent_id,
                                                from_number=plan.caller_id, to_number=plan.number, started_at=now))
            return True

    def dial_answered(self, contact_id: int, leg_uuid: str) -> bool:
        now = utcnow()
        with self.engine.begin() as conn:
            res = conn.execute(update(Contact).where(
                Contact.id == contact_id, Contact.callback_leg_uuid == leg_uuid,
                Contact.state.in_([C.DIALLING.value, C.ACCEPTED.value])).values(
                state=C.CONNECTED.value, connected_at=now))
            if res.rowcount != 1:
                return False
            log.info("contact %s dialling -[customer answered]-> connected", contact_id)
            if conn.execute(select(Leg.uuid).where(Leg.uuid == leg_uuid)).scalar() is None:
                c = self._lock_contact(conn, contact_id)
                conn.execute(insert(Leg).values(uuid=leg_uuid, contact_id=contact_id, kind="callback",
                                                direction="outbound", agent_id=c.agent_id,
                                                from_number=c.callback_caller_id, to_number=c.callback_number,
                                                started_at=now))
            conn.execute(update(CallbackAttempt).where(CallbackAttempt.leg_uuid == leg_uuid).values(result="answered"))
            conn.execute(update(Leg).where(Leg.uuid == leg_uuid).values(answered_at=now))
            return True

    def dial_failed(self, contact_id: int, leg_uuid: str, result: str, retry_after: float, max_attempts: int,
                    counts: bool = True) -> Outcome | None:
        """The customer did not answer (or the agent hung up while it rang): release the agent,
        retry later or give up. Returns CALLBACK_FAILED when it gave up."""
        now = utcnow()
        with self.engine.begin() as conn:
            c = self._lock_contact(conn, contact_id)
            if c is None or c.state not in (C.DIALLING.value, C.ACCEPTED.value) or c.callback_leg_uuid != leg_uuid:
                return None     # an older attempt reporting late: the contact has moved on
            conn.execute(update(CallbackAttempt).where(CallbackAttempt.leg_uuid == leg_uuid).values(
                result=result, ended_at=now))
            attempts = c.attempts if counts else max(c.attempts - 1, 0)
            self._release_agent(conn, c.agent_id, c.id, now)
            if attempts >= max_attempts:
                self._move(conn, contact_id, [C(c.state)], C.ENDED, f"{result}, attempt {attempts} of {max_attempts}",
                           outcome=Outcome.CALLBACK_FAILED.value, ended_at=now, attempts=attempts,
                           last_error=result, agent_leg_uuid=None)
                return Outcome.CALLBACK_FAILED
            self._move(conn, contact_id, [C(c.state)], C.CALLBACK_QUEUED, f"{result}, retry in {retry_after:g}s",
                       retry_at=now + timedelta(seconds=retry_after) if counts else None, attempts=attempts,
                       agent_id=None, agent_leg_uuid=None, dial_due_at=None, callback_leg_uuid=None,
                       last_error=result)
            return None

    def bridge_failed(self, contact_id: int, leg_uuid: str, reason: str) -> bool:
        """The customer answered but the agent was gone by then: back to the queue, not counted."""
        now = utcnow()
        with self.engine.begin() as conn:
            c = self._lock_contact(conn, contact_id)
            if c is None or c.state != C.CONNECTED.value or c.callback_leg_uuid != leg_uuid:
                return False
            conn.execute(update(CallbackAttempt).where(CallbackAttempt.leg_uuid == leg_uuid).values(
                result="agent_gone", ended_at=now))
            self._release_agent(conn, c.agent_id, c.id, now)
            return self._move(conn, contact_id, [C.CONNECTED], C.CALLBACK_QUEUED, reason,
                              attempts=max(c.attempts - 1, 0), agent_id=None, agent_leg_uuid=None,
                              callback_leg_uuid=None, dial_due_at=None, connected_at=None, last_error=reason)

    def agent_left_before_dial(self, contact_id: int, reason: str) -> bool:
        """Agent hung up during CallDelaySec: nothing was dialled, the contact keeps its place."""
        now = utcnow()
        with self.engine.begin() as conn:
            c = self._lock_contact(conn, contact_id)
            if c is None or c.state != C.ACCEPTED.value:
                return False
            self._release_agent(conn, c.agent_id, c.id, now)
            attempts = c.attempts
            if c.callback_leg_uuid:        # the prepared attempt was never dialled: it does not count
                conn.execute(update(CallbackAttempt).where(CallbackAttempt.leg_uuid == c.callback_leg_uuid).values(
                    result="not_dialled", ended_at=now))
                attempts = max(attempts - 1, 0)
            return self._move(conn, contact_id, [C.ACCEPTED], C.CALLBACK_QUEUED, reason, agent_id=None,
                              agent_leg_uuid=None, dial_due_at=None, callback_leg_uuid=None, attempts=attempts)

    def _release_agent(self, conn, agent_id: int | None, contact_id: int, now: datetime) -> None:
        # Only from this contact: the agent may already be on the next one.
        if agent_id is None:
            return
        conn.execute(update(Agent).where(Agent.id == agent_id, Agent.contact_id == contact_id, Agent.state.in_(
            [A.ON_CALL.value, A.OFFERED.value])).values(state=A.AVAILABLE.value, state_changed_at=now,
                                                        available_since=now, contact_id=None, leg_uuid=None))

    def complete(self, contact_id: int, reason: str, claim_leg_uuid: str | None = None) -> tuple[bool, Offer | None]:
        """A connected contact ended: handled (live) or callback completed; the agent is free again.

        With `claim_leg_uuid`, the next offer is claimed in the same transaction (one commit on
        the path from a hangup to the next offer: no wrap-up delay). Returns (completed, offer).
        """
        now = utcnow()
        if self._pg:
            with self._autocommit.connect() as conn:
                row = conn.execute(_PG_COMPLETE, {"id": contact_id, "now": now, "leg": claim_leg_uuid,
                                                  "ctl": self.controller_id}).one()
            if not row.completed:
                return False, None
            log.info("contact %s connected -[%s]-> ended", contact_id, reason)
            return True, self._claimed(row, claim_leg_uuid) if claim_leg_uuid else None
        with self.engine.begin() as conn:
            c = self._lock_contact(conn, contact_id)
            if c is None or c.state != C.CONNECTED.value:
                return False, None
            outcome = Outcome.CALLBACK_COMPLETED if c.callback_requested else Outcome.HANDLED
            self._release_agent(conn, c.agent_id, c.id, now)
            if not self._move(conn, contact_id, [C.CONNECTED], C.ENDED, reason, outcome=outcome.value, ended_at=now):
                return False, None
            return True, (self._claim(conn, claim_leg_uuid, now) if claim_leg_uuid else None)

    def abandon_offer(self, contact_id: int, reason: str) -> int | None:
        """A live caller hung up while an agent was being offered: returns the agent to release."""
        now = utcnow()
        with self.engine.begin() as conn:
            c = self._lock_contact(conn, contact_id)
            if c is None or c.state != C.OFFERED.value or c.callback_requested:
                return None
            self._release_agent(conn, c.agent_id, c.id, now)
            self._move(conn, contact_id, [C.OFFERED], C.ENDED, reason, outcome=Outcome.ABANDONED.value, ended_at=now)
            return c.agent_id

    def reset_refused(self, after_seconds: float) -> int:
        """Refused agents become Available again after a while (if the operator configured it)."""
        now = utcnow()
        with self.engine.begin() as conn:
            res = conn.execute(update(Agent).where(
                Agent.state == A.REFUSED.value, Agent.state_changed_at <= now - timedelta(seconds=after_seconds)
            ).values(state=A.AVAILABLE.value, state_changed_at=now, available_since=now))
            return res.rowcount

    # -- legs -----------------------------------------------------------
    def leg_ended(self, uuid: str, cause: str, billsec: int | None, answered: bool) -> None:
        with self.engine.begin() as conn:
            values = dict(ended_at=utcnow(), hangup_cause=cause, billsec=billsec)
            conn.execute(update(Leg).where(Leg.uuid == uuid, Leg.ended_at.is_(None)).values(**values))

    NOTIFY_CHANNEL = "esl_cb_wake"

    def notify(self, what: str = "") -> None:
        """Wake every controller on this database (PostgreSQL); they also poll, as the backstop."""
        if self.engine.dialect.name != "postgresql":
            return
        with self.engine.begin() as conn:
            conn.execute(text("SELECT pg_notify(:c, :w)"), {"c": self.NOTIFY_CHANNEL, "w": what[:100]})
