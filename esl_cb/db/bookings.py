"""Callbacks booked by an operator or a program (no call came in: `esl-cb callback schedule`, the HTTP
API): the same rules as a script's Callback (contacts.py), in one transaction; on PostgreSQL in one
statement (esl_cb_book, migration 0017)."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Callable

from sqlalchemy import Connection, func, insert, select, text, update

from esl_cb.domain.policy import RateLimits
from esl_cb.domain.queue import Priority
from esl_cb.domain.states import ContactState as C

from .base import RateLimited, UnknownSkill, as_utc, utcnow
from .contacts import ContactsStore, limit_error
from .models import ApiBooking, Contact

log = logging.getLogger(__name__)

_SKILL = text("SELECT id, callback_expire_sec, outbound_caller_id FROM skills WHERE name = :skill")
# A booking in one round trip (migration 0017): the statements of the Python path below, in order,
# and the new callback's place; named arguments, so the call reads as its signature. The locks are
# the Python path's, in its order (the limits', then the number's and skill's): no deadlock with a
# script's Callback (contacts.py).
_PG_BOOK = text("""
SELECT * FROM esl_cb_book(p_number => :number, p_skill => :skill, p_now => :now, p_at => :at,
    p_caller_id => :caller_id, p_delay => :delay, p_pi => :pi, p_pa => :pa, p_pm => :pm,
    p_expire_after => :expire_after, p_expire_at => :expire_at, p_override => :override, p_data => :data,
    p_options => :options, p_limits => :limits, p_per_number => :per_number, p_per_caller => :per_caller,
    p_operator => :operator, p_new_detail => :detail, p_token => :token, p_skill_caller_id => :skill_caller_id)
""")


@dataclass(frozen=True)
class Scheduled:
    """A booked callback as stored: a new contact, or the open one it joined (`merged_into`)."""

    contact_id: int
    state: str
    not_before: datetime | None
    expire_at: datetime | None
    merged_into: int | None = None
    caller_id: str | None = None     # the caller ID it was given (given, or the skill's); None: the number
    placed: bool = False             # `status` was read in the booking's transaction (PostgreSQL)
    status: dict | None = None       # then: its place (position, being_served, agents_staffed,
    #                                  agents_available, state, skill_id); None: not in a queue


class BookingsStore(ContactsStore):
    """Bookings: a new callback, or the open one of the number and skill joined."""

    def schedule_callback(self, number: str, skill: str, at: datetime | None, caller_id: str | None,
                          delay: int | None = None, priority: Priority | None = None,
                          expire_after: float | None = None, operator: str | None = None, *,
                          limits: RateLimits | None = None, override: bool = False, expire_at: datetime | None = None,
                          data: dict | None = None, token_id: int | None = None, skill_caller_id: bool = False,
                          then: Callable[[Connection, Scheduled], None] | None = None) -> Scheduled:
        """A callback booked by an operator or a program (no call came in): offered to an agent from
        `at` (None: now), within the skill's hours, ahead of contacts queued after it at the same
        priority. In one transaction, as a script's Callback: at most one open callback per number
        and skill: a booking for a number that already waits joins that callback (the earlier place,
        the higher priority, the caller ID, delay and data given now; its time and expiry stay) and
        no contact is created; otherwise the rate limits (`limits`; RateLimited is raised and
        recorded in policy_refusals; a join makes no call, so it is never refused by them), then the
        new contact; the audit row; the controllers' NOTIFY, delivered at the commit.

        `caller_id`, `delay`, `priority` None: not given (a new callback shows the number itself, no
        delay, priority 0). Expiry: `expire_at`, else `expire_after` seconds after `at`, else the
        skill's default. `override`: the destination policy allowed it only by an operator's override
        (the dial-time check honours it). UnknownSkill when `skill` does not exist. `then`: more
        work for this transaction, once the callback is stored (the HTTP API keeps its
        Idempotency-Key's answer there): all of it commits, or none. `token_id`: the API token
        that booked it, tied to it in this transaction (api_bookings; on PostgreSQL with its event).
        `skill_caller_id`: without a `caller_id`, the skill's outbound caller ID, read with the skill.

        On PostgreSQL all of it, and the callback's place (`Scheduled.status`), is one statement
        (esl_cb_book, migration 0017): in a transaction of its own without `then`."""
        now = utcnow()
        # In UTC: SQLite keeps a datetime's wall time and drops its zone.
        at, expire_at = (t.astimezone(timezone.utc) if t is not None else None for t in (at, expire_at))
        try:
            if self._pg:
                done, detail = self._book_pg(number, skill, now, at, caller_id, delay, priority, expire_after,
                                             expire_at, override, data, limits, operator, token_id,
                                             skill_caller_id, then)
                log.info("contact %s: callback to %s booked (%s)", done.contact_id, number, detail)
                return done
            with self.engine.begin() as conn:       # SQLite: one writer at a time, the statements in turn
                row = conn.execute(_SKILL, {"skill": skill}).first()
                if row is None:
                    raise UnknownSkill(f"no skill named {skill!r} (esl-cb skill add {skill})", where="skill")
                if not caller_id and skill_caller_id:
                    caller_id = row.outbound_caller_id or None
                if limits is not None:
                    self._lock_limits(conn, number, number)
                other = self._open_callback(conn, number, row.id)
                if other is not None:       # makes no call: not counted, never refused by the limits
                    done = self._join_booking(conn, other, at or now, caller_id, delay, priority, data)
                    detail = f"{number} on {skill}: joined the open callback of contact {other.id}"
                else:
                    if limits is not None:
                        self._within_limits(conn, number, number, limits, now, locked=True)
                    done = self._insert_booking(conn, number, row, now, at, caller_id, delay, priority,
                                                expire_after, expire_at, override, data)
                    detail = f"{number} on {skill} at {(at or now).isoformat()}"
                done = replace(done, caller_id=caller_id or None)
                self._audit(conn, operator, "callback schedule", f"contact {done.contact_id}", detail)
                self._notify(conn, f"schedule {done.contact_id}")
                if token_id is not None and conn.execute(select(ApiBooking.contact_id).where(
                        ApiBooking.contact_id == done.contact_id, ApiBooking.token_id == token_id)).first() is None:
                    conn.execute(insert(ApiBooking).values(contact_id=done.contact_id, token_id=token_id,
                                                           booked_at=now))
                if then is not None:
                    then(conn, done)
        except RateLimited as e:
            self.record_refusal(None, number, e.calling_number, "request", e.rule, str(e))
            raise
        log.info("contact %s: callback to %s booked (%s)", done.contact_id, number, detail)
        return done

    def _book_pg(self, number: str, skill: str, now: datetime, at: datetime | None, caller_id: str | None,
                 delay: int | None, priority: Priority | None, expire_after: float | None,
                 expire_at: datetime | None, override: bool, data: dict | None, limits: RateLimits | None,
                 operator: str | None, token_id: int | None, skill_caller_id: bool,
                 then: Callable[[Connection, Scheduled], None] | None) -> tuple[Scheduled, str]:
        """schedule_callback on PostgreSQL: esl_cb_book, then `then` in its transaction."""
        detail = f"{number} on {skill} at {(at or now).isoformat()}"
        params = {"number": number, "skill": skill, "now": now, "at": at, "caller_id": caller_id or None,
                  "delay": delay, "pi": priority.initial if priority else None,
                  "pa": priority.acceleration if priority else None, "pm": priority.maximum if priority else None,
                  "expire_after": expire_after, "expire_at": expire_at, "override": override,
                  "data": json.dumps(data) if data is not None else None,
                  "options": json.dumps({"data": data}) if data is not None else None,
                  "limits": limits is not None, "per_number": limits.per_number_per_day if limits else 0,
                  "per_caller": limits.per_caller_per_hour if limits else 0, "operator": operator or None,
                  "detail": detail, "token": token_id, "skill_caller_id": skill_caller_id}
        if then is None:           # one statement, its own transaction: one round trip
            with self._autocommit.connect() as conn:
                done = self._booked(conn.execute(_PG_BOOK, params).one(), number, skill, limits)
        else:
            with self.engine.begin() as conn:
                done = self._booked(conn.execute(_PG_BOOK, params).one(), number, skill, limits)
                then(conn, done)
        if done.merged_into is not None:
            detail = f"{number} on {skill}: joined the open callback of contact {done.contact_id}"
        return done, detail

    @staticmethod
    def _booked(row, number: str, skill: str, limits: RateLimits | None) -> Scheduled:
        """esl_cb_book's row as Scheduled, or its refusal as the error the Python path raises."""
        if row.outcome == "unknown_skill":
            raise UnknownSkill(f"no skill named {skill!r} (esl-cb skill add {skill})", where="skill")
        if row.outcome in ("per_number", "per_caller"):
            raise limit_error(row.outcome, int(row.n), number, number, limits)
        status = None
        if row.waiting or row.served:
            status = {"position": 1 if row.served else int(row.ahead) + 1, "being_served": bool(row.served),
                      "agents_staffed": int(row.staffed), "agents_available": int(row.available),
                      "state": row.state, "skill_id": row.skill_id}
        return Scheduled(row.contact_id, row.state, row.not_before, row.expire_at,
                         row.contact_id if row.outcome == "joined" else None, row.shown, True, status)

    @staticmethod
    def _open_callback(conn, number: str, skill_id: int, locked: bool = False):
        """The open callback of `number` for the skill, if any, locked: two requests for one number
        and skill are taken one after the other (the same advisory lock as `_request_callback`'s),
        so two cannot both miss each other. `locked`: that lock is held already."""
        if conn.dialect.name == "postgresql" and not locked:
            conn.execute(select(func.pg_advisory_xact_lock(func.hashtext(f"{number}/{skill_id}"))))
        return conn.execute(select(Contact.__table__).where(
            Contact.callback_number == number, Contact.skill_id == skill_id, Contact.callback_requested.is_(True),
            Contact.state != C.ENDED.value).order_by(Contact.queued_at).limit(1).with_for_update()).first()

    def _join_booking(self, conn, other, queued_at: datetime, caller_id: str | None, delay: int | None,
                      priority: Priority | None, data: dict | None) -> Scheduled:
        values: dict = {"queued_at": min(as_utc(other.queued_at) or queued_at, queued_at)}
        if caller_id:
            values["callback_caller_id"] = caller_id
        if delay is not None:
            values["call_delay_sec"] = delay
        if priority is not None:
            values.update(priority_initial=max(other.priority_initial, priority.initial),
                          priority_acceleration=max(other.priority_acceleration, priority.acceleration),
                          priority_max=max(other.priority_max, priority.maximum))
        if data is not None:
            options = json.loads(other.callback_options) if other.callback_options else {}
            values["callback_options"] = json.dumps({**options, "data": data})
        conn.execute(update(Contact).where(Contact.id == other.id).values(**values))
        return Scheduled(other.id, other.state, as_utc(other.not_before), as_utc(other.expire_at), other.id)

    def _insert_booking(self, conn, number: str, skill, now: datetime, at: datetime | None, caller_id: str | None,
                        delay: int | None, priority: Priority | None, expire_after: float | None,
                        expire_at: datetime | None, override: bool, data: dict | None) -> Scheduled:
        p = priority or Priority(0, 0, 0)
        shown = caller_id or number
        if expire_at is None:
            expire = expire_after if expire_after is not None else skill.callback_expire_sec
            expire_at = (at or now) + timedelta(seconds=float(expire)) if expire else None
        cid = conn.execute(insert(Contact).values(
            direction="inbound", state=C.CALLBACK_QUEUED.value, script="(scheduled)", skill_id=skill.id,
            original_ani=number, original_dnis=shown, ani=shown, dnis=number,
            priority_initial=p.initial, priority_acceleration=p.acceleration, priority_max=p.maximum,
            callback_requested=True, callback_number=number, callback_caller_id=shown, call_delay_sec=delay or 0,
            callback_requested_at=now, attempts=0, arrived_at=now, queued_at=at or now, not_before=at,
            expire_at=expire_at, controller_id=None, policy_override=override,
            callback_options=json.dumps({"data": data}) if data is not None else None).returning(Contact.id)).scalar()
        return Scheduled(cid, C.CALLBACK_QUEUED.value, at, expire_at)
