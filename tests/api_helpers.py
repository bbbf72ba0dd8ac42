"""A real `esl-cb api` process on a free port, and tokens for it (the HTTP API's tests)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from esl_cb.app.tokens import TokenService
from esl_cb.db.store import Store

from .harness import TABLES
from .procs import free_port, spawn, wait_port


class ApiProcess:
    """`esl-cb api` as it runs for real: its own process, uvicorn, the database its only link."""

    def __init__(self, tmp: Path, db: str, *extra: str, scheme: str = "http") -> None:
        self.port = free_port()
        self.log = tmp / f"api-{self.port}.log"
        self.proc = spawn(["api", "--listen", f"127.0.0.1:{self.port}", "--db", db, *extra], self.log)
        try:
            wait_port(self.port)
        except Exception:
            self.stop()
            raise AssertionError(f"esl-cb api did not start:\n{self.log.read_text()}") from None
        self.url = f"{scheme}://127.0.0.1:{self.port}"

    def client(self, secret: str | None = None, **kwargs) -> httpx.Client:
        headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=10, **kwargs)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def make_token(store: Store, name: str, role: str, agent: str | None = None, webhook: str | None = None):
    """(secret, webhook secret) of a new token."""
    made = TokenService(store).create(name, role, agent, webhook, operator="test")
    return made.secret, made.webhook_secret


def problem(response: httpx.Response, status: int, code: str, where: str | None = None) -> dict:
    """The response is the problem document of `code`, with `status`."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    doc = response.json()
    assert (doc["status"], doc["code"], doc["type"]) == (status, code, f"urn:esl-cb:problem:{code}"), doc
    assert doc["detail"] and doc["title"] and doc["instance"].startswith("/")
    if where is not None:
        assert doc.get("where") == where, doc
    return doc


@pytest.fixture(scope="module")
def api(pg_url, tmp_path_factory):
    proc = ApiProcess(tmp_path_factory.mktemp("api"), pg_url, "--rate-limit", "0", "--callbacks-per-number-per-day",
                      "3")
    yield proc
    proc.stop()


@pytest.fixture
def store(pg_url):
    """A clean database with two skills and two agents (alice: support, bob: sales)."""
    st = Store(pg_url)
    with st.engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
    for skill in ("support", "sales"):
        st.add_skill(skill)
    st.add_agent("alice", "user/1001", ["support"])
    st.add_agent("bob", "user/1002", ["sales"])
    yield st
    st.close()


@pytest.fixture
def clients(api, store):
    """A client per token: website and crm (booking), wall (supervisor), alice (agent), root (admin)."""
    made = {}
    for name, role, agent in (("website", "booking", None), ("crm", "booking", None), ("wall", "supervisor", None),
                              ("alice", "agent", "alice"), ("root", "admin", None)):
        made[name] = api.client(make_token(store, name, role, agent)[0])
    yield made
    for c in made.values():
        c.close()
