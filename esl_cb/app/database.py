"""The database's own failures as domain errors, so a front end needs to know only one family."""
from __future__ import annotations

import functools
from typing import Callable, TypeVar

from sqlalchemy.exc import OperationalError, ProgrammingError

from esl_cb.domain.errors import DatabaseUnavailable, SchemaMissing

F = TypeVar("F", bound=Callable)
_NO_TABLES = ("does not exist", "no such table")        # PostgreSQL's words, SQLite's


def database_errors(method: F) -> F:
    """Turn a database that does not answer into DatabaseUnavailable and one without our tables
    into SchemaMissing; everything else passes as it is."""
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except (OperationalError, ProgrammingError) as e:
            first = (str(e.orig).strip().splitlines() or ["?"])[0]
            if any(words in first for words in _NO_TABLES):
                raise SchemaMissing(f"the database has no esl-cb tables yet ({first}): run `esl-cb db upgrade` "
                                    "first") from e
            if isinstance(e, OperationalError):
                raise DatabaseUnavailable(f"database error: {first}") from e
            raise
    return wrapper  # type: ignore[return-value]
