"""esl-cb api --workers N (issue 19): uvicorn's worker processes share the port, each with its own
event listener; the per-token rate limit holds across them (each worker takes its share: rate /
N, bursts of ceil(burst / N)); event ids come from the database, so a stream resumed with
Last-Event-ID on any worker goes on where it stopped."""
from __future__ import annotations

import httpx
from sqlalchemy import text

from esl_cb.api.server import worker_share
from esl_cb.api.settings import ApiSettings
from esl_cb.config import Settings
from esl_cb.db.store import Store
from esl_cb.domain.states import AgentState

from .api_helpers import ApiProcess, make_token
from .fixtures import wait_until
from .harness import TABLES


def test_a_workers_share_of_the_rate_limit():
    one = ApiSettings(Settings(db="postgresql+psycopg2://x@h/db"), rate_limit=20, rate_burst=40, workers=3)
    share = worker_share(one)
    assert (share.rate_limit, share.rate_burst) == (20 / 3, 14)
    assert worker_share(ApiSettings(Settings(db="postgresql+psycopg2://x@h/db"), rate_limit=0, workers=3)).rate_limit \
        == 0


def listeners(store: Store) -> int:
    with store.engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'esl-cb api events' "
                                 "AND datname = current_database()")).scalar()


def event_ids(store: Store, after: int = 0) -> list[int]:
    with store.engine.connect() as conn:
        return list(conn.execute(text("SELECT id FROM api_events WHERE id > :a ORDER BY id"), {"a": after}).scalars())


def test_two_workers_serve_listen_and_keep_a_tokens_limit_together(pg_url, tmp_path):
    store = Store(pg_url)
    with store.engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
    store.add_skill("support")
    secret, _ = make_token(store, "wall", "supervisor")
    reader, _ = make_token(store, "reader", "supervisor")      # a bucket of its own, untouched until then
    api = ApiProcess(tmp_path, pg_url, "--workers", "2", "--rate-limit", "0.2", "--rate-burst", "4")
    try:
        wait_until(lambda: listeners(store) == 2, 20, what="a LISTEN session per worker")
        # Each request on a new connection, so both workers take some: 2 + 2 of the burst pass.
        codes = []
        for _ in range(16):
            with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {secret}"}, timeout=10) as c:
                codes.append(c.get("/api/v1/me").status_code)
        assert set(codes) == {200, 429} and codes.count(200) <= 5, codes     # the burst of 4 (+1 refilled at most)
        # Events made while no stream was open, resumed with Last-Event-ID on whichever worker answers.
        store.add_agent("ann", "user/1001", ["support"])
        store.set_agent_state("ann", AgentState.AVAILABLE, list(AgentState))
        last = event_ids(store)[-1]
        store.set_agent_state("ann", AgentState.UNAVAILABLE, list(AgentState))
        store.set_agent_state("ann", AgentState.AVAILABLE, list(AgentState))
        kept = event_ids(store, after=last)
        assert len(kept) == 2
        with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {reader}"}, timeout=10) as c:
            with c.stream("GET", "/api/v1/events", headers={"Last-Event-ID": str(last)}) as r:
                assert r.status_code == 200
                ids = []
                for line in r.iter_lines():
                    if line.startswith("id: "):
                        ids.append(int(line[4:].split(".")[0]))       # "<event id>.<xmin>"
                    if len(ids) == len(kept):
                        break
        assert ids == kept
    finally:
        api.stop()
        store.close()
