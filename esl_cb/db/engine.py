"""The engine: SQLite for the demo; PostgreSQL with a pool that keeps connections for the time-critical
path while callers arrive, and pings a connection only when it sat idle."""
from __future__ import annotations

import contextvars
import threading
import time
from typing import Callable

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.pool import QueuePool

from . import outage

# A pooled PostgreSQL connection idle this long is pinged (SELECT 1) before it is handed out.
PING_IDLE_AFTER = 1.0
# Set (in its greenlet) by work that may wait for a connection: a caller's arrival and script.
ARRIVALS: contextvars.ContextVar[bool] = contextvars.ContextVar("esl_cb_arrivals", default=False)


class PriorityPool(QueuePool):
    """SQLAlchemy's QueuePool, with a cap on the connections callers' arrivals may hold.

    On the real switch 240 callers arriving at 40/s held every connection of the pool (each of their
    transactions several round trips, each waiting for a CPU), and an agent's answer waited seconds
    for one (issue 12). Arrivals now take a slot first (at most `arrivals_max` at once, in order), so
    the rest of the pool is always there for the time-critical path."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.arrivals_max = 0                  # 0: no cap
        self.before_arrival: Callable[[], None] | None = None
        self._slots: threading.BoundedSemaphore | None = None

    def limit_arrivals(self, connections: int, before: Callable[[], None] | None = None) -> None:
        self.arrivals_max = connections
        self.before_arrival = before
        self._slots = threading.BoundedSemaphore(connections)

    def recreate(self) -> "PriorityPool":      # engine.dispose() and invalidation build a new pool
        new = super().recreate()
        new.arrivals_max, new.before_arrival, new._slots = self.arrivals_max, self.before_arrival, self._slots
        return new

    def _do_get(self):
        if not (self._slots is not None and ARRIVALS.get()):
            return super()._do_get()
        if self.before_arrival is not None:
            self.before_arrival()
        if not self._slots.acquire(timeout=self._timeout):
            raise PoolTimeout(f"no database connection for an arrival within {self._timeout}s "
                              f"({self.arrivals_max} reserved for arrivals, all busy)")
        try:
            record = super()._do_get()
        except BaseException:
            self._slots.release()
            raise
        record.info["esl_cb_arrival_slot"] = self._slots
        return record

    def _do_return_conn(self, record) -> None:
        slots = record.info.pop("esl_cb_arrival_slot", None)
        try:
            super()._do_return_conn(record)
        finally:
            if slots is not None:
                slots.release()


def make_engine(url: str, pool_size: int = 10, max_overflow: int = 10, pool_timeout: float = 30.0) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()
        return engine
    # LIFO: in steady use the same few connections go round and are never pinged (_ping_when_idle).
    engine = create_engine(url, poolclass=PriorityPool, pool_size=pool_size, max_overflow=max_overflow,
                           pool_timeout=pool_timeout, pool_use_lifo=True, connect_args=socket_bounds(url))
    _ping_when_idle(engine)
    outage.watch(engine)
    return engine


# libpq's bounds on a host that stopped answering (a failed-over primary's machine gone). Under gevent
# psycopg2 connects without blocking, and libpq then leaves connect_timeout to its caller: a first host
# of a multi-host URL that dropped our SYNs held each new connection for the kernel's retries (about 2
# minutes) before the next host was tried. TCP_USER_TIMEOUT bounds that attempt, and a statement
# whose bytes the host never acknowledges; the keepalives find an idle connection (LISTEN's) whose host
# is gone. A healthy host acknowledges at once: none of these fires while it merely works slowly (a
# commit waiting for its synchronous standby included). A setting in the URL wins.
SOCKET_BOUNDS = {"connect_timeout": 5, "tcp_user_timeout": 5000, "keepalives_idle": 10, "keepalives_interval": 5,
                 "keepalives_count": 2}


def socket_bounds(url: str) -> dict:
    """libpq's bounds on a connection's socket (SOCKET_BOUNDS), less those the URL sets itself."""
    given = make_url(url).query
    return {k: v for k, v in SOCKET_BOUNDS.items() if k not in given}


def _ping_when_idle(engine: Engine) -> None:
    """Pessimistic disconnect handling without a round trip on every transaction.

    SQLAlchemy's pool_pre_ping pings at every checkout; in a burst of arrivals on the real switch
    those pings were 6% of the controller's CPU and one round trip more in each transaction (issue
    12). Here a connection in steady use is handed out as it is, and one idle for PING_IDLE_AFTER
    seconds is pinged first; a dead one is replaced before anyone uses it (a database restart).
    A connection that dies while in use fails its statement, which the callers retry."""
    def used(_dbapi_conn, record) -> None:
        if record is not None:
            record.info["esl_cb_used"] = time.monotonic()

    # Listened for on the engine, so a pool rebuilt by dispose() or an invalidation keeps them.
    event.listen(engine, "connect", used)
    event.listen(engine, "checkin", used)

    @event.listens_for(engine, "checkout")
    def _ping(dbapi_conn, record, _proxy) -> None:
        if getattr(dbapi_conn, "closed", 0):
            # psycopg2 closes a connection whose query was interrupted (a greenlet killed while it
            # waited, e.g. a caller who hung up): it goes back to the pool closed.
            raise DisconnectionError("pooled connection was closed")
        if time.monotonic() - record.info.get("esl_cb_used", 0.0) < PING_IDLE_AFTER:
            return
        try:
            engine.dialect.do_ping(dbapi_conn)
        except Exception as e:             # the database restarted or the connection was cut
            outage.watch(engine).lost(e)
            raise DisconnectionError(f"pooled connection is dead: {e}") from e
        record.info["esl_cb_used"] = time.monotonic()
