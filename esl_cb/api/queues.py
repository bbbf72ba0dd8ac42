"""/api/v1/queues, /api/v1/agents and /api/v1/reports: what the supervisor's wall screen, the agent's
page and the reports page show."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from esl_cb.db import api_queries, queries
from esl_cb.db.store import NotFound
from esl_cb.domain.errors import InvalidInput
from esl_cb.domain.ewt import estimate_wait

from .auth import Caller, current_caller
from .errors import Forbidden
from .views import Services, agent_document, services

router = APIRouter(prefix="/api/v1")
STAFFED = ("Available", "Offered", "OnCall", "WrapUp")      # as db/queue_status.py: at work


@router.get("/me", tags=["tokens"], summary="The token of the request: its name, role and agent")
def me(caller: Caller = Depends(current_caller)) -> dict:
    return {"name": caller.token.name, "role": caller.role, "agent": caller.token.agent}


@router.get("/queues", tags=["queues"], summary="Per skill: waiting callers and callbacks, EWT, agents by state")
def queues(caller: Caller = Depends(current_caller), svc: Services = Depends(services),
           detail: bool = Query(False, description="Also the open contacts as rows, a page at a time (supervisor, "
                                                   "admin): those an agent has, then the waiting ones by place"),
           skill: str | None = Query(None, max_length=64, description="Only this skill"),
           limit: int = Query(100, ge=1, le=api_queries.BOARD_LIMIT,
                              description="With detail: waiting rows per skill in this page"),
           cursor: str | None = Query(None, description="With detail and skill: the skill's next_cursor of the page "
                                                        "before (the rows after that place)")) -> dict:
    if detail and not caller.oversees:
        raise Forbidden("the rows of a queue (detail=true) take a supervisor or admin token")
    after = _place(cursor)
    if after and not skill:
        raise InvalidInput("cursor: give the skill it belongs to (skill=...)", where="cursor")
    now = datetime.now(timezone.utc)
    # The counts are always whole (counted in the database); only the rows come a page at a time.
    counted = api_queries.queue_counts(svc.store, now)
    if skill is not None:
        if skill not in counted:
            raise NotFound(f"no skill named {skill!r}", where="skill")
        counted = {skill: counted[skill]}
    pages = api_queries.board_rows(svc.store, now, [q["id"] for q in counted.values()], limit, after) \
        if detail else {}
    out = []
    for name, q in counted.items():
        staffed = sum(q["agents"].get(s, 0) for s in STAFFED)
        waiting = q["waiting_callers"] + q["waiting_callbacks"]
        doc = {"skill": name, "open": q["open"], "outbound_caller_id": q["outbound_caller_id"],
               "waiting_callers": q["waiting_callers"], "waiting_callbacks": q["waiting_callbacks"],
               "being_served": q["being_served"], "agents": q["agents"], "agents_available": q["agents_available"],
               "ewt_sec": estimate_wait(waiting + 1, staffed, q["agents_available"], q["aht_sec"]),
               "aht_sec": q["aht_sec"]}
        if detail:
            rows, more = pages[q["id"]]
            places = [r["place"] for r in rows if r["place"] is not None]
            doc["contacts"] = rows
            doc["next_cursor"] = str(places[-1]) if more and places else None
        out.append(doc)
    return {"time": now, "queues": out}


def _place(cursor: str | None) -> int:
    if not cursor:
        return 0
    if not cursor.isdigit():
        raise InvalidInput(f"cursor: {cursor!r} is not a next_cursor this API gave", where="cursor")
    return int(cursor)


@router.get("/agents", tags=["agents"], summary="Agents with state and time in it (an agent token: its own)")
def agents(caller: Caller = Depends(current_caller), svc: Services = Depends(services)) -> dict:
    if not caller.oversees and caller.role != "agent":
        raise Forbidden("a booking token does not see agents")
    now = datetime.now(timezone.utc)
    rows = [a for a in svc.store.agents() if caller.oversees or a["name"] == caller.token.agent]
    return {"time": now, "agents": [agent_document(a, now) for a in rows]}


@router.get("/agents/{name}", tags=["agents"], summary="One agent, the contact offered or connected, its history")
def agent(name: str, caller: Caller = Depends(current_caller), svc: Services = Depends(services)) -> dict:
    caller.require_agent(name)
    now = datetime.now(timezone.utc)
    found = [a for a in svc.store.agents() if a["name"] == name]
    if not found:
        raise NotFound(f"no agent named {name!r}")
    doc = agent_document(found[0], now)
    doc["time"] = now
    doc["contact"] = _contact(svc, found[0]["contact_id"]) if found[0]["contact_id"] else None
    return doc


def _contact(svc: Services, contact_id: int) -> dict | None:
    from .views import callback_summary
    try:
        c = svc.store.contact(contact_id)
    except NotFound:
        return None
    row = api_queries.callback_row(svc.store, contact_id)
    number = c.callback_number or c.original_ani
    doc = callback_summary(row) if row is not None else {"id": c.id, "state": c.state, "number": number, "data": None}
    doc.update(kind="callback" if c.callback_requested else "live", number=number,
               history=api_queries.number_history(svc.store, number, c.id) if number else [])
    return doc


class AgentStateIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"state": "break", "reason": "lunch"}]})
    state: Literal["login", "available", "unavailable", "break", "logout", "end_wrap_up"] = Field(
        description="login (then unavailable), available (also ends a break, a delay or wrap-up), unavailable, "
                    "break (OnBreak, with a reason), logout, end_wrap_up. A logout, break or unavailable asked "
                    "during a call (Offered, OnCall, WrapUp) takes effect when it ends (when_call_ends).")
    reason: str | None = Field(None, max_length=200, description="Why (a break's reason, its first 64 characters "
                                                                 "kept on the agent), for the audit log.")


@router.put("/agents/{name}/state", tags=["agents"], summary="Log in, available, a break, end wrap-up, log out")
def set_state(name: str, body: AgentStateIn, caller: Caller = Depends(current_caller),
              svc: Services = Depends(services)) -> dict:
    caller.require_agent(name)
    done = svc.agents.set_agent_state(name, body.state, operator=caller.operator, reason=body.reason)
    if body.reason:
        svc.store.audit(caller.operator, "agent break" if body.state == "break" else "agent state reason", name,
                        body.reason.strip())
    return {"name": done.name, "before": done.before, "after": done.after, "reason": body.reason,
            "when_call_ends": done.when_call_ends}


@router.get("/reports/today", tags=["reports"], summary="Today's outcomes, callback rate and waits by hour")
def today(caller: Caller = Depends(current_caller), svc: Services = Depends(services),
          tz: str = Query("UTC", max_length=64, description="IANA time zone the day and its hours are in")) -> dict:
    caller.require("supervisor", "admin")
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(f"tz: {tz!r} is not an IANA time zone (e.g. Europe/Amsterdam)", where="tz") from None
    since, until = api_queries.day_bounds(tz)
    doc = queries.report(svc.store, since, until)
    doc.update(tz=tz, since=since, until=until, waits_by_hour=api_queries.waits_by_hour(svc.store, since, until, tz))
    return doc
