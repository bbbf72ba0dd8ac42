"""Booking and cancelling callbacks, and the operators' exceptions to the destination policy.

A booked callback (`esl-cb callback schedule`, the HTTP API) gets what a script's Callback gets:
the number normalised with the region, the destination policy and the operators' overrides, the
rate limits and the duplicate merge (one open callback per number and skill), an audit row and
the NOTIFY that wakes the controllers; the last three in the store's one transaction
(Store.schedule_callback). Every refusal is a domain error with its stable code.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import Connection

from esl_cb.db.bookings import Scheduled
from esl_cb.db.store import NotFound, PolicyRefused, StaleState, Store, StoreError, UnknownSkill, utcnow
from esl_cb.domain.errors import InvalidInput
from esl_cb.domain.hours import parse_when
from esl_cb.domain.numbers import InvalidNumber, normalize
from esl_cb.domain.policy import DestinationPolicy
from esl_cb.domain.queue import Priority

from .database import database_errors

log = logging.getLogger(__name__)
MAX_DATA_BYTES = 4096          # the free-form data shown to the agent, as JSON
MAX_DELAY_SEC = 59             # CallDelaySec's range (SPEC 2)
MAX_REASON = 500


@dataclass(frozen=True)
class Window:
    """Call me between `start` and `end`: naive times and written ones ('2026-12-01T14:30', '14:30',
    '+3600') are read in `tz` (IANA). The callback is offered from `start` and expires at `end`."""

    start: datetime | str
    end: datetime | str
    tz: str = "UTC"


@dataclass(frozen=True)
class Booking:
    """What a booking became. `id` is the callback to follow (show, cancel): a new one, or, when the
    number already waited for this skill, that open callback (`merged_into` == `id`, which kept its
    earlier place; no contact was created)."""

    id: int
    state: str
    number: str                      # E.164
    skill: str
    not_before: datetime | None      # offered from then (None: now)
    expire_at: datetime | None
    merged_into: int | None = None
    position: int | None = None      # 1 = next in its skill's queue; None when not waiting any more
    override: bool = False           # allowed only by an operator's override of the policy
    status: dict | None = None       # its place as the booking read it (PostgreSQL): position, agents...
    caller_id: str | None = None     # what the customer will see: given, or the skill's; None: the number

    @property
    def merged(self) -> bool:
        return self.merged_into is not None


@dataclass(frozen=True)
class Cancelled:
    id: int
    was: str                         # the state it was cancelled in


class CallbackService:
    """Bookings, cancels and overrides, for the CLI and the HTTP API. `policy` None: the defaults
    for `region` (what `run` uses without settings)."""

    def __init__(self, store: Store, policy: DestinationPolicy | None = None, region: str = "US") -> None:
        self.store = store
        self.region = region
        self.policy = policy or DestinationPolicy(allowed_countries=frozenset({region.upper()}))

    @database_errors
    def book_callback(self, number: str, skill: str, caller_id: str = "", *, priority: float | None = None,
                      not_before: datetime | str | None = None, window: Window | None = None,
                      expire_after: float | None = None, delay: int | None = None, data: dict | None = None,
                      operator: str | None = None, token_id: int | None = None, skill_caller_id: bool = False,
                      then: Callable[[Connection, Booking], None] | None = None) -> Booking:
        """Book a callback of `number` by an agent of `skill`.

        `caller_id`: what the customer sees (default: the number itself). `not_before`: an aware
        datetime, a naive one or a written time ('2026-12-01T14:30', '14:30', '+3600') in the
        skill's time zone; or `window` instead. `expire_after`: seconds after its time (0: never;
        default: the skill's). `delay`: the agent's CallDelaySec (0-59). `data`: a JSON object
        of at most MAX_DATA_BYTES, kept with the callback for the agent. `priority`: initial and
        maximum (default 0).

        Raises InvalidNumber, InvalidInput (with `where` naming the field), UnknownSkill,
        PolicyRefused (recorded in policy_refusals), RateLimited.

        `then(conn, booking)`: more work for the booking's own transaction (the HTTP API keeps its
        Idempotency-Key's answer there): the callback, its audit
        row and that work commit together, or nothing is stored. The booking's place is read in that
        transaction too (without `then` on SQLite: just after it). `token_id`: the API token that
        booked it, tied to it in the same transaction. `skill_caller_id`: without a `caller_id`, the
        skill's outbound caller ID (esl-cb skill caller-id), read in the booking's own statement."""
        e164 = _number(number, self.region, "number")
        shown = _number(caller_id, self.region, "caller_id") if caller_id else None
        _check_priority(priority)
        _check_delay(delay)
        stored_data = _check_data(data)
        if expire_after is not None and not (math.isfinite(expire_after) and expire_after >= 0):
            raise InvalidInput(f"expire_after: {expire_after!r} is not a number of seconds (0: never)",
                               where="expire_after")
        tz = self._skill_tz(skill)
        now = utcnow()
        at, expire_at = _when(not_before, window, expire_after, tz, now)
        override = self._check_policy(e164)
        made: list[Booking] = []

        def booking(done: Scheduled, conn: Connection | None) -> Booking:
            # PostgreSQL read the place in the booking's own statement; SQLite reads it here.
            position = (done.status["position"] if done.status else None) if done.placed \
                else self._position(done.contact_id, conn)
            return Booking(done.contact_id, done.state, e164, skill, done.not_before, done.expire_at,
                           done.merged_into, position, override, done.status, done.caller_id)

        def within(conn: Connection, done: Scheduled) -> None:
            made.append(booking(done, conn))
            then(conn, made[-1])
        # Without `then`, nothing else waits on the transaction: PostgreSQL books in one round trip.
        done = self.store.schedule_callback(
            e164, skill, at, shown, delay, None if priority is None else Priority(priority, 0, priority),
            expire_after, operator, limits=self.policy.limits, override=override, expire_at=expire_at,
            data=stored_data, token_id=token_id, skill_caller_id=skill_caller_id,
            then=within if then is not None else None)
        return made[-1] if made else booking(done, None)

    @database_errors
    def cancel_callback(self, contact_id: int, reason: str = "cancelled by operator",
                        operator: str | None = None) -> Cancelled:
        """Cancel a waiting callback (or live contact). NotFound; StaleState (wrong_state) once an
        agent has it, it is being dialled or in conversation, or it already ended."""
        reason = (reason or "").strip()
        if not reason or len(reason) > MAX_REASON:
            raise InvalidInput(f"reason: say why in 1 to {MAX_REASON} characters", where="reason")
        try:
            was = self.store.cancel(contact_id, reason, operator=operator)
        except (NotFound, StaleState):
            raise
        except StoreError as e:          # every other refusal of cancel() is about the contact's state
            raise StaleState(str(e)) from e
        self.store.notify(f"cancel {contact_id}")
        return Cancelled(contact_id, was)

    @database_errors
    def allow_number(self, number: str, reason: str, until: datetime | None, operator: str) -> str:
        """An operator lets one number the policy refuses be called back (audited; the rate limits
        still apply), until `until` (None: until removed). Returns the number as E.164."""
        e164 = _number(number, self.region, "number")
        if not (reason or "").strip():
            raise InvalidInput("reason: an override needs a reason (it goes into the audit log)", where="reason")
        self.store.add_override(e164, operator, reason.strip(), until)
        return e164

    @database_errors
    def remove_override(self, number: str, operator: str) -> str:
        e164 = _number(number, self.region, "number")
        try:
            self.store.remove_override(e164, operator)
        except StoreError as e:          # the one refusal: there is none
            raise NotFound(str(e), where="number") from e
        return e164

    def _skill_tz(self, skill: str) -> str:
        for _, name, hours, _ in self.store.skill_calendars():
            if name == skill:
                return hours.tz
        raise UnknownSkill(f"no skill named {skill!r} (esl-cb skill add {skill})", where="skill")

    def _check_policy(self, number: str) -> bool:
        """True when only an operator's override lets `number` through; PolicyRefused when nothing does."""
        verdict = self.policy.check(number)
        if verdict.allowed:
            return False
        if self.store.overridden(number):
            log.warning("booking for %s: refused by the policy (%s) but an operator allowed it", number,
                        verdict.reason)
            return True
        self.store.record_refusal(None, number, "", "request", verdict.rule, verdict.reason)
        log.warning("booking for %s refused by the destination policy (%s): %s", number, verdict.rule, verdict.reason)
        raise PolicyRefused(f"{number} may not be called back: {verdict.reason}", verdict.rule, where="number")

    def _position(self, contact_id: int, conn: Connection | None = None) -> int | None:
        try:
            return self.store.queue_status(contact_id, conn=conn)["position"]
        except (StaleState, NotFound):    # an agent has it already, or it ended meanwhile
            return None


def _number(raw: str, region: str, where: str) -> str:
    try:
        return normalize(raw, region)
    except InvalidNumber as e:
        raise InvalidNumber(f"{where}: {e}", where=where) from None


def _check_priority(priority: float | None) -> None:
    if priority is not None and (isinstance(priority, bool) or not isinstance(priority, (int, float))
                                 or not math.isfinite(priority)):
        raise InvalidInput(f"priority: {priority!r} is not a number", where="priority")


def _check_delay(delay: int | None) -> None:
    if delay is not None and (isinstance(delay, bool) or not isinstance(delay, int)
                              or not 0 <= delay <= MAX_DELAY_SEC):
        raise InvalidInput(f"delay: the agent's CallDelaySec must be a whole number from 0 to {MAX_DELAY_SEC}, "
                           f"not {delay!r}", where="delay")


def _check_data(data: Any) -> dict | None:
    if data is None:
        return None
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise InvalidInput("data: must be an object (a mapping of names to values)", where="data")
    try:
        size = len(json.dumps(data, ensure_ascii=False, allow_nan=False).encode())
    except (TypeError, ValueError) as e:
        raise InvalidInput(f"data: cannot be stored as JSON ({e})", where="data") from None
    if size > MAX_DATA_BYTES:
        raise InvalidInput(f"data: {size} bytes as JSON, at most {MAX_DATA_BYTES}", where="data")
    return data


def _when(not_before: datetime | str | None, window: Window | None, expire_after: float | None, tz: str,
          now: datetime) -> tuple[datetime | None, datetime | None]:
    """(not before, expire at) in UTC; the expiry None unless a window ends it (the store applies
    expire_after and the skill's default)."""
    if window is None:
        return (_time(not_before, tz, now, "not_before") if not_before not in (None, "") else None), None
    if not_before not in (None, ""):
        raise InvalidInput("not_before and window: give one of them", where="window")
    if expire_after is not None:
        raise InvalidInput("expire_after and window: the window's end is the expiry; give one of them",
                           where="expire_after")
    try:
        ZoneInfo(window.tz or "")
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(f"window.tz: {window.tz!r} is not an IANA time zone (e.g. Europe/Amsterdam)",
                           where="window.tz") from None
    start = _time(window.start, window.tz, now, "window.start")
    end = _time(window.end, window.tz, now, "window.end")
    if end <= start:
        raise InvalidInput(f"window.end ({end.isoformat()}) must be after window.start ({start.isoformat()})",
                           where="window.end")
    if end <= now:
        raise InvalidInput(f"window.end ({end.isoformat()}) has passed", where="window.end")
    return start, end


def _time(value: datetime | str, tz: str, now: datetime, where: str) -> datetime:
    if isinstance(value, datetime):
        at = value if value.tzinfo else value.replace(tzinfo=ZoneInfo(tz))
    else:
        try:
            at = parse_when(str(value), now, tz)
        except ValueError as e:
            raise InvalidInput(f"{where}: {e}", where=where) from None
    if at > now + timedelta(days=366):
        raise InvalidInput(f"{where}: {at.isoformat()} is more than a year ahead", where=where)
    return at
