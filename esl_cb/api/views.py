"""The documents the API answers with, built from the store's rows (and what the services share)."""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from fastapi import Request

from esl_cb.app import AgentService, CallbackService
from esl_cb.app.changes import CallbackChanges, CallerIds
from esl_cb.app.tokens import TokenService
from esl_cb.db import api_queries
from esl_cb.db.api_records import ApiRecords
from esl_cb.db.store import NotFound, StaleState, Store
from esl_cb.domain.ewt import estimate_wait

from .auth import Authenticator
from .settings import ApiSettings


@dataclass
class Services:
    """What every route uses, made once per process."""

    settings: ApiSettings
    store: Store
    callbacks: CallbackService
    changes: CallbackChanges
    caller_ids: CallerIds
    agents: AgentService
    tokens: TokenService
    records: ApiRecords
    auth: Authenticator


SKILL_CACHE_SEC = 5.0           # a skill's time zone, as a booking reads it: changed rarely, read on each


class ApiCallbacks(CallbackService):
    """The bookings' service, reading a booking's place through the statement prepared once (and
    keeping the whole queue status for the answer's wait: one read, not two), and skills' time
    zones from a cache of a few seconds (a skill not in it is read at once: a new one is seen)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._read = threading.local()
        self._zones: dict[str, tuple[float, str]] = {}

    def _position(self, contact_id: int, conn=None) -> int | None:
        self._read.status = None
        try:
            status = api_queries.queue_status(self.store, contact_id, conn=conn)
        except (StaleState, NotFound):
            return None
        self._read.status = (contact_id, status)
        return status["position"]

    def status_read(self, contact_id: int) -> dict | None:
        """The queue status this thread's booking read last, if it was of `contact_id`."""
        kept = getattr(self._read, "status", None)
        return kept[1] if kept is not None and kept[0] == contact_id else None

    def _skill_tz(self, skill: str) -> str:
        kept = self._zones.get(skill)
        if kept is not None and time.monotonic() - kept[0] < SKILL_CACHE_SEC:
            return kept[1]
        tz = super()._skill_tz(skill)
        self._zones[skill] = (time.monotonic(), tz)
        return tz


def services(request: Request) -> Services:
    return request.app.state.services


def position_ewt(store: Store, contact_id: int, not_before: datetime | None = None,
                 conn=None, status: dict | None = None) -> tuple[int | None, int | None]:
    """Its place in the queue (1 = next) and the estimated seconds until an agent is offered it (at
    the earliest its not_before); (None, None) once an agent has it or it ended. `conn`: within that
    transaction; `status`: its queue status, read already."""
    if status is None:
        try:
            status = api_queries.queue_status(store, contact_id, conn=conn)
        except (StaleState, NotFound):
            return None, None
    elif "aht_sec" not in status:           # read by the booking's statement: its skill's handle time added
        status = api_queries.with_aht(store, status, conn=conn)
    if status["being_served"]:
        return 1, 0
    ewt = estimate_wait(status["position"], status["agents_staffed"], status["agents_available"], status["aht_sec"])
    if not_before is not None:
        ewt = max(ewt, int((not_before - datetime.now(timezone.utc)).total_seconds()))
    return status["position"], ewt


def _data(row) -> dict | None:
    if not row.callback_options:
        return None
    try:
        return json.loads(row.callback_options).get("data")
    except (ValueError, AttributeError):
        return None


def callback_summary(row) -> dict:
    def t(v):
        return v.replace(tzinfo=timezone.utc) if isinstance(v, datetime) and v.tzinfo is None else v
    return {"id": row.id, "state": row.state, "outcome": row.outcome, "number": row.callback_number,
            "caller_id": row.callback_caller_id, "skill": row.skill, "agent": row.agent,
            "assigned_agent": row.assigned_agent, "attempts": row.attempts,
            "priority": {"initial": row.priority_initial, "acceleration": row.priority_acceleration,
                         "max": row.priority_max},
            "delay": row.call_delay_sec, "requested_at": t(row.callback_requested_at), "queued_at": t(row.queued_at),
            "not_before": t(row.not_before), "expire_at": t(row.expire_at), "ended_at": t(row.ended_at),
            "confirmed": row.confirmed, "last_error": row.last_error, "data": _data(row)}


def callback_document(store: Store, row) -> dict:
    """One callback in full: its place and wait while it waits, its attempts with their results."""
    doc = callback_summary(row)
    position, ewt = position_ewt(store, row.id, doc["not_before"])
    doc.update(position=position, ewt_sec=ewt, attempt_results=api_queries.attempts(store, row.id),
               location=f"/api/v1/callbacks/{row.id}")
    return doc


def agent_document(agent: dict, now: datetime) -> dict:
    since = agent["state_changed_at"]
    return {"name": agent["name"], "state": agent["state"], "since": since,
            "in_state_sec": round((now - since).total_seconds(), 1) if since else None,
            "skills": agent["skills"], "contact_id": agent["contact_id"],
            # issue 20: why Refused or OnBreak, when WrapUp or a delay ends, a state asked during the call
            "reason": agent.get("state_reason"), "until": agent.get("state_until"),
            "pending_state": agent.get("pending_state"), "not_offered_because": agent.get("not_offered_because")}
