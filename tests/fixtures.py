"""Shared fixtures: the simulator on port 0, real PostgreSQL databases, a running controller."""
from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from typing import Iterator

import gevent
import psycopg2
import psycopg2.errors
import pytest

from esl_cb.sim.events import Identity
from esl_cb.sim.server import Simulator

LAB = Identity(core_uuid="aadb703e-a2e0-49c9-a225-eac6612582c4", hostname="fs-lab", ipv4="192.0.2.2",
               ipv6="fd00::2", version="1.11.3-dev~64bit")
PG_ADMIN = os.environ.get("ESL_CB_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture
def sim():
    # The lab switch of the captures ran with max-sessions 100.
    s = Simulator(("127.0.0.1", 0), identity=LAB, heartbeat=0, max_sessions=100).start()
    yield s
    s.stop()


def _admin():
    try:
        conn = psycopg2.connect(PG_ADMIN, connect_timeout=5)
    except psycopg2.OperationalError as e:
        pytest.fail(f"PostgreSQL is required for this test and is not reachable at {PG_ADMIN}: {e}\n"
                    "Start it: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
                    pytrace=False)
    conn.autocommit = True
    return conn


def create_database() -> str:
    name = "eslcb_test_" + uuid.uuid4().hex[:12]
    conn = _admin()
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg2://")
    return f"{base}/{name}"


def drop_database(url: str) -> None:
    """Drop a test database even while a stopped controller's last connection is still closing.

    pg_terminate_backend only signals the backend and a greenlet may reconnect before DROP runs (CI
    once failed on "being accessed by other users"); WITH (FORCE) terminates and drops under the
    database's lock, which a new connection waits on. Tried again a few times for a backend slow to
    exit on a loaded machine."""
    name = url.rsplit("/", 1)[1]
    conn = _admin()
    try:
        for attempt in range(5):
            try:
                with conn.cursor() as cur:
                    cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                return
            except psycopg2.errors.ObjectInUse:
                if attempt == 4:
                    raise
                gevent.sleep(1.0)
    finally:
        conn.close()


DIALECTS = ["postgresql", "sqlite"]


@contextmanager
def migrated_store(dialect: str, tmp_path) -> Iterator:
    """A Store on a fresh migrated database of `dialect` (a PostgreSQL database or an SQLite file),
    closed and dropped afterwards: the fixture of the tests that hold for both dialects."""
    from esl_cb.db.migrate import upgrade
    from esl_cb.db.store import Store

    url = create_database() if dialect == "postgresql" else f"sqlite:///{tmp_path / 'store.db'}"
    upgrade(url)
    st = Store(url, "test")
    try:
        yield st
    finally:
        st.close()
        if dialect == "postgresql":
            drop_database(url)


@pytest.fixture(scope="module")
def pg_url():
    """A fresh, migrated PostgreSQL database for this test module."""
    from esl_cb.db.migrate import upgrade

    url = create_database()
    upgrade(url)
    yield url
    drop_database(url)


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    with gevent.Timeout(timeout, AssertionError(f"timed out after {timeout}s waiting for {what}")):
        while True:
            value = predicate()
            if value:
                return value
            gevent.sleep(interval)
