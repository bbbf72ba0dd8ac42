"""The database URL of a highly available PostgreSQL: several hosts, target_session_attrs=read-write,
and the password never shown. On the machine's own PostgreSQL; the Patroni pair is in
test_patroni_failover.py."""
from __future__ import annotations

import socket
import time

import gevent
import pytest
from sqlalchemy import text

from esl_cb.config import Settings, masked_url
from esl_cb.db.base import make_engine


def _multi_host(pg_url: str, first_port: int) -> str:
    """pg_url (postgresql+psycopg2://postgres@127.0.0.1:5432/db) with a host before the real one."""
    base, db = pg_url.rsplit("/", 1)
    real = base.split("@", 1)[1]
    return (f"postgresql+psycopg2://postgres:hunter2@/{db}?host=127.0.0.1:{first_port}&host={real}"
            "&target_session_attrs=read-write")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_multi_host_url_finds_the_host_that_answers(pg_url):
    url = _multi_host(pg_url, _port())          # nothing listens on the first host
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT inet_server_port()")).scalar() == int(pg_url.rsplit(":", 1)[1].split("/")[0])
            assert conn.execute(text("SHOW transaction_read_only")).scalar() == "off"
    finally:
        engine.dispose()
    assert Settings(db=url).validate().db == url


@pytest.fixture
def vanished_host():
    """A loopback port that drops new connections unanswered, as a host that vanished does (its
    accept queue is full, so the kernel drops their SYNs)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    port = srv.getsockname()[1]
    fillers = []
    for _ in range(3):
        c = socket.socket()
        c.setblocking(False)
        try:
            c.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(c)
    gevent.sleep(0.2)
    yield port
    for c in fillers:
        c.close()
    srv.close()


def test_a_vanished_first_host_costs_seconds_not_minutes(pg_url, vanished_host):
    """Under gevent (as the controller and CLI run) libpq leaves connect_timeout to the caller, so a first
    host that stopped answering held every new connection for the kernel's SYN retries (about 2 minutes)
    before the second host was tried. The engine bounds each host's attempt."""
    engine = make_engine(_multi_host(pg_url, vanished_host))
    started = time.monotonic()
    try:
        with gevent.Timeout(15, AssertionError("no connection within 15 s: the vanished host held it")):
            with engine.connect() as conn:
                assert conn.execute(text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()
    assert time.monotonic() - started < 10


def test_the_url_keeps_the_operators_own_timeouts(pg_url):
    url = _multi_host(pg_url, _port()) + "&tcp_user_timeout=1234&keepalives_idle=7"
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            dsn = conn.connection.dbapi_connection.dsn
    finally:
        engine.dispose()
    assert "tcp_user_timeout=1234" in dsn and "keepalives_idle=7" in dsn


@pytest.mark.parametrize("url, shown", [
    ("postgresql+psycopg2://eslcb:s3cret@/eslcb?host=10.0.0.1:5432&host=10.0.0.2:5432"
     "&target_session_attrs=read-write",
     "postgresql+psycopg2://eslcb:***@/eslcb?host=10.0.0.1:5432&host=10.0.0.2:5432&target_session_attrs=read-write"),
    ("postgresql+psycopg2://eslcb@/eslcb?host=db1&password=s3cret&host=db2",
     "postgresql+psycopg2://eslcb@/eslcb?host=db1&password=***&host=db2"),
    ("postgresql+psycopg2://eslcb:s3cret@db1:5432/eslcb", "postgresql+psycopg2://eslcb:***@db1:5432/eslcb"),
    ("postgresql+psycopg2://eslcb@db1/eslcb", "postgresql+psycopg2://eslcb@db1/eslcb"),
])
def test_masked_url_shows_no_password(url, shown):
    assert masked_url(url) == shown
    assert Settings(db=url).masked()["db"] == shown


def test_a_lost_connection_is_said_once_and_its_return_once(pg_url, caplog):
    """Every greenlet that meets the outage fails on its own; the engine says it once, and says when it is over."""
    import logging

    import psycopg2

    from esl_cb.db.store import Store

    from .fixtures import PG_ADMIN

    caplog.set_level(logging.INFO, logger="esl_cb")
    store = Store(pg_url, "t")
    try:
        with store.engine.connect() as conn:
            pids = {conn.execute(text("SELECT pg_backend_pid()")).scalar()}
        admin = psycopg2.connect(PG_ADMIN)
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(p) FROM unnest(%s) AS p", (list(pids),))
        admin.close()
        failed = 0
        for _ in range(3):
            try:
                with store.engine.connect() as conn:
                    conn.execute(text("SELECT 1"))
            except Exception:
                failed += 1
        said = [r.getMessage() for r in caplog.records if r.name == "esl_cb.db.outage"]
        assert failed <= 1
        assert len(said) == 2, said
        assert said[0].startswith("database unreachable (")
        assert said[1].startswith("database back after ") and "127.0.0.1:" in said[1]
        assert not store.outage.away and store.outage.outages == 1
    finally:
        store.close()
