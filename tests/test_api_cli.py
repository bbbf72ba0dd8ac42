"""esl-cb token, esl-cb api's checks of where it listens, esl-cb skill caller-id, and the rate limit
per token (issue 19)."""
from __future__ import annotations

import hashlib

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from cli import main
from esl_cb.api.settings import ApiSettings
from esl_cb.config import ConfigError, Settings
from esl_cb.db.store import Store

from .api_helpers import ApiProcess, make_token, problem
from .harness import TABLES


@pytest.fixture
def run(pg_url):
    store = Store(pg_url)
    with store.engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
    store.close()
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(main, list(args), env={"ESL_CB_DATABASE_URL": pg_url, "ESL_CB_OPERATOR": "olga"},
                             catch_exceptions=False)
    return invoke


def rows(pg_url: str, sql: str) -> list:
    store = Store(pg_url)
    try:
        with store.engine.connect() as conn:
            return conn.execute(text(sql)).all()
    finally:
        store.close()


def test_a_token_is_shown_once_and_kept_hashed(run, pg_url):
    r = run("token", "create", "website", "--role", "booking")
    assert r.exit_code == 0, r.output
    secret = r.output.splitlines()[1]
    assert secret.startswith("ecb_") and len(secret) > 40
    [(kept,)] = rows(pg_url, "SELECT secret_sha256 FROM api_tokens")
    assert kept == hashlib.sha256(secret.encode()).hexdigest() and secret not in str(rows(pg_url, "SELECT * FROM "
                                                                                                  "api_tokens"))
    listed = run("token", "list")
    assert "website" in listed.output and "booking" in listed.output and secret not in listed.output
    r = run("token", "create", "website", "--role", "booking")
    assert r.exit_code == 1 and "exists already" in r.output
    assert run("token", "revoke", "website").exit_code == 0
    r = run("token", "revoke", "website")
    assert r.exit_code == 1 and "revoked already" in r.output
    r = run("token", "revoke", "nobody")
    assert r.exit_code == 1 and "no token named 'nobody'" in r.output
    assert [a for (a,) in rows(pg_url, "SELECT action FROM audit_log ORDER BY id")] == ["token create", "token revoke"]


def test_token_errors_name_the_option(run):
    r = run("token", "create", "alice", "--role", "agent")
    assert r.exit_code == 2 and "--agent" in r.output
    r = run("token", "create", "alice", "--role", "agent", "--agent", "alice")
    assert r.exit_code == 2 and "no agent named 'alice'" in r.output
    r = run("token", "create", "site", "--role", "booking", "--webhook", "http://crm.example.com/hook")
    assert r.exit_code == 2 and "not an https:// URL" in r.output and "(--webhook)" in r.output
    r = run("token", "create", "bad name", "--role", "booking")
    assert r.exit_code == 2 and "(NAME)" in r.output
    r = run("token", "create", "x", "--role", "god")
    assert r.exit_code == 2


def test_a_webhook_is_set_with_a_new_secret_and_removed(run, pg_url):
    run("token", "create", "crm", "--role", "booking")
    r = run("token", "webhook", "crm", "https://crm.example.com/esl-cb")
    assert r.exit_code == 0 and len(r.output.splitlines()[1]) == 64
    assert rows(pg_url, "SELECT webhook_url FROM api_tokens") == [("https://crm.example.com/esl-cb",)]
    assert run("token", "webhook", "crm", "--off").exit_code == 0
    assert rows(pg_url, "SELECT webhook_url, webhook_secret FROM api_tokens") == [(None, None)]


def test_the_api_refuses_to_listen_on_the_network_in_clear_text(run, tmp_path):
    r = run("api", "--listen", "0.0.0.0:8088")
    assert r.exit_code == 2 and "reachable from other hosts" in r.output and "--behind-proxy" in r.output
    r = run("api", "--listen", "127.0.0.1:8088", "--tls-cert", str(tmp_path / "c.pem"))
    assert r.exit_code == 2 and "both --tls-cert and --tls-key" in r.output
    shared = Settings(db="postgresql+psycopg2://x@127.0.0.1/y")
    assert ApiSettings(shared, listen="0.0.0.0:8088", behind_proxy=True).validate().port == 8088
    (tmp_path / "c.pem").write_text("x")
    (tmp_path / "k.pem").write_text("x")
    assert ApiSettings(shared, listen="[::]:8443", tls_cert=str(tmp_path / "c.pem"),
                       tls_key=str(tmp_path / "k.pem")).validate().tls
    with pytest.raises(ConfigError, match="no database"):
        ApiSettings(Settings()).validate()


def test_skill_caller_id_on_the_command_line(run, pg_url):
    r = run("skill", "add", "support", "--caller-id", "312-555-7000")
    assert r.exit_code == 0 and "show +13125557000" in r.output
    assert "callbacks show +13125557000" in run("skill", "caller-id", "support").output
    r = run("skill", "caller-id", "support", "5000")
    assert r.exit_code == 2 and "(NUMBER)" in r.output
    assert "no outbound caller ID" in run("skill", "caller-id", "support", "--clear").output
    r = run("skill", "caller-id", "nobody", "+13125557000")
    assert r.exit_code == 1 and "no skill named 'nobody'" in r.output
    run("skill", "caller-id", "support", "+13125557000")
    r = run("callback", "schedule", "+13125550100", "--skill", "support", "--at", "+60")
    assert r.exit_code == 0, r.output
    assert rows(pg_url, "SELECT callback_caller_id FROM contacts") == [("+13125557000",)]


def test_a_token_over_its_rate_is_refused_with_retry_after(pg_url, tmp_path):
    store = Store(pg_url)
    with store.engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
    fast, _ = make_token(store, "fast", "supervisor")
    other, _ = make_token(store, "other", "supervisor")
    api = ApiProcess(tmp_path, pg_url, "--rate-limit", "0.5", "--rate-burst", "3")
    try:
        with api.client(fast) as c, api.client(other) as o:
            assert [c.get("/api/v1/queues").status_code for _ in range(3)] == [200, 200, 200]
            r = c.get("/api/v1/queues")
            problem(r, 429, "too_many_requests")
            assert int(r.headers["retry-after"]) >= 1
            assert o.get("/api/v1/queues").status_code == 200          # per token
    finally:
        api.stop()
        store.close()


def test_a_rate_limit_of_0_means_none(pg_url, tmp_path):
    store = Store(pg_url)
    with store.engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
    secret, _ = make_token(store, "fast", "supervisor")
    api = ApiProcess(tmp_path, pg_url, "--rate-limit", "0", "--rate-burst", "2")
    try:
        with api.client(secret) as c:
            assert {c.get("/api/v1/me").status_code for _ in range(10)} == {200}
    finally:
        api.stop()
        store.close()


def test_on_sqlite_bookings_work_and_live_events_say_they_need_postgresql(tmp_path):
    from esl_cb.db.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'api.db'}"
    upgrade(url)
    store = Store(url)
    store.add_skill("support")
    secret, _ = make_token(store, "wall", "supervisor")
    api = ApiProcess(tmp_path, url)
    try:
        with api.client(secret) as c:
            r = c.post("/api/v1/callbacks", json={"number": "+13125550100", "skill": "support"})
            assert r.status_code == 201 and c.get("/api/v1/callbacks/1").json()["position"] == 1
            problem(c.get("/api/v1/events"), 503, "unavailable")
        assert "password" not in api.log.read_text() and "settings: listen 127.0.0.1:" in api.log.read_text()
    finally:
        api.stop()
        store.close()


def test_the_api_holds_at_most_db_connections_of_postgresql(pg_url):
    """--db-connections bounds the statements one API process runs in PostgreSQL at once."""
    from esl_cb.api.app import build_services

    with pytest.raises(ConfigError, match="db_connections"):
        ApiSettings(Settings(db=pg_url), db_connections=0).validate()
    for n, (size, overflow) in ((4, (4, 0)), (20, (10, 10))):
        svc = build_services(ApiSettings(Settings(db=pg_url), db_connections=n).validate())
        try:
            assert (svc.store.engine.pool.size(), svc.store.engine.pool._max_overflow) == (size, overflow)
        finally:
            svc.store.close()
