"""Contacts from arrival to the queue: a caller arrives, is queued for a skill, asks for a callback
(durably, before being hung up), or ends; operators cancel."""
from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta
from typing import Iterable

from sqlalchemy import func, insert, or_, select, text, update

from esl_cb.domain.callback_options import CallbackOptions
from esl_cb.domain.hours import parse_when
from esl_cb.domain.policy import RateLimits
from esl_cb.domain.queue import Priority
from esl_cb.domain.states import ContactState as C
from esl_cb.domain.states import Outcome

from .base import NotFound, PolicyRefused, RateLimited, StaleState, StoreBase, StoreError, as_utc, utcnow
from .models import Contact, Leg, Skill

log = logging.getLogger(__name__)
# A caller arrived: the contact, its leg and a callback of theirs still waiting, in one statement.
_PG_ARRIVE = text("""
WITH c AS (
    INSERT INTO contacts (direction, state, script, caller_uuid, original_ani, original_dnis, ani, dnis,
                          priority_initial, priority_acceleration, priority_max, callback_requested, call_delay_sec,
                          attempts, arrived_at, controller_id)
    VALUES ('inbound', 'arrived', :script, :uuid, :ani, :dnis, :ani, :dnis, 0, 0, 0, false, 0, 0, :now, :ctl)
    RETURNING id),
l AS (
    INSERT INTO legs (uuid, contact_id, kind, direction, from_number, to_number, started_at, answered_at)
    SELECT :uuid, c.id, 'caller', 'inbound', :frm, :to, :now, :now FROM c)
SELECT c.id, (SELECT p.id FROM contacts p WHERE p.callback_number = :number AND p.callback_requested
              AND p.state <> 'ended' ORDER BY p.queued_at LIMIT 1) AS pending
FROM c
""")
# Reqagent for a contact that just arrived, to a skill that exists: one statement (fenced: our contact).
_PG_QUEUE = text("""
UPDATE contacts SET state = 'queued', skill_id = s.id, queued_at = :now, priority_initial = :pi,
       priority_acceleration = :pa, priority_max = :pm
FROM skills s WHERE s.name = :skill AND contacts.id = :cid AND contacts.state = 'arrived'
                AND (:ctl = '' OR contacts.controller_id = :ctl)
""")


class ContactsStore(StoreBase):
    """A contact's life up to the queue."""

    def create_contact(self, caller_uuid: str, ani: str, dnis: str, script: str, from_number: str,
                       to_number: str) -> int:
        return self.arrive(caller_uuid, ani, dnis, script, from_number, to_number)[0]

    def arrive(self, caller_uuid: str, ani: str, dnis: str, script: str, from_number: str, to_number: str,
               callback_number: str | None = None) -> tuple[int, int | None]:
        """A caller arrived: store the contact and its leg, and (with `callback_number`) find a
        callback of theirs still waiting, in one transaction. Returns (contact id, pending id)."""
        now = utcnow()
        if self._pg:
            with self._autocommit.connect() as conn:
                row = conn.execute(_PG_ARRIVE, {"script": script, "uuid": caller_uuid, "ani": ani, "dnis": dnis,
                                                "now": now, "ctl": self.controller_id, "frm": from_number,
                                                "to": to_number, "number": callback_number}).one()
            log.info("contact %s created for call %s from %s to %s", row.id, caller_uuid, ani, dnis)
            return row.id, row.pending
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

    def queue_contact(self, contact_id: int, skill: str, priority: Priority) -> None:
        if self._pg:
            with self._autocommit.connect() as conn:
                done = conn.execute(_PG_QUEUE, {"now": utcnow(), "pi": priority.initial, "pa": priority.acceleration,
                                                "pm": priority.maximum, "skill": skill, "cid": contact_id,
                                                "ctl": self.controller_id}).rowcount
            if done == 1:
                log.info("contact %s arrived -[reqagent]-> queued", contact_id)
                return
        with self.engine.begin() as conn:
            sid = self.skill_id(conn, skill)
            ok = self._move(conn, contact_id, [C.ARRIVED], C.QUEUED, "reqagent", skill_id=sid, queued_at=utcnow(),
                            priority_initial=priority.initial, priority_acceleration=priority.acceleration,
                            priority_max=priority.maximum)
            if not ok:
                # Reqagent again (another skill or new priorities) keeps the place in the queue.
                ok = conn.execute(update(Contact).where(
                    Contact.id == contact_id, Contact.state == C.QUEUED.value,
                    self._owned(Contact.controller_id)).values(
                    skill_id=sid, priority_initial=priority.initial, priority_acceleration=priority.acceleration,
                    priority_max=priority.maximum)).rowcount == 1
            if not ok:
                raise StaleState(f"contact {contact_id} cannot be queued now: {self._state(conn, contact_id)}")

    def request_callback(self, contact_id: int, number: str, caller_id: str, delay: int, ani: str,
                         dnis: str, limits: RateLimits | None = None, override: bool = False,
                         options: CallbackOptions | None = None) -> int:
        """The Callback action: durable before the caller is hung up (SPEC 2, rule 2).

        At most one open callback per number and skill: a second request takes over the
        existing one (which keeps the earlier of the two places). Returns the contact id
        that now carries the callback. With `limits`, a request over them raises PolicyRefused
        (and is recorded in policy_refusals)."""
        now = utcnow()
        values = dict(callback_requested=True, callback_number=number, callback_caller_id=caller_id,
                      call_delay_sec=delay, callback_requested_at=now, ani=ani, dnis=dnis, caller_uuid=None,
                      policy_override=override)
        if options is not None:
            values["callback_options"] = json.dumps(options.to_json()) if options.to_json() else None
        try:
            with self.engine.begin() as conn:
                if options is not None:
                    values.update(self._timing(conn, contact_id, options, now))
                return self._request_callback(conn, contact_id, number, values, limits, now)
        except PolicyRefused as e:
            self.record_refusal(contact_id, number, e.calling_number, "request", e.rule, str(e))
            raise

    def _request_callback(self, conn, contact_id: int, number: str, values: dict, limits: RateLimits | None,
                          now) -> int:
        caller_id, delay, ani, dnis = (values["callback_caller_id"], values["call_delay_sec"], values["ani"],
                                       values["dnis"])
        me = self._lock_contact(conn, contact_id)
        if me is None:
            raise NotFound(f"no contact {contact_id}")
        if not self._mine(me, "callback"):
            raise StaleState(f"contact {contact_id} belongs to controller {me.controller_id} now")
        if limits is not None:
            self._within_limits(conn, number, me.original_ani, limits, now)
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

    def _timing(self, conn, contact_id: int, options: CallbackOptions, now: datetime) -> dict:
        """expire_at and not_before of a callback, read in its skill's time zone (StoreError if bad)."""
        skill = conn.execute(select(Skill.timezone, Skill.callback_expire_sec).join(
            Contact, Contact.skill_id == Skill.id).where(Contact.id == contact_id)).first()
        tz = skill.timezone if skill else "UTC"
        expire = options.expire_after if options.expire_after is not None else (skill and skill.callback_expire_sec)
        out: dict = {"expire_at": now + timedelta(seconds=float(expire)) if expire else None}
        if options.not_before:
            try:
                out["not_before"] = parse_when(options.not_before, now, tz)
            except ValueError as e:
                raise StoreError(f"NotBefore: {e}") from None
            if out["expire_at"] is not None and out["expire_at"] <= out["not_before"]:
                raise StoreError("the callback would expire before its NotBefore time")
        return out

    def expire_callbacks(self) -> list[int]:
        """Waiting callbacks past their expiry end as callback_expired (never offered again)."""
        now = utcnow()
        with self.engine.begin() as conn:
            ids = list(conn.execute(update(Contact).where(
                Contact.state == C.CALLBACK_QUEUED.value, Contact.expire_at.is_not(None), Contact.expire_at <= now)
                .values(state=C.ENDED.value, outcome=Outcome.CALLBACK_EXPIRED.value, ended_at=now,
                        last_error="expired before an agent could take it").returning(Contact.id)).scalars())
        for cid in ids:
            log.info("contact %s callback_queued -[expired]-> ended", cid)
        return ids

    def _within_limits(self, conn, number: str, calling: str, limits: RateLimits, now, locked: bool = False) -> None:
        """Count, under a lock per number and per caller (several controllers share the counts), the
        callbacks requested recently; a merged request made no call and does not count. `locked`:
        those locks are held already."""
        if not locked:
            self._lock_limits(conn, number, calling)
        counted = Contact.callback_requested.is_(True) & or_(Contact.outcome.is_(None),
                                                              Contact.outcome != Outcome.MERGED.value)
        checks = ((limits.per_number_per_day, Contact.callback_number == number, timedelta(days=1), "per_number"),
                  (limits.per_caller_per_hour, Contact.original_ani == calling, timedelta(hours=1), "per_caller"))
        for limit, who, window, rule in checks:
            if not limit:
                continue
            n = conn.execute(select(func.count()).select_from(Contact).where(
                who, counted, Contact.callback_requested_at >= now - window)).scalar()
            if n >= limit:
                raise limit_error(rule, n, number, calling, limits)

    @staticmethod
    def _lock_limits(conn, number: str, calling: str) -> None:
        # Taken before the lock of a number and skill, by every path (in one order: no deadlock).
        if conn.dialect.name == "postgresql":
            for key in (f"cb-number/{number}", f"cb-caller/{calling}"):
                conn.execute(select(func.pg_advisory_xact_lock(func.hashtext(key))))

    @staticmethod
    def _pending_query(number: str):
        return select(Contact.id).where(Contact.callback_number == number, Contact.callback_requested.is_(True),
                                        Contact.state != C.ENDED.value).order_by(Contact.queued_at).limit(1)

    def end_contact(self, contact_id: int, expected: Iterable[C], outcome: Outcome, reason: str,
                    error: str | None = None) -> bool:
        with self.engine.begin() as conn:
            return self._move(conn, contact_id, expected, C.ENDED, reason, outcome=outcome.value,
                              ended_at=utcnow(), last_error=error)

    def cancel(self, contact_id: int, reason: str, force: bool = False, operator: str | None = None) -> str:
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
            self._release_agent(conn, row.agent_id, row.id, utcnow(), fenced=False)     # an operator's
            if not self._move(conn, contact_id, [C(row.state)], C.ENDED, reason, fenced=False,
                              outcome=Outcome.CANCELLED.value, ended_at=utcnow(), last_error=reason):
                raise StaleState(f"contact {contact_id} changed state meanwhile; try again")
            self._audit(conn, operator, "callback cancel", f"contact {contact_id}", f"{row.state}: {reason}")
            return row.state


def limit_error(rule: str, n: int, number: str, calling: str, limits: RateLimits) -> RateLimited:
    """The refusal of a rate limit (`rule` per_number | per_caller, `n` requests counted)."""
    if rule == "per_number":
        return RateLimited(f"{number} was asked to be called back {n} times in the last 24 hours (at most "
                           f"{limits.per_number_per_day})", rule, calling, where="number")
    return RateLimited(f"the calling number {calling or '(none)'} asked for {n} callbacks in the last hour (at most "
                       f"{limits.per_caller_per_hour})", rule, calling)
