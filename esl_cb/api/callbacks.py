"""/api/v1/callbacks: book (with an Idempotency-Key, the first answer again for 24 h), read one,
list with filters a page at a time, change (priority, time, agent), cancel.

A booking goes through CallbackService.book_callback: the destination policy, the operators'
overrides, the rate limits, the duplicate merge and the audit row of a script's Callback."""
from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from typing import Any

from fastapi import APIRouter, Depends, Header, Query, Response
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from esl_cb.app import Booking, Window
from esl_cb.app.changes import UNCHANGED
from esl_cb.db import api_queries
from esl_cb.db.store import NotFound
from esl_cb.domain.errors import InvalidInput
from esl_cb.domain.numbers import InvalidNumber, normalize
from esl_cb.domain.states import ContactState

from .auth import Caller, current_caller
from .errors import Forbidden, IdempotencyKeyInUse, IdempotencyKeyReused
from .views import Services, callback_document, callback_summary, position_ewt, services

router = APIRouter(prefix="/api/v1", tags=["callbacks"])
BOOKERS = ("booking", "supervisor", "admin")


class WindowIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    start: str = Field(max_length=64, description="From when: '2026-12-01T14:30', '14:30' or '+3600', in `tz`.")
    end: str = Field(max_length=64, description="Until when (the callback expires then), written as `start`.")
    tz: str = Field("UTC", max_length=64, description="IANA time zone of start and end, e.g. Europe/Amsterdam.")


class BookingIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"number": "+13125550100", "skill": "support", "not_before": "2026-12-01T14:30",
         "data": {"ticket": "4711", "name": "Ada"}}]})
    number: str = Field(max_length=64, description="The customer's number (E.164, or national in the region).")
    skill: str = Field(max_length=64, description="The skill (queue) whose agents call back; it must exist.")
    caller_id: str | None = Field(None, max_length=64,
                                  description="What the customer sees. Default: the skill's outbound caller ID, "
                                              "else the number itself.")
    priority: float | None = Field(None, description="A fixed priority: initial and maximum, no acceleration "
                                                     "(default 0). Higher is offered first.")
    not_before: str | None = Field(None, max_length=64, description="Not before: ISO 8601 (naive: the skill's time "
                                                                    "zone), '14:30' or '+3600'.")
    window: WindowIn | None = Field(None, description="Instead of not_before: call between start and end.")
    expire_after: float | None = Field(None, description="Seconds after its time before it expires (0: never).")
    delay: int | None = Field(None, description="The agent's CallDelaySec, 0-59.")
    data: dict[str, Any] | None = Field(None, description="Shown to the agent; a JSON object of at most 4096 bytes.")


class CallbackPatch(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"priority": 50, "agent": "alice"}]})
    priority: float | None = Field(None, description="A fixed priority (supervisor, admin): initial and maximum "
                                                     "become this value and the acceleration 0, so a priority that "
                                                     "rose with the wait stops rising. Higher is offered first.")
    not_before: str | None = Field(None, max_length=64, description="A new time (null: as soon as possible).")
    agent: str | None = Field(None, max_length=64,
                              description="Offer it only to this agent of its skill (null: any agent; supervisor, "
                                          "admin).")


@router.post("/callbacks", status_code=201, summary="Book a callback",
             responses={201: {"description": "Booked: Location names it"},
                        200: {"description": "The number already waited for this skill: it joined that callback"},
                        401: {"description": "unauthenticated"}, 403: {"description": "forbidden"},
                        409: {"description": "idempotency_key_in_use"},
                        422: {"description": "invalid_input, invalid_number, unknown_skill, policy_refused, "
                                             "idempotency_key_reused"},
                        429: {"description": "rate_limited (the number's), too_many_requests (the token's)"}})
def book(body: BookingIn, caller: Caller = Depends(current_caller), svc: Services = Depends(services),
         idempotency_key: str | None = Header(None, description="Repeat a request safely: the first answer is "
                                                               "returned again for 24 hours.")) -> Response:
    caller.require(*BOOKERS)
    if idempotency_key is None:
        return _book(svc, caller, body)
    key = idempotency_key.strip()
    if not 1 <= len(key) <= 255 or not key.isascii() or not key.isprintable():
        raise InvalidInput("Idempotency-Key: 1 to 255 printable ASCII characters", where="Idempotency-Key")
    fingerprint = hashlib.sha256(json.dumps(["POST /api/v1/callbacks", body.model_dump(exclude_unset=True)],
                                            sort_keys=True, default=str).encode()).hexdigest()
    seen = svc.records.recall(caller.token.id, key, fingerprint)
    if seen.state == "new":
        try:
            return _book(svc, caller, body, (key, fingerprint))
        except IdempotencyKeyInUse:          # the same key at once: the other request's booking stands
            seen = svc.records.recall(caller.token.id, key, fingerprint)
    if seen.state == "mismatch":
        raise IdempotencyKeyReused("Idempotency-Key: this key was used with another request in the last 24 hours; "
                                   "use a new key for a new booking", where="Idempotency-Key")
    if seen.state != "replay":
        raise IdempotencyKeyInUse("Idempotency-Key: another request with this key has not finished; try again")
    headers = {"Idempotent-Replayed": "true", **({"Location": seen.location} if seen.location else {})}
    return JSONResponse(json.loads(seen.response or "null"), seen.status, headers=headers)


def _book(svc: Services, caller: Caller, body: BookingIn, keyed: tuple[str, str] | None = None) -> JSONResponse:
    """Book, tied to this token in the booking's own transaction, and with an Idempotency-Key
    (`keyed`: the key and the request's fingerprint) keep its answer in that transaction too: a
    callback is never stored that its token cannot see, nor a key's answer without its callback.
    Without a key nothing else commits with it: on PostgreSQL the booking is one statement."""
    window = Window(body.window.start, body.window.end, body.window.tz) if body.window else None
    answer: list[JSONResponse] = []

    def respond(booking: Booking, conn) -> tuple[int, dict, str]:
        if booking.position is None:
            position, ewt = None, None
        else:
            position, ewt = position_ewt(svc.store, booking.id, booking.not_before, conn=conn,
                                         status=booking.status or svc.callbacks.status_read(booking.id))
        location = f"/api/v1/callbacks/{booking.id}"
        doc = jsonable_encoder({
            "id": booking.id, "state": booking.state, "position": position, "ewt_sec": ewt,
            "merged_into": booking.merged_into, "number": booking.number, "skill": booking.skill,
            "caller_id": booking.caller_id or booking.number, "not_before": booking.not_before,
            "expire_at": booking.expire_at, "override": booking.override, "location": location})
        return 200 if booking.merged else 201, doc, location

    def then(conn, booking: Booking) -> None:
        status, doc, location = respond(booking, conn)
        svc.records.answer_key(conn, caller.token.id, keyed[0], keyed[1], status, json.dumps(doc), location)
        answer.append(JSONResponse(doc, status, headers={"Location": location}))
    # Without a caller ID the skill's (the number its customers know), read in the booking's statement.
    booking = svc.callbacks.book_callback(body.number, body.skill, body.caller_id or "", priority=body.priority,
                                          not_before=body.not_before, window=window,
                                          expire_after=body.expire_after, delay=body.delay, data=body.data,
                                          operator=caller.operator, token_id=caller.token.id, skill_caller_id=True,
                                          then=then if keyed is not None else None)
    if answer:
        return answer[-1]
    status, doc, location = respond(booking, None)
    return JSONResponse(doc, status, headers={"Location": location})


def visible(svc: Services, caller: Caller, contact_id: int):
    """The callback, if this token may see it: an overseer any, a booking token its own (another's
    is not found, so ids cannot be probed); an agent token none here (it has /agents/{name})."""
    if caller.role == "agent":
        raise Forbidden("an agent token sees its contact at /api/v1/agents/{name}")
    row = api_queries.callback_row(svc.store, contact_id, None if caller.oversees else caller.token.id)
    if row is None:
        raise NotFound(f"no callback {contact_id}" + ("" if caller.oversees else " booked with this token"))
    return row


@router.get("/callbacks/{contact_id}", summary="One callback: state, place, wait, attempts, outcome")
def read(contact_id: int, caller: Caller = Depends(current_caller), svc: Services = Depends(services)) -> dict:
    return callback_document(svc.store, visible(svc, caller, contact_id))


@router.get("/callbacks", summary="Callbacks, newest first, a page at a time")
def listing(caller: Caller = Depends(current_caller), svc: Services = Depends(services),
            state: str | None = Query(None, description="open, ended, or one state (callback_queued, dialling...)"),
            skill: str | None = Query(None, max_length=64), number: str | None = Query(None, max_length=64),
            since: str | None = Query(None, description="Requested at or after (ISO 8601; naive: UTC)"),
            until: str | None = Query(None, description="Requested before (ISO 8601; naive: UTC)"),
            limit: int = Query(50, ge=1, le=api_queries.LIST_LIMIT),
            cursor: str | None = Query(None, description="next_cursor of the page before")) -> dict:
    if caller.role == "agent":
        raise Forbidden("an agent token does not list callbacks")
    rows = api_queries.list_callbacks(
        svc.store, token_id=None if caller.oversees else caller.token.id, states=_states(state), skill=skill,
        number=_number(number, svc.settings.shared.region), since=_time(since, "since"),
        until=_time(until, "until"), before_id=_cursor(cursor), limit=limit)
    return {"items": [callback_summary(r) for r in rows],
            "next_cursor": str(rows[-1].id) if len(rows) == limit else None}


@router.patch("/callbacks/{contact_id}", summary="Change a waiting callback: priority, time, agent")
def change(contact_id: int, body: CallbackPatch, caller: Caller = Depends(current_caller),
           svc: Services = Depends(services)) -> dict:
    visible(svc, caller, contact_id)
    given = body.model_fields_set
    if not given:
        raise InvalidInput("give priority, not_before or agent", where="body")
    if not caller.oversees and given - {"not_before"}:
        raise Forbidden("a booking token may change only not_before; priority and agent take a supervisor")
    if "priority" in given and body.priority is None:
        raise InvalidInput("priority: a number (it cannot be cleared)", where="priority")
    svc.changes.change(contact_id, priority=body.priority if "priority" in given else UNCHANGED,
                       not_before=body.not_before if "not_before" in given else UNCHANGED,
                       agent=body.agent if "agent" in given else UNCHANGED, operator=caller.operator)
    return callback_document(svc.store, visible(svc, caller, contact_id))


@router.delete("/callbacks/{contact_id}", summary="Cancel a callback (409 once its customer is being dialled)")
def cancel(contact_id: int, caller: Caller = Depends(current_caller), svc: Services = Depends(services),
           reason: str = Query("cancelled through the API", max_length=500)) -> dict:
    visible(svc, caller, contact_id)
    done = svc.callbacks.cancel_callback(contact_id, reason, operator=caller.operator)
    return {"id": done.id, "state": "ended", "outcome": "cancelled", "was": done.was}


def _states(state: str | None) -> tuple[str, ...]:
    if not state:
        return ()
    if state == "open":
        return api_queries.OPEN
    try:
        return (ContactState(state).value,)
    except ValueError:
        raise InvalidInput(f"state: {state!r} is not open, ended or one of "
                           f"{', '.join(s.value for s in ContactState)}", where="state") from None


def _number(number: str | None, region: str) -> str | None:
    if not number:
        return None
    try:
        return normalize(number, region)
    except InvalidNumber as e:
        raise InvalidNumber(f"number: {e}", where="number") from None


def _time(value: str | None, where: str) -> datetime | None:
    if not value:
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"{where}: {value!r} is not an ISO 8601 time (e.g. 2026-12-01T14:30:00Z)",
                           where=where) from None
    return at if at.tzinfo else at.replace(tzinfo=timezone.utc)


def _cursor(cursor: str | None) -> int | None:
    if not cursor:
        return None
    if not cursor.isdigit():
        raise InvalidInput(f"cursor: {cursor!r} is not a next_cursor this API gave", where="cursor")
    return int(cursor)
