"""Read-only views for the HTTP API and its pages: callbacks listed with filters a page at a time, a
skill's waiting contacts as rows (the supervisor's board), an agent's contact and its history,
waits by hour. Nothing is locked; each answer is a snapshot."""
from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

from sqlalchemy import and_, bindparam, func, select, text
from sqlalchemy.orm import aliased
from sqlalchemy.sql.elements import BindParameter
from sqlalchemy.sql.visitors import replacement_traverse

from esl_cb.domain.queue import Priority
from esl_cb.domain.states import ContactState as C

from .base import as_utc
from .models import Agent, AgentSkill, ApiBooking, CallbackAssignment, CallbackAttempt, Contact, Skill
from .queue_status import SERVED, QueueStatusStore
from .sqlexpr import effective_priority
from .store import NotFound, StaleState, Store

WAITING = (C.QUEUED.value, C.CALLBACK_QUEUED.value)
OPEN = tuple(s.value for s in C if s is not C.ENDED)
LIST_LIMIT = 200


def _callback_rows():
    reserved = aliased(Agent, name="reserved")
    return (select(Contact.__table__, Skill.name.label("skill"), Agent.name.label("agent"),
                   reserved.name.label("assigned_agent"))
            .outerjoin(Skill, Skill.id == Contact.skill_id).outerjoin(Agent, Agent.id == Contact.agent_id)
            .outerjoin(CallbackAssignment, CallbackAssignment.contact_id == Contact.id)
            .outerjoin(reserved, reserved.id == CallbackAssignment.agent_id)
            .where(Contact.callback_requested.is_(True)))


def _prepared_status():
    """The Queuestatus statement of esl_cb/db/queue_status.py, built once with its contact and its
    time as parameters: building it per call (ORM aliases, the priority expression twice) costs about
    7 ms of CPU, several times the database's own work, and the API reads it on every GET."""
    now0, id0 = datetime(2000, 1, 1, tzinfo=timezone.utc), -424242
    now, cid = {}, {}

    def swap(element):
        if isinstance(element, BindParameter):
            if element.value == now0:
                return now.setdefault("p", bindparam("b_now", type_=element.type))
            if element.value == id0:
                return cid.setdefault("p", bindparam("b_cid", type_=element.type))
        return None
    return replacement_traverse(QueueStatusStore._status_query(id0, now0), {}, swap)   # noqa: SLF001


_STATUS = _prepared_status()


def queue_status(store: Store, contact_id: int, now: datetime | None = None, conn=None) -> dict:
    """store.queue_status's answer (position, being_served, agents_staffed, agents_available, aht_sec,
    state), through the prepared statement; StaleState when it does not wait, NotFound. `conn`: read
    within that transaction (a booking's answer, before its commit)."""
    now = now or datetime.now(timezone.utc)
    if conn is not None:
        return _queue_status(store, conn, contact_id, now)
    with (store._autocommit if store._pg else store.engine).connect() as conn:     # noqa: SLF001
        return _queue_status(store, conn, contact_id, now)


def _queue_status(store: Store, conn, contact_id: int, now: datetime) -> dict:
    row = conn.execute(_STATUS, {"b_cid": contact_id, "b_now": now}).first()
    if row is None:
        raise NotFound(f"no contact {contact_id}")
    if row.state not in WAITING + SERVED or row.skill_id is None:
        raise StaleState(f"contact {contact_id} is {row.state}, not in a queue")
    aht, _ = store._recent_aht(conn, row.skill_id, now, 60.0)                # noqa: SLF001 (cached a minute)
    served = row.state in SERVED
    return {"position": 1 if served else int(row.ahead) + 1, "being_served": served,
            "agents_staffed": int(row.staffed), "agents_available": int(row.available), "aht_sec": aht,
            "state": row.state}


def with_aht(store: Store, status: dict, now: datetime | None = None, conn=None) -> dict:
    """A place read by the booking's statement (esl_cb_book), with its skill's recent handle time:
    the store's, kept a minute; else read (within `conn`, else on a connection of its own)."""
    kept = store.cached_aht(status["skill_id"], 60.0)
    if kept is None:
        now = now or datetime.now(timezone.utc)
        if conn is not None:
            kept = store._recent_aht(conn, status["skill_id"], now, 60.0)                # noqa: SLF001
        else:
            with (store._autocommit if store._pg else store.engine).connect() as c:     # noqa: SLF001
                kept = store._recent_aht(c, status["skill_id"], now, 60.0)              # noqa: SLF001
    return {**status, "aht_sec": kept[0]}


# Built once (each read of one callback would otherwise build its joins and aliases again: ~2 ms).
_ONE = _callback_rows().where(Contact.id == bindparam("b_id"))
_ONE_OF_TOKEN = _ONE.join(ApiBooking, and_(ApiBooking.contact_id == Contact.id,
                                           ApiBooking.token_id == bindparam("b_token")))


def callback_row(store: Store, contact_id: int, token_id: int | None = None):
    """One callback with its skill, agent and reservation; with `token_id`, only if that token booked
    it. None when there is no such callback (for that token)."""
    with (store._autocommit if store._pg else store.engine).connect() as conn:     # noqa: SLF001 (one SELECT)
        if token_id is None:
            return conn.execute(_ONE, {"b_id": contact_id}).first()
        return conn.execute(_ONE_OF_TOKEN, {"b_id": contact_id, "b_token": token_id}).first()


def attempts(store: Store, contact_id: int) -> list[dict]:
    with (store._autocommit if store._pg else store.engine).connect() as conn:     # noqa: SLF001 (one SELECT)
        rows = conn.execute(select(CallbackAttempt.__table__).where(
            CallbackAttempt.contact_id == contact_id).order_by(CallbackAttempt.attempt_no)).all()
    return [{"attempt": r.attempt_no, "number": r.number, "caller_id": r.caller_id,
             "started_at": as_utc(r.started_at), "ended_at": as_utc(r.ended_at), "result": r.result,
             "confirmed": r.confirmed} for r in rows]


def list_callbacks(store: Store, *, token_id: int | None = None, states: tuple[str, ...] = (),
                   skill: str | None = None, number: str | None = None, since: datetime | None = None,
                   until: datetime | None = None, before_id: int | None = None, limit: int = 50) -> list:
    """Newest first (by id), `limit` rows below `before_id` (the cursor)."""
    q = _callback_rows()
    if token_id is not None:
        q = q.join(ApiBooking, and_(ApiBooking.contact_id == Contact.id, ApiBooking.token_id == token_id))
    if states:
        q = q.where(Contact.state.in_(states))
    if skill:
        q = q.where(Skill.name == skill)
    if number:
        q = q.where(Contact.callback_number == number)
    if since:
        q = q.where(Contact.callback_requested_at >= since)
    if until:
        q = q.where(Contact.callback_requested_at < until)
    if before_id is not None:
        q = q.where(Contact.id < before_id)
    with store.engine.connect() as conn:
        return conn.execute(q.order_by(Contact.id.desc()).limit(min(limit, LIST_LIMIT))).all()


BOARD_LIMIT = 500               # waiting rows per skill in one page of the board


def board_rows(store: Store, now: datetime, skill_ids: list[int], limit: int, after: int = 0) -> dict[int, tuple]:
    """A page of the board per skill: ({skill id: (rows, more)}), `rows` the contacts an agent has
    (the first page only: at most one per agent) and then `limit` waiting ones from place `after` + 1
    in SPEC 3 order (effective priority, then the time queued, then the id; ordered by the database,
    as the claim orders them), each numbered by its `place`; `more`: waiting ones follow. Its cost
    grows with the page, not the queue (a top-N sort: 10,000 waiting are not read out)."""
    reserved = aliased(Agent, name="reserved")
    rows = (select(Contact.__table__, Agent.name.label("agent"), reserved.name.label("assigned_agent"))
            .outerjoin(Agent, Agent.id == Contact.agent_id)
            .outerjoin(CallbackAssignment, CallbackAssignment.contact_id == Contact.id)
            .outerjoin(reserved, reserved.id == CallbackAssignment.agent_id))
    prio = effective_priority(Contact.priority_initial, Contact.priority_acceleration, Contact.priority_max,
                              Contact.queued_at, now)
    out = {}
    with store.engine.connect() as conn:
        for sid in skill_ids:
            served = [] if after else conn.execute(rows.where(
                Contact.skill_id == sid, Contact.state.in_([s for s in OPEN if s not in WAITING])
            ).order_by(Contact.id)).all()
            waiting = conn.execute(rows.where(Contact.skill_id == sid, Contact.state.in_(WAITING))
                                   .order_by(prio.desc(), Contact.queued_at, Contact.id)
                                   .limit(limit + 1).offset(after)).all()
            out[sid] = ([_row(r, None, now) for r in served]
                        + [_row(r, after + i + 1, now) for i, r in enumerate(waiting[:limit])], len(waiting) > limit)
    return out


def queue_counts(store: Store, now: datetime) -> dict:
    """Per skill, counted in the database (no rows read out): waiting callers and callbacks (those
    already due, and all), contacts an agent has, agents by state, those available now, the recent
    handle time."""
    with store.engine.connect() as conn:
        skills = conn.execute(select(Skill.id, Skill.name, Skill.callbacks_open, Skill.outbound_caller_id)
                              .order_by(Skill.name)).all()
        contacts = conn.execute(select(Contact.skill_id, Contact.state, Contact.callback_requested, func.count())
                                .where(Contact.state.in_(OPEN), Contact.skill_id.is_not(None))
                                .group_by(Contact.skill_id, Contact.state, Contact.callback_requested)).all()
        staff = conn.execute(select(AgentSkill.skill_id, Agent.state, func.count(),
                                    func.count().filter(Agent.offer_not_before.is_(None) | (Agent.offer_not_before <= now)))
                             .join(Agent, Agent.id == AgentSkill.agent_id)
                             .group_by(AgentSkill.skill_id, Agent.state)).all()
        ahts = {s.id: store._recent_aht(conn, s.id, now, 60.0)[0] for s in skills}   # noqa: SLF001 (cached)
    out = {}
    for s in skills:
        mine = [(state, cb, n) for sid, state, cb, n in contacts if sid == s.id]
        agents = {state: n for sid, state, n, _ in staff if sid == s.id}
        out[s.name] = {"id": s.id, "open": bool(s.callbacks_open), "outbound_caller_id": s.outbound_caller_id,
                       "aht_sec": ahts[s.id], "agents": agents,
                       "agents_available": sum(free for sid, state, _, free in staff
                                               if sid == s.id and state == "Available"),
                       "waiting_callers": sum(n for state, cb, n in mine if state in WAITING and not cb),
                       "waiting_callbacks": sum(n for state, cb, n in mine if state in WAITING and cb),
                       "being_served": sum(n for state, _, n in mine if state not in WAITING)}
    return out


def _row(r, place: int | None, now: datetime) -> dict:
    queued = as_utc(r.queued_at)
    return {"id": r.id, "kind": "callback" if r.callback_requested else "live", "state": r.state, "place": place,
            "number": r.callback_number or r.original_ani, "queued_at": queued, "arrived_at": as_utc(r.arrived_at),
            "waiting_sec": round(max((now - queued).total_seconds(), 0.0), 1) if queued else None,
            "not_before": as_utc(r.not_before), "dial_due_at": as_utc(r.dial_due_at) if r.state == "accepted" else None,
            "call_delay_sec": r.call_delay_sec, "retry_at": as_utc(r.retry_at), "expire_at": as_utc(r.expire_at),
            "priority": round(Priority(r.priority_initial, r.priority_acceleration, r.priority_max)
                              .effective(queued or now, now), 2),
            "attempts": r.attempts, "agent": r.agent, "assigned_agent": r.assigned_agent}


def number_history(store: Store, number: str, exclude: int, limit: int = 10) -> list[dict]:
    """The earlier contacts of a number (as caller or callback), newest first."""
    with store.engine.connect() as conn:
        rows = conn.execute(select(Contact.id, Contact.arrived_at, Contact.ended_at, Contact.outcome, Contact.state,
                                   Contact.callback_requested, Skill.name.label("skill"), Agent.name.label("agent"))
                            .outerjoin(Skill, Skill.id == Contact.skill_id).outerjoin(Agent, Agent.id == Contact.agent_id)
                            .where((Contact.callback_number == number) | (Contact.original_ani == number),
                                   Contact.id != exclude)
                            .order_by(Contact.id.desc()).limit(limit)).all()
    return [{"id": r.id, "arrived_at": as_utc(r.arrived_at), "ended_at": as_utc(r.ended_at), "state": r.state,
             "outcome": r.outcome, "callback": r.callback_requested, "skill": r.skill, "agent": r.agent} for r in rows]


def waits_by_hour(store: Store, since: datetime, until: datetime, tz: str) -> list[dict]:
    """Contacts connected to an agent, by the hour (in `tz`) they arrived: how many, and the
    average and longest wait from arrival to the connection, in seconds."""
    with store.engine.connect() as conn:
        rows = conn.execute(text("SELECT arrived_at, connected_at FROM reporting_contacts WHERE arrived_at >= :s "
                                 "AND arrived_at < :u AND connected_at IS NOT NULL"), {"s": since, "u": until}).all()
    zone = ZoneInfo(tz)
    hours: dict[int, list[float]] = {}
    for arrived, connected in rows:
        a, c = _utc(arrived), _utc(connected)
        hours.setdefault(a.astimezone(zone).hour, []).append((c - a).total_seconds())
    return [{"hour": h, "answered": len(hours.get(h, [])),
             "average_wait_sec": round(sum(hours[h]) / len(hours[h]), 1) if h in hours else None,
             "longest_wait_sec": round(max(hours[h]), 1) if h in hours else None} for h in range(24)]


def _utc(value) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return as_utc(value)


def day_bounds(tz: str, now: datetime | None = None) -> tuple[datetime, datetime]:
    """Today's midnight in `tz`, and now (UTC)."""
    now = now or datetime.now(timezone.utc)
    local = now.astimezone(ZoneInfo(tz))
    start = local.replace(hour=0, minute=0, second=0, microsecond=0)
    return start.astimezone(timezone.utc), now


def agent_skill_names(store: Store) -> dict[str, list[str]]:
    with store.engine.connect() as conn:
        rows = conn.execute(select(Agent.name, Skill.name).join(AgentSkill, AgentSkill.agent_id == Agent.id)
                            .join(Skill, Skill.id == AgentSkill.skill_id)).all()
    out: dict[str, list[str]] = {}
    for agent, skill in rows:
        out.setdefault(agent, []).append(skill)
    return out


def count_callbacks(store: Store) -> int:
    with store.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(Contact).where(Contact.callback_requested.is_(True))
                            ).scalar()

