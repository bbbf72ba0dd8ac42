"""Read-only views for operators: live status, callback listings, reports (portable SQL)."""
from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import select, text

from esl_cb.domain.queue import Priority

from .models import Agent, CallbackAttempt, Contact, Skill
from .store import Store, as_utc

OPEN_CALLBACK_STATES = ("callback_queued", "offered", "accepted", "dialling", "connected")


def _dt(value) -> datetime | None:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return as_utc(value)


def status(store: Store, port_limit: int) -> dict:
    now = datetime.now(timezone.utc)
    with store.engine.connect() as conn:
        rows = conn.execute(select(Contact.__table__, Skill.name.label("skill")).outerjoin(
            Skill, Skill.id == Contact.skill_id).where(Contact.state != "ended").order_by(Contact.id)).all()
        open_skills = dict(conn.execute(select(Skill.name, Skill.callbacks_open)).all())
    queues: dict[str, list[dict]] = {}
    callbacks = []
    ports = 0
    for r in rows:
        if r.state in ("queued", "callback_queued"):
            queued_at = _dt(r.queued_at)
            prio = Priority(r.priority_initial, r.priority_acceleration, r.priority_max)
            queues.setdefault(r.skill or "-", []).append({
                "contact_id": r.id, "kind": "callback" if r.callback_requested else "live",
                "effective_priority": round(prio.effective(queued_at, now), 2),
                "waiting_s": round((now - queued_at).total_seconds(), 1), "attempts": r.attempts})
        if r.callback_requested:
            due = _dt(r.dial_due_at)
            callbacks.append({"contact_id": r.id, "number": r.callback_number, "state": r.state,
                              "attempts": r.attempts, "dial_in_s": round(max((due - now).total_seconds(), 0), 1)
                              if due and r.state == "accepted" else None,
                              "not_before": _dt(r.not_before), "expire_at": _dt(r.expire_at),
                              "skill_open": open_skills.get(r.skill, True), "confirmed": r.confirmed})
            if r.state in ("dialling", "connected"):
                ports += 1
    for q in queues.values():
        q.sort(key=lambda c: (-c["effective_priority"], -c["waiting_s"]))
    return {"time": now.isoformat(), "queues": queues, "agents": store.agents(), "callbacks": callbacks,
            "ports": {"in_use": ports, "limit": port_limit}, "switches": store.switches()}


def callbacks(store: Store, include_ended: bool = False) -> list[dict]:
    with store.engine.connect() as conn:
        q = select(Contact.__table__, Skill.name.label("skill"), Agent.name.label("agent")).outerjoin(
            Skill, Skill.id == Contact.skill_id).outerjoin(Agent, Agent.id == Contact.agent_id).where(
            Contact.callback_requested.is_(True))
        if not include_ended:
            q = q.where(Contact.state != "ended")
        rows = conn.execute(q.order_by(Contact.id)).all()
    return [{"contact_id": r.id, "skill": r.skill, "number": r.callback_number, "caller_id": r.callback_caller_id,
             "state": r.state, "outcome": r.outcome, "attempts": r.attempts, "agent": r.agent,
             "queued_at": _dt(r.queued_at), "callback_requested_at": _dt(r.callback_requested_at),
             "not_before": _dt(r.not_before), "expire_at": _dt(r.expire_at), "confirmed": r.confirmed} for r in rows]


def contact_detail(store: Store, contact_id: int) -> dict:
    c = store.contact(contact_id)
    with store.engine.connect() as conn:
        attempts = conn.execute(select(CallbackAttempt.__table__).where(
            CallbackAttempt.contact_id == contact_id).order_by(CallbackAttempt.attempt_no)).all()
        legs = conn.execute(text("SELECT uuid, kind, direction, from_number, to_number, started_at, ended_at, "
                                 "billable_seconds, hangup_cause FROM billing_legs WHERE contact_id = :c "
                                 "ORDER BY started_at"), {"c": contact_id}).mappings().all()
    out = {k: (_dt(v) if k.endswith("_at") else v) for k, v in c._mapping.items()}
    out["attempt_rows"] = [dict(a._mapping) for a in attempts]
    out["legs"] = [dict(leg) for leg in legs]
    return out


def report(store: Store, since: datetime | None, until: datetime | None) -> dict:
    where, params = ["1=1"], {}
    if since:
        where.append("arrived_at >= :since")
        params["since"] = since
    if until:
        where.append("arrived_at < :until")
        params["until"] = until
    cond = " AND ".join(where)
    with store.engine.connect() as conn:
        outcomes = {r.outcome or "open": r.n for r in conn.execute(text(
            f"SELECT outcome, count(*) AS n FROM reporting_contacts WHERE {cond} GROUP BY outcome"), params)}
        total = sum(outcomes.values())
        cb = conn.execute(text(f"SELECT count(*) FROM reporting_contacts WHERE {cond} AND callback_requested"),
                          params).scalar()
        waits = conn.execute(text(f"SELECT arrived_at, connected_at FROM reporting_contacts WHERE {cond} "
                                  "AND connected_at IS NOT NULL"), params).all()
        lw = cond.replace("arrived_at", "started_at")
        billed = conn.execute(text(f"SELECT COALESCE(sum(billable_seconds), 0) FROM billing_legs WHERE {lw} "
                                   "AND direction = 'outbound'"), params).scalar()
    wait_values = [(_dt(c) - _dt(a)).total_seconds() for a, c in waits]
    return {"contacts": total, "outcomes": outcomes,
            "callback_rate": round(cb / total, 4) if total else 0.0,
            "average_wait_to_answer_s": round(sum(wait_values) / len(wait_values), 1) if wait_values else None,
            "billed_outbound_seconds": int(billed or 0)}
