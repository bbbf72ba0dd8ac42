"""What every part of the store shares: the engine, the guarded move of a contact, row locks, and
the types handed to the controller (Offer, DialPlan) and its errors.

Each transition is one guarded UPDATE (... WHERE id = :id AND state = :expected).
Zero rows updated means someone else (another controller, a hangup) got there
first: callers get False or a StaleState error, never a silent no-op.

Fencing (issue 17, item 4): a store with a controller_id moves only the contacts (and agents) that
controller owns (... AND controller_id = :me). A controller taken over while it stalled finds its
moves refused like lost races, with one warning per contact, until its next heartbeat tells it
(Fenced). Operators' moves (cancel; the CLI's store has no controller_id) and moves that take
ownership (a claim) are not fenced.
"""
from __future__ import annotations

import collections
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Iterable

from sqlalchemy import Engine, bindparam, event, insert, select, text, true, update
from sqlalchemy.exc import IntegrityError

from esl_cb.domain.errors import EslCbError
from esl_cb.domain.states import AgentState as A
from esl_cb.domain.states import ContactState as C
from esl_cb.domain.states import contact_can

from . import outage
from .engine import ARRIVALS, PriorityPool, make_engine  # noqa: F401  (ARRIVALS is imported from here)
from .models import Agent, AuditEntry, Contact, Leg, Skill

log = logging.getLogger(__name__)

# The statements of every state change, built once: their values travel as parameters, so SQLAlchemy
# neither rebuilds nor re-keys them per call (with the values baked in, building and cache-keying an
# ORM UPDATE cost more CPU than the database's own work; issue 12).
_CONTACTS, _AGENTS, _LEGS = Contact.__table__, Agent.__table__, Leg.__table__
_MOVE = update(_CONTACTS).where(_CONTACTS.c.id == bindparam("b_id"),
                                _CONTACTS.c.state.in_(bindparam("b_from", expanding=True)))
_MOVE_MINE = _MOVE.where(_CONTACTS.c.controller_id == bindparam("b_owner"))
_CONTACT = select(_CONTACTS).where(_CONTACTS.c.id == bindparam("b_id"))
_LOCK_CONTACT = _CONTACT.with_for_update()
_OWNER = select(_CONTACTS.c.controller_id).where(_CONTACTS.c.id == bindparam("b_id"))
_AGENT_ON_CALL = update(_AGENTS).where(_AGENTS.c.id == bindparam("b_id"), _AGENTS.c.state == A.OFFERED.value,
                                       _AGENTS.c.contact_id == bindparam("b_contact"))
_MY_AGENT_ON_CALL = _AGENT_ON_CALL.where(_AGENTS.c.controller_id == bindparam("b_owner"))
_RELEASE_AGENT = update(_AGENTS).where(
    _AGENTS.c.id == bindparam("b_id"), _AGENTS.c.contact_id == bindparam("b_contact"),
    _AGENTS.c.state.in_([A.ON_CALL.value, A.OFFERED.value])).values(state=A.AVAILABLE.value, contact_id=None,
                                                                      leg_uuid=None)
_RELEASE_MY_AGENT = _RELEASE_AGENT.where(_AGENTS.c.controller_id == bindparam("b_owner"))
_ADD_LEG = insert(_LEGS)
_SKILL_ID = select(Skill.__table__.c.id).where(Skill.__table__.c.name == bindparam("b_name"))


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class StoreError(EslCbError):
    """A persistence operation that cannot be done as asked (the message says why)."""

    code = "conflict"
    http_status = 409
    title = "it cannot be done now"


class StaleState(StoreError):
    """The row was not in the state the caller expected (or one that allows what was asked)."""

    code = "wrong_state"
    title = "not in a state that allows it"


class IllegalTransition(StoreError):
    """A change of a contact's state that the state table does not allow: refused by StoreBase._move
    or by the database itself (contact_transitions and its trigger, migration 0007; SQLSTATE 23T01 on
    PostgreSQL). A bug in the statement that tried it, never a race."""

    code = "illegal_transition"
    http_status = 500
    title = "A state change the state table does not allow"


class Fenced(StoreError):
    """This controller's membership is over: another controller took over what it held while it
    stalled (its heartbeat found no row of its epoch). Drop what is held and register again."""

    code = "fenced"
    http_status = 409
    title = "This controller was taken over by another"


class PolicyRefused(StoreError):
    """The destination policy or a rate limit refuses this callback (the message says why)."""

    code = "policy_refused"
    http_status = 422
    title = "the destination policy refuses this callback"

    def __init__(self, reason: str, rule: str, calling_number: str = "", where: str = "") -> None:
        super().__init__(reason, where=where)
        self.rule = rule
        self.calling_number = calling_number


class RateLimited(PolicyRefused):
    """Too many callbacks for this number or from this caller recently (rule per_number | per_caller)."""

    code = "rate_limited"
    http_status = 429
    title = "too many callbacks requested"


class NotFound(StoreError):
    code = "not_found"
    http_status = 404
    title = "no such thing"


class UnknownSkill(NotFound):
    """A skill named in a request does not exist (bookings never create one)."""

    code = "unknown_skill"
    http_status = 422
    title = "no such skill"


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
    confirm_prompt: str = ""        # the customer must press confirm_key after hearing it (issue 14)
    confirm_key: str = "1"
    whisper_prompt: str = ""        # the agent hears it and the number during CallDelaySec

    @classmethod
    def of(cls, c, attempt_no: int, leg_uuid: str) -> "DialPlan":
        """The dial of a stored contact row."""
        options = json.loads(c.callback_options) if c.callback_options else {}
        return cls(c.id, c.agent_id, c.agent_leg_uuid, c.callback_number, c.callback_caller_id, attempt_no, leg_uuid,
                   bool(c.policy_override), options.get("confirm_prompt", ""), options.get("confirm_key", "1"),
                   options.get("whisper_prompt", ""))


# Migration 0007's triggers refuse a change of state the table does not allow with this SQLSTATE on
# PostgreSQL; SQLite's RAISE takes a fixed text only, which starts with the same code.
ILLEGAL_TRANSITION_SQLSTATE = "23T01"
_SQLITE_REFUSAL = f"esl_cb {ILLEGAL_TRANSITION_SQLSTATE}:"


def _illegal_transition(ctx) -> None:
    """The database refused a change of state: the one exception callers see, whatever the statement."""
    orig = ctx.original_exception
    if getattr(orig, "pgcode", None) == ILLEGAL_TRANSITION_SQLSTATE:
        raise IllegalTransition(orig.diag.message_primary)
    if str(orig).startswith(_SQLITE_REFUSAL):
        params = ctx.parameters if isinstance(ctx.parameters, dict) else {}
        cid, to = params.get("b_id", params.get("id")), params.get("state")
        about = f"contact {cid}: " if cid is not None else ""
        raise IllegalTransition(f"{about}{str(orig)[len(_SQLITE_REFUSAL):].strip()}"
                                + (f" (to {to})" if to is not None else ""))


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
        self.epoch: int | None = None            # this membership's, from register() (controllers.py)
        self.outage = outage.watch(self.engine)      # said once: the database away, and back
        self.clock: Callable[[], float] = time.monotonic
        self._beats: collections.deque[float] = collections.deque(maxlen=1024)   # our own heartbeats that committed
        self._warned_not_mine: set[int] = set()
        self._reported_left: set[tuple[str, int]] = set()     # dead members left to their own switch, logged
        if not event.contains(self.engine, "handle_error", _illegal_transition):
            event.listen(self.engine, "handle_error", _illegal_transition)
        # PostgreSQL dispatches through the functions of migration 0003: one statement, its own
        # transaction (autocommit), so no BEGIN/COMMIT round trips on the hot path.
        self._pg = self.engine.dialect.name == "postgresql"
        self._autocommit = self.engine.execution_options(isolation_level="AUTOCOMMIT")

    def close(self) -> None:
        self.engine.dispose()

    def limit_arrivals(self, connections: int, before: Callable[[], None] | None = None) -> None:
        """Callers' arrivals (code run with ARRIVALS set) may hold at most `connections` of the pool at once,
        and `before` runs (it may wait) before each of their transactions takes one: however many callers
        arrive together, the agents' answers, dials and bridges never wait for a connection (issue 12).
        Nothing to do on SQLite (one writer anyway)."""
        pool = self.engine.pool
        if isinstance(pool, PriorityPool):
            pool.limit_arrivals(connections, before)

    def contact(self, contact_id: int):
        # One SELECT on its own (autocommit on PostgreSQL): no BEGIN, no ROLLBACK when it is returned.
        with (self._autocommit if self._pg else self.engine).connect() as conn:
            row = conn.execute(_CONTACT, {"b_id": contact_id}).first()
        if row is None:
            raise NotFound(f"no contact {contact_id}")
        return row

    def contacts_in(self, states: Iterable[C], mine: bool = False) -> list:
        with self.engine.connect() as conn:
            q = select(Contact.__table__).where(Contact.state.in_([s.value for s in states]))
            if mine:
                q = q.where(Contact.controller_id == self.controller_id)
            return list(conn.execute(q.order_by(Contact.id)).all())

    def _move(self, conn, contact_id: int, expected: Iterable[C], to: C, reason: str, *, fenced: bool = True,
              **values) -> bool:
        """The guarded move; `fenced`: only if the contact is this controller's (see the module's doc)."""
        expected = list(expected)
        illegal = [s.value for s in expected if not contact_can(s, to)]
        if illegal:
            raise IllegalTransition(f"contact {contact_id}: {'|'.join(illegal)} -> {to.value} is not a legal "
                                    "transition")
        params = {"b_id": contact_id, "b_from": [s.value for s in expected], "state": to.value, **values}
        fenced = fenced and bool(self.controller_id)
        res = conn.execute(_MOVE_MINE if fenced else _MOVE, {**params, "b_owner": self.controller_id} if fenced
                           else params)
        if res.rowcount == 1:
            log.info("contact %s %s -[%s]-> %s", contact_id, "|".join(s.value for s in expected), reason, to.value)
            return True
        if fenced:
            self._check_owner(conn, contact_id, reason)
        return False

    def _owned(self, column):
        """The fence as a WHERE clause on a controller_id column: ours, or anything for an operator's store."""
        return column == self.controller_id if self.controller_id else true()

    def _mine(self, row, what: str) -> bool:
        """Whether this store may move the contact `row` (read under its lock); warns when it may not."""
        if not self.controller_id or row.controller_id == self.controller_id:
            return True
        self._not_mine(row.id, row.controller_id, what)
        return False

    def _check_owner(self, conn, contact_id: int, what: str) -> None:
        """After a fenced move changed nothing: say so if the contact is someone else's (else it was a race)."""
        if not self.controller_id:
            return
        row = conn.execute(_OWNER, {"b_id": contact_id}).first()
        if row is not None and row.controller_id != self.controller_id:
            self._not_mine(contact_id, row.controller_id, what)

    def _not_mine(self, contact_id: int, owner: str | None, what: str) -> None:
        if contact_id in self._warned_not_mine:          # once per contact and membership
            return
        self._warned_not_mine.add(contact_id)
        log.warning("contact %s belongs to controller %s, not to %s (taken over while this one stalled?): "
                    "%s refused", contact_id, owner or "(none)", self.controller_id, what)

    @staticmethod
    def _lock_contact(conn, contact_id: int):
        """Read a contact to change it: the row stays locked until commit, so two hangups of one
        conversation (agent and customer legs) cannot both act on the state they read."""
        return conn.execute(_LOCK_CONTACT, {"b_id": contact_id}).first()

    def _state(self, conn, contact_id: int) -> str:
        return conn.execute(select(Contact.state).where(Contact.id == contact_id)).scalar() or "missing"

    def skill_id(self, conn, name: str, create: bool = True) -> int:
        sid = conn.execute(_SKILL_ID, {"b_name": name}).scalar()
        if sid is None:
            if not create:
                raise NotFound(f"no skill named {name!r}")
            try:
                with conn.begin_nested():          # many callers can meet a new skill at once
                    sid = conn.execute(insert(Skill).values(name=name).returning(Skill.id)).scalar()
            except IntegrityError:
                sid = conn.execute(select(Skill.id).where(Skill.name == name)).scalar()
        return sid

    def _release_agent(self, conn, agent_id: int | None, contact_id: int, now: datetime, fenced: bool = True,
                       **values) -> None:
        # Only from this contact: the agent may already be on the next one; and only our own agent.
        if agent_id is None:
            return
        params = {"b_id": agent_id, "b_contact": contact_id, "state_changed_at": now, "available_since": now,
                  **values}
        if fenced and self.controller_id:
            conn.execute(_RELEASE_MY_AGENT, {**params, "b_owner": self.controller_id})
        else:
            conn.execute(_RELEASE_AGENT, params)

    def _agent_on_call(self, conn, offer: Offer, now: datetime) -> None:
        # An answer ends a row of misses (max-no-answer counts misses in a row, as mod_callcenter does).
        params = {"b_id": offer.agent_id, "b_contact": offer.contact_id, "state": A.ON_CALL.value,
                  "state_changed_at": now, "missed_in_a_row": 0}
        mine = bool(self.controller_id)
        res = conn.execute(_MY_AGENT_ON_CALL if mine else _AGENT_ON_CALL,
                           {**params, "b_owner": self.controller_id} if mine else params)
        if res.rowcount != 1:
            raise StaleState(f"agent {offer.agent_name} was not Offered (to this controller) when answering "
                             f"contact {offer.contact_id}")
        log.info("agent %s Offered -[answered contact %s]-> OnCall", offer.agent_name, offer.contact_id)

    def _add_leg(self, conn, uuid: str, contact_id: int, kind: str, agent_id: int | None, frm: str, to: str,
                 answered: datetime | None) -> None:
        conn.execute(_ADD_LEG, {"uuid": uuid, "contact_id": contact_id, "kind": kind,
                                "direction": "inbound" if kind == "caller" else "outbound", "agent_id": agent_id,
                                "from_number": frm, "to_number": to, "started_at": answered or utcnow(),
                                "answered_at": answered})

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
            self._notify(conn, what)

    def _notify(self, conn, what: str) -> None:
        """The same, inside a transaction: PostgreSQL delivers it when that transaction commits (one
        round trip instead of a transaction of its own)."""
        if self.engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_notify(:c, :w)"), {"c": self.NOTIFY_CHANNEL, "w": what[:100]})
