"""Takeover of a dead controller's contacts, and not of a live one's after the database was away:
a failover silences every controller at once (issue 18). On a real PostgreSQL, with a hand-driven
clock for our own beats."""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import text

from esl_cb.db.store import Store, utcnow

from .harness import TABLES

TIMEOUT = 10.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _stores(pg_url):
    with Store(pg_url).engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
    a, b = Store(pg_url, "a"), Store(pg_url, "b")
    a.clock = clock = Clock()
    a.register("x")
    b.register("x")
    return a, b, clock


def _stale(store: Store, controller: str, seconds: float) -> None:
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE controllers SET heartbeat_at = :t WHERE id = :id"),
                     {"t": utcnow() - timedelta(seconds=seconds), "id": controller})


def _beat_for(store: Store, clock: Clock, seconds: float, every: float = 2.0) -> None:
    for _ in range(int(seconds / every) + 1):
        store.heartbeat("x")
        clock.now += every


def test_back_from_an_outage_nobody_is_taken_over_for_beats_it_could_not_write(pg_url):
    a, b, clock = _stores(pg_url)
    try:
        _beat_for(a, clock, 30)
        b.heartbeat("x")
        clock.now += 25                      # the database is away 25 s: neither a nor b can beat
        _stale(a, "b", 25)
        _stale(a, "a", 25)
        a.heartbeat("x")                     # a is back first; b's last beat is 25 s old
        assert a.adopt_dead(TIMEOUT, "x") == []
        b.heartbeat("x")                     # b is back too, and beats on
        _beat_for(a, clock, TIMEOUT + 2)
        assert a.adopt_dead(TIMEOUT, "x") == []   # b is fresh: alive
    finally:
        a.close()
        b.close()


def test_a_controller_that_really_stopped_is_taken_over(pg_url):
    a, b, clock = _stores(pg_url)
    try:
        b.heartbeat("x")
        _stale(a, "b", 30)                   # b stopped 30 s ago; a beat all along
        _beat_for(a, clock, 4)
        assert a.adopt_dead(TIMEOUT, "x") == []   # a has not beaten for a whole timeout yet
        _beat_for(a, clock, TIMEOUT)
        assert a.adopt_dead(TIMEOUT, "x") == ["b"]
    finally:
        a.close()
        b.close()
