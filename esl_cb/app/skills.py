"""A skill's opening hours and the default lifetime of its callbacks."""
from __future__ import annotations

from esl_cb.db.store import Store
from esl_cb.domain.errors import InvalidInput
from esl_cb.domain.hours import OpeningHours

from .database import database_errors


class SkillService:
    def __init__(self, store: Store) -> None:
        self.store = store

    @database_errors
    def set_hours(self, name: str, week: str | None = None, tz: str | None = None, closed: str | None = None,
                  expire_after: int | None = None, operator: str | None = None) -> OpeningHours:
        """Change what is given (the rest stays), audited; the controllers are woken to apply it.
        NotFound (no such skill); HoursError (invalid_hours) naming what cannot be read."""
        if expire_after is not None and (isinstance(expire_after, bool) or not isinstance(expire_after, int)
                                         or expire_after < 0):
            raise InvalidInput(f"expire_after: {expire_after!r} is not a whole number of seconds (0: never)",
                               where="expire_after")
        hours = self.store.set_skill_hours(name, week, tz, closed, expire_after, operator)
        self.store.notify(f"skill {name}")
        return hours
