"""The database went away and came back: said once each, for every part that uses one engine.

A failover (or a restart) of PostgreSQL makes every greenlet that needs the database fail and retry,
each with its own log line; on a Patroni failover that was 47 warnings in 2.7 s and not one line
saying it was over (issue 18). The engine's own events see all of it: the first lost connection or
failed connect starts an outage, the first new connection ends it. Callers that log their own
retries can ask `away` and say less meanwhile.
"""
from __future__ import annotations

import logging
import time
import weakref

from sqlalchemy import Engine, event

log = logging.getLogger(__name__)


class DatabaseOutage:
    """Watches one engine: `lost` on a dropped connection or a failed connect, `back` on the next connect."""

    def __init__(self, engine: Engine, clock=time.monotonic) -> None:
        self.clock = clock
        self.since: float | None = None
        self.failures = 0             # failed statements and connects during the current outage
        self.outages = 0              # since start
        self._dbapi_error = engine.dialect.loaded_dbapi.OperationalError
        event.listen(engine, "handle_error", self._on_error)
        event.listen(engine, "connect", self._on_connect)

    @property
    def away(self) -> bool:
        return self.since is not None

    def lost(self, error: BaseException) -> None:
        self.failures += 1
        if self.since is not None:
            return
        self.since = self.clock()
        self.outages += 1
        log.warning("database unreachable (%s); what needs it waits and retries, on whichever host of the URL "
                    "takes writes (said again once it is back)", _first_line(error))

    def back(self, dbapi_conn) -> None:
        if self.since is None:
            return
        info = getattr(dbapi_conn, "info", None)
        where = f"{info.host}:{info.port}" if info is not None and getattr(info, "host", None) else "the database"
        log.warning("database back after %.1fs, at %s (%d failed attempts meanwhile)", self.clock() - self.since,
                    where, self.failures)
        self.since, self.failures = None, 0

    def _on_error(self, ctx) -> None:
        # A connection that died, or a connect that failed (no connection yet): not a statement's own
        # error (a constraint, a lock timeout), which the database answered.
        if ctx.is_disconnect or (ctx.connection is None and isinstance(ctx.original_exception, self._dbapi_error)):
            self.lost(ctx.original_exception)

    def _on_connect(self, dbapi_conn, _record) -> None:
        self.back(dbapi_conn)


_WATCHED: "weakref.WeakKeyDictionary[Engine, DatabaseOutage]" = weakref.WeakKeyDictionary()


def watch(engine: Engine) -> DatabaseOutage:
    """The engine's outage watcher, made on first use."""
    outage = _WATCHED.get(engine)
    if outage is None:
        outage = _WATCHED[engine] = DatabaseOutage(engine)
    return outage


def _first_line(error: BaseException) -> str:
    text = str(getattr(error, "orig", None) or error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"
