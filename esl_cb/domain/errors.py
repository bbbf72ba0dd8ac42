"""One family of errors for every layer, each with a stable code.

The code names what went wrong for a program (the HTTP API's `application/problem+json`, a script
reading the CLI's `error [code]: detail`); the detail says it for a person: what was wrong and
where. Codes are part of the interface: never rename one (tests/test_errors.py holds the table).

    EslCbError                       error                 500
      InvalidInput                   invalid_input         422  a value given to us cannot be used
        InvalidNumber (numbers)      invalid_number        422
        ...                          (hours, conditions, scripts, policy and config settings)
      StoreError (db.base)           conflict              409  cannot be done as asked, now
        StaleState                   wrong_state           409  not in a state that allows it
        NotFound                     not_found             404
          UnknownSkill               unknown_skill         422
        PolicyRefused                policy_refused        422  the destination policy says no
          RateLimited                rate_limited          429
      Unavailable                    unavailable           503  a service we need is down
        DatabaseUnavailable          database_unavailable  503
      SchemaMissing                  schema_missing        503  no esl-cb tables: esl-cb db upgrade

A duplicate booking is no error: it joins the open callback of the same number and skill, and the
booking says so (esl_cb/app/callbacks.py `Booking.merged_into`).
"""
from __future__ import annotations

from typing import ClassVar


class EslCbError(Exception):
    """Something esl-cb cannot do; `code` for programs, `detail` (str(self)) for people."""

    code: ClassVar[str] = "error"
    http_status: ClassVar[int] = 500      # what the HTTP API answers with it
    title: ClassVar[str] = "esl-cb could not do it"     # the same for every error of this code

    def __init__(self, detail: str = "", *args, where: str = "") -> None:
        super().__init__(detail, *args)
        self.where = where               # the input it is about ("number", "window.end"), if any

    @property
    def detail(self) -> str:
        return str(self)

    def problem(self) -> dict:
        """The error as an RFC 9457 problem document (without `instance`, which the API knows)."""
        doc = {"type": f"urn:esl-cb:problem:{self.code}", "title": self.title, "status": self.http_status,
               "detail": self.detail, "code": self.code}
        if self.where:
            doc["where"] = self.where
        return doc


class InvalidInput(EslCbError):
    """A value given to us (an option, a field, a setting, a file) cannot be used as it is."""

    code = "invalid_input"
    http_status = 422
    title = "invalid input"


class Unavailable(EslCbError):
    """A service esl-cb needs does not answer; trying again later may work."""

    code = "unavailable"
    http_status = 503
    title = "a service esl-cb needs is unavailable"


class DatabaseUnavailable(Unavailable):
    code = "database_unavailable"
    title = "the database is unavailable"


class SchemaMissing(EslCbError):
    """The database answers but has no esl-cb tables (or old ones): `esl-cb db upgrade`. Not
    Unavailable: trying again will not help until an operator acts."""

    code = "schema_missing"
    http_status = 503
    title = "the database has no esl-cb tables"
