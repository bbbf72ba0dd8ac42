"""What every part of the store shares: the engine, the guarded move of a contact, row locks, and
the types handed to the controller (Offer, DialPlan) and its errors.

Each transition is one guarded UPDATE (... WHERE id = :id AND state = :expected).
Zero rows updated means someone else (another controller, a hangup) got there
first: callers get False or a StaleState error, never a silent no-op.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable

from sqlalchemy import Engine, create_engine, event, insert, select, text, update
from sqlalchemy.exc import IntegrityError

from esl_cb.domain.states import AgentState as A
from esl_cb.domain.states import ContactState as C
from esl_cb.domain.states import contact_can

from .models import Agent, AuditEntry, Contact, Leg, Skill

log = logging.getLogger(__name__)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class StoreError(Exception):
    """A persistence operation that cannot be done as asked (the message says why)."""


class StaleState(StoreError):
    """The row was not in the state the caller expected."""


class PolicyRefused(StoreError):
    """The destination policy or a rate limit refuses this callback (the message says why)."""

    def __init__(self, reason: str, rule: str, calling_number: str = "") -> None:
        super().__init__(reason)
        self.rule = rule
        self.calling_number = calling_number


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
    override: bool = False          # the destination policy allowed it only by an operator's override


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


class StoreBase(object):
    """The engine and the helpers every state change uses."""

    def __init__(self, url_or_engine: str | Engine, controller_id: str = "") -> None:
        self.engine = make_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
        self.controller_id = controller_id
        # PostgreSQL dispatches through the functions of migration 0003: one statement, its own
        # transaction (autocommit), so no BEGIN/COMMIT round trips on the hot path.
        self._pg = self.engine.dialect.name == "postgresql"
        self._autocommit = self.engine.execution_options(isolation_level="AUTOCOMMIT")

    def close(self) -> None:
        self.engine.dispose()

    def contact(self, contact_id: int):
        with self.engine.connect() as conn:
            row = conn.execute(select(Contact.__table__).where(Contact.id == contact_id)).first()
        if row is None:
            raise NotFound(f"no contact {contact_id}")
        return row

    def contacts_in(self, states: Iterable[C], mine: bool = False) -> list:
        with self.engine.connect() as conn:
            q = select(Contact.__table__).where(Contact.state.in_([s.value for s in states]))
            if mine:
                q = q.where(Contact.controller_id == self.controller_id)
            return list(conn.execute(q.order_by(Contact.id)).all())

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

    @staticmethod
    def _lock_contact(conn, contact_id: int):
        """Read a contact to change it: the row stays locked until commit, so two hangups of one
        conversation (agent and customer legs) cannot both act on the state they read."""
        return conn.execute(select(Contact.__table__).where(Contact.id == contact_id).with_for_update()).first()

    def _state(self, conn, contact_id: int) -> str:
        return conn.execute(select(Contact.state).where(Contact.id == contact_id)).scalar() or "missing"

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

    def _release_agent(self, conn, agent_id: int | None, contact_id: int, now: datetime) -> None:
        # Only from this contact: the agent may already be on the next one.
        if agent_id is None:
            return
        conn.execute(update(Agent).where(Agent.id == agent_id, Agent.contact_id == contact_id, Agent.state.in_(
            [A.ON_CALL.value, A.OFFERED.value])).values(state=A.AVAILABLE.value, state_changed_at=now,
                                                        available_since=now, contact_id=None, leg_uuid=None))

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

    @staticmethod
    def _audit(conn, operator: str | None, action: str, target: str, detail: str = "") -> None:
        """An operator's action, in the same transaction as the action itself."""
        if operator:
            conn.execute(insert(AuditEntry).values(at=utcnow(), operator=operator[:64], action=action,
                                                   target=target[:255], detail=detail))

    NOTIFY_CHANNEL = "esl_cb_wake"

    def notify(self, what: str = "") -> None:
        """Wake every controller on this database (PostgreSQL); they also poll, as the backstop."""
        if self.engine.dialect.name != "postgresql":
            return
        with self.engine.begin() as conn:
            conn.execute(text("SELECT pg_notify(:c, :w)"), {"c": self.NOTIFY_CHANNEL, "w": what[:100]})
