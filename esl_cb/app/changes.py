"""A supervisor's changes to a waiting callback (priority, time, the agent it is reserved for), and
each skill's outbound caller ID (the number its customers know)."""
from __future__ import annotations

import math
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from esl_cb.db.callback_changes import UNCHANGED, CallbackChangesStore
from esl_cb.db.store import Store, UnknownSkill, utcnow
from esl_cb.domain.errors import InvalidInput
from esl_cb.domain.hours import parse_when
from esl_cb.domain.numbers import InvalidNumber, normalize

from .database import database_errors

__all__ = ["UNCHANGED", "CallbackChanges", "CallerIds"]


class CallbackChanges:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.changes = CallbackChangesStore(store.engine)

    @database_errors
    def change(self, contact_id: int, *, priority=UNCHANGED, not_before=UNCHANGED, agent=UNCHANGED,
               operator: str | None = None) -> dict:
        """`priority` a number (a fixed priority); `not_before` an aware datetime, a written time
        ('2026-12-01T14:30' in the skill's time zone, '+3600') or None (now); `agent` an agent's
        name or None (anyone). InvalidInput naming the field; NotFound; StaleState (wrong_state)."""
        if priority is not UNCHANGED and (isinstance(priority, bool) or not isinstance(priority, (int, float))
                                          or not math.isfinite(priority)):
            raise InvalidInput(f"priority: {priority!r} is not a number", where="priority")
        if agent is not UNCHANGED and agent is not None and not (isinstance(agent, str) and agent.strip()):
            raise InvalidInput("agent: give an agent's name, or null for anyone", where="agent")
        if not_before is not UNCHANGED and not_before is not None:
            not_before = self._time(contact_id, not_before)
        return self.changes.change_callback(contact_id, priority=None if priority is UNCHANGED else float(priority),
                                            not_before=not_before, agent=agent, operator=operator)

    def _time(self, contact_id: int, value) -> datetime:
        tz = "UTC"
        c = self.store.contact(contact_id)
        for sid, _, hours, _ in self.store.skill_calendars():
            if sid == c.skill_id:
                tz = hours.tz
        now = utcnow()
        if isinstance(value, datetime):
            at = value if value.tzinfo else value.replace(tzinfo=ZoneInfo(tz))
        else:
            try:
                at = parse_when(str(value), now, tz)
            except ValueError as e:
                raise InvalidInput(f"not_before: {e}", where="not_before") from None
        if at > now + timedelta(days=366):
            raise InvalidInput(f"not_before: {at.isoformat()} is more than a year ahead", where="not_before")
        return at


class CallerIds:
    """Each skill's outbound caller ID."""

    def __init__(self, store: Store, region: str = "US") -> None:
        self.store = store
        self.region = region
        self.changes = CallbackChangesStore(store.engine)

    @database_errors
    def set(self, skill: str, number: str | None, operator: str | None = None) -> str | None:
        """Set (the number as E.164, returned) or clear (None) a skill's outbound caller ID.
        InvalidNumber (caller_id); UnknownSkill."""
        e164 = None
        if number:
            try:
                e164 = normalize(number, self.region)
            except InvalidNumber as e:
                raise InvalidNumber(f"caller_id: {e}", where="caller_id") from None
        self.changes.set_outbound_caller_id(skill, e164, operator)
        return e164

    @database_errors
    def of(self, skill: str) -> str | None:
        """The skill's outbound caller ID (None: none set); UnknownSkill."""
        ids = self.changes.outbound_caller_ids()
        if skill not in ids:
            raise UnknownSkill(f"no skill named {skill!r} (esl-cb skill add {skill})", where="skill")
        return ids[skill]

    @database_errors
    def for_booking(self, skill: str, given: str | None) -> str:
        """What a booking shows: the caller ID given, else the skill's, else '' (the number itself).
        An unknown skill gives '' here; the booking itself says it is unknown."""
        if given:
            return given
        return self.changes.outbound_caller_ids().get(skill) or ""

    @database_errors
    def all(self) -> dict[str, str | None]:
        return self.changes.outbound_caller_ids()
