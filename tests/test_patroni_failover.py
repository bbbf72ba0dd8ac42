"""PostgreSQL that survives its own failover: a real Patroni pair (tests/patroni), the simulator,
one controller on the pair's multi-host URL, and a burst of callbacks with the primary killed
(SIGKILL of its postmaster) or switched over in the middle. None lost, none doubled."""
from __future__ import annotations

import collections
import logging
import re
import time

import pytest
from click.testing import CliRunner
from sqlalchemy import event

from cli import main
from esl_cb.db.migrate import upgrade
from esl_cb.db.store import Store

from .fixtures import wait_until
from .harness import Harness
from .patroni.cluster import PASSWORD, PatroniPair, require_tools
from .test_callback_flow import quick_script
from .test_concurrency import seed_callbacks

pytestmark = pytest.mark.patroni

CALLBACKS, AGENTS = 30, 6
IN_FLIGHT = ("offered", "accepted", "dialling", "connected")


@pytest.fixture(scope="module")
def patroni():
    """One pair for the module, with a migrated database `eslcb`; each test waits for it to be whole."""
    require_tools()
    pair = PatroniPair().start()
    try:
        pair.create_database("eslcb")
        upgrade(pair.url("eslcb"))
        yield pair
    finally:
        pair.stop()


_WRITE = re.compile(r"\s*(UPDATE|INSERT|DELETE|SELECT\s+(\*\s+FROM\s+)?esl_cb_)", re.I)


class CommitClock:
    """When each commit of an engine's work came back (time.monotonic()): COMMITs, and writes run in
    autocommit (the dispatch functions)."""

    def __init__(self, engine) -> None:
        self.times: list[float] = []
        dialect = engine.dialect
        plain_commit = dialect.do_commit

        def do_commit(dbapi_conn) -> None:
            plain_commit(dbapi_conn)
            self.times.append(time.monotonic())
        dialect.do_commit = do_commit
        event.listen(engine, "after_cursor_execute", self._after_execute)

    def _after_execute(self, _conn, cursor, statement, *_args) -> None:
        if cursor.connection.autocommit and _WRITE.match(statement):
            self.times.append(time.monotonic())

    def first_after(self, at: float) -> float | None:
        return min((t for t in self.times if t > at), default=None)

    def longest_gap(self, start: float, end: float) -> float:
        """The longest stretch without a commit in [start, end]: the write outage as the controller saw it."""
        marks = [start, *sorted(t for t in self.times if start < t < end), end]
        return max(b - a for a, b in zip(marks, marks[1:]))


def _burst(pair: PatroniPair, caplog, fault: str) -> dict:
    """30 callbacks, 6 agents talking 0.8 s each; `fault` (failover | switchover) a third of the way in.
    The URL names the primary first: the host that goes away, and comes back as a standby.
    Returns what was measured."""
    pair.wait_ready()
    url = pair.url("eslcb", first=pair.leader(), connect_timeout="3")
    caplog.set_level(logging.INFO, logger="esl_cb")
    h = Harness(url, quick_script(), max_attempts=3, agent_ring_timeout=5, callback_ring_timeout=5)
    looker = Store(url, "looker")               # the test's own reads: the controller's engine is timed alone
    clock = CommitClock(h.store.engine)

    def count(sql: str) -> int | None:
        try:
            with looker.engine.connect() as conn:
                return conn.exec_driver_sql(sql).scalar()
        except Exception:                       # the database is failing over under our feet too
            return None
    try:
        numbers = seed_callbacks(h.store, CALLBACKS)
        for n in numbers:
            h.sim_api(f"endpoint {n} answer 0.1")
        for i in range(AGENTS):
            h.agent(f"agent{i}", f"50{i:02d}", answer=0.1)
            h.sim_api(f"endpoint 50{i:02d} answer 0.1 talk 0.8")     # hangs up 0.8 s after the bridge
            h.available(f"agent{i}")
        wait_until(lambda: (count("SELECT count(*) FROM contacts WHERE state = 'ended'") or 0) >= CALLBACKS // 3,
                   timeout=60, interval=0.05, what="a third of the burst done")
        in_flight = count(f"SELECT count(*) FROM contacts WHERE state IN {IN_FLIGHT}")
        first_log = len(caplog.records)
        old_leader, at = pair.failover() if fault == "failover" else pair.switchover()
        new_leader = pair.wait_leader_other_than(old_leader)
        wait_until(lambda: count("SELECT count(*) FROM contacts WHERE state = 'ended'") == CALLBACKS, timeout=120,
                   interval=0.2, what=f"all {CALLBACKS} callbacks to end after the {fault}")
        recovered = clock.first_after(at)
        gap = clock.longest_gap(at - 1.0, recovered + 5.0) if recovered else None

        # None lost: every callback completed, once, with one attempt.
        with looker.engine.connect() as conn:
            outcomes = dict(conn.exec_driver_sql("SELECT outcome, count(*) FROM contacts GROUP BY outcome").all())
            attempts = dict(conn.exec_driver_sql("SELECT contact_id, count(*) FROM callback_attempts "
                                                 "GROUP BY contact_id").all())
            completed = conn.exec_driver_sql("SELECT count(*) FROM contacts WHERE outcome = 'callback_completed' "
                                             "AND ended_at IS NOT NULL").scalar()
        assert outcomes == {"callback_completed": CALLBACKS}, outcomes
        assert completed == CALLBACKS
        assert sorted(attempts.values()) == [1] * CALLBACKS, attempts
        # None doubled: each customer dialled once, and answered once (the switch's own records).
        legs = h.sim.switch.originates
        for n in numbers:
            dials = [o for o in legs if o["number"] == n]
            assert len(dials) == 1, f"{n} dialled {len(dials)} times"
            assert h.sim.switch.answered_at.get(dials[0]["uuid"]), f"{n} never answered"
        # The controller found the new primary by itself (same process, same engine, commits after the fault).
        assert recovered is not None, f"no commit after the {fault}"
        assert pair.leader() is new_leader and new_leader is not old_leader
        # ... and said so once per outage of the controller's engine (a switchover can be two or three:
        # a new connection may still reach the old primary while it demotes, and lose it), each over.
        assert not h.store.outage.away and 1 <= h.store.outage.outages <= 3
        backs = [r.getMessage() for r in caplog.records if r.msg.startswith("database back after")]
        assert any(f":{new_leader.pg_port} " in m for m in backs), backs
        failover_lines = [r for r in caplog.records[first_log:] if r.levelno >= logging.WARNING]
        # Once the old primary is back as the standby, the first host of the URL takes no writes: a
        # fresh process (the CLI here, a restarted controller alike) must still land on the primary.
        pair.wait_ready()
        added = CliRunner().invoke(main, ["agent", "add", f"after-{fault}", "--dial-string", "user/5099", "--skill",
                                          "support", "--db", url], catch_exceptions=False)
        assert added.exit_code == 0, added.output
        return {"recovered_after": recovered - at, "gap": gap, "in_flight": in_flight, "from": old_leader.name,
                "to": new_leader.name, "log_lines": failover_lines}
    finally:
        h.close()
        looker.close()


def _report(fault: str, measured: dict) -> None:
    places = collections.Counter(f"{r.name}:{r.lineno} {r.levelname} {r.msg!r}" for r in measured["log_lines"])
    print(f"\n{fault} {measured['from']} -> {measured['to']}: first commit {measured['recovered_after']:.2f}s after it, "
          f"longest time without a commit {measured['gap']:.2f}s, {measured['in_flight']} callbacks in flight, "
          f"{len(measured['log_lines'])} warning/error log lines:")
    for place, n in places.most_common():
        print(f"  {n:4d}  {place}")


def test_patroni_failover_during_a_burst_of_callbacks(patroni, caplog):
    measured = _burst(patroni, caplog, "failover")
    _report("failover", measured)
    assert measured["in_flight"] > 0, "the primary was killed with nothing in flight: the test proved nothing"
    assert all(PASSWORD not in r.getMessage() for r in caplog.records), "the database password reached the log"


def test_patroni_switchover_during_a_burst_of_callbacks(patroni, caplog):
    measured = _burst(patroni, caplog, "switchover")
    _report("switchover", measured)
    assert measured["in_flight"] > 0, "switched over with nothing in flight: the test proved nothing"


def test_two_controllers_take_nothing_from_each_other_in_a_failover(patroni, caplog):
    """A failover longer than heartbeat_timeout (1.5 s here; Patroni's defaults against the default 10 s
    in production) stops every controller's heartbeats at once: when the database is back, neither may
    take the other's contacts over for beats it could not write."""
    from esl_cb.config import Settings
    from esl_cb.controller.service import Controller

    pair = patroni
    pair.wait_ready()
    caplog.set_level(logging.INFO, logger="esl_cb")
    url = pair.url("eslcb", first=pair.leader())
    timing = dict(heartbeat_timeout=1.5, heartbeat_interval=0.5)
    h = Harness(url, quick_script(), max_attempts=3, agent_ring_timeout=5, callback_ring_timeout=5, **timing)
    second = None
    try:
        settings = Settings(**{**h.settings.__dict__, "controller_id": "second", "listen": "127.0.0.1:0"})
        second = Controller(settings, Store(url, "second"), quick_script()).start()
        wait_until(second.esl_ready.is_set, what="the second controller")
        numbers = seed_callbacks(h.store, CALLBACKS)
        for n in numbers:
            h.sim_api(f"endpoint {n} answer 0.1")
        for i in range(AGENTS):
            h.agent(f"agent{i}", f"51{i:02d}", answer=0.1)
            h.sim_api(f"endpoint 51{i:02d} answer 0.1 talk 0.8")
            h.available(f"agent{i}")
        second.wake_dispatcher()
        looker = Store(url, "looker")

        def ended() -> int | None:
            try:
                with looker.engine.connect() as conn:
                    return conn.exec_driver_sql("SELECT count(*) FROM contacts WHERE state = 'ended'").scalar()
            except Exception:
                return None
        wait_until(lambda: (ended() or 0) >= CALLBACKS // 3, timeout=60, interval=0.05, what="a third done")
        old, at = pair.failover()
        pair.wait_leader_other_than(old)
        wait_until(lambda: ended() == CALLBACKS, timeout=120, interval=0.2, what="all callbacks to end")
        looker.close()
        takeovers = [r.getMessage() for r in caplog.records if "stopped beating" in r.msg]
        doubled = {n: k for n in numbers if (k := sum(o["number"] == n for o in h.sim.switch.originates)) != 1}
        outcomes = {r["outcome"]: r["n"] for r in h.rows("SELECT outcome, count(*) AS n FROM contacts GROUP BY outcome")}
        assert (takeovers, doubled, outcomes) == ([], {}, {"callback_completed": CALLBACKS})
    finally:
        if second is not None:
            second.stop()
            second.store.close()
        h.close()
