"""The API's LISTEN session cannot hang silently (issue 19): a session that LISTENs but does not
read holds PostgreSQL's notification queue, and when that is full every NOTIFY, so every change of
state, fails. The listener names itself, probes a silent database and cuts a connection that does
not answer, then LISTENs again on a new one; its streams are told to read the state again."""
from __future__ import annotations

import json
import os
import signal

import gevent
from sqlalchemy import text

from .api_helpers import api, clients, store  # noqa: F401  (fixtures)
from .fixtures import wait_until

NAME = "esl-cb api events"


def listener_pids(store) -> list[int]:
    with store.engine.connect() as conn:
        return list(conn.execute(text("SELECT pid FROM pg_stat_activity WHERE application_name = :n "
                                      "AND datname = current_database()"), {"n": NAME}).scalars())


def stream(client, into: list) -> gevent.Greenlet:
    def read() -> None:
        with client.stream("GET", "/api/v1/events", timeout=60) as r:
            kind = None
            for line in r.iter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: ") and kind:
                    into.append((kind, json.loads(line[6:])))
    return gevent.spawn(read)


def book(client, number: str) -> int:
    r = client.post("/api/v1/callbacks", json={"number": number, "skill": "support"})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def test_a_listen_session_that_stops_answering_is_cut_and_made_again(clients, store):
    events: list = []
    reader = stream(clients["wall"], events)
    try:
        wait_until(lambda: len(listener_pids(store)) == 1, 10, what="the API's named LISTEN session")
        [stuck] = listener_pids(store)
        os.kill(stuck, signal.SIGSTOP)          # the database side of it answers nothing any more
        try:
            # Within a probe interval and its timeout (10 + 5 s), a new session listens.
            wait_until(lambda: [p for p in listener_pids(store) if p != stuck], 40, what="a new LISTEN session")
        finally:
            os.kill(stuck, signal.SIGCONT)      # it finds its client gone and ends
        wait_until(lambda: any(k == "resync" for k, _ in events), 10, what="the streams told to read again")
        cid = book(clients["website"], "+13125550195")
        wait_until(lambda: any(k == "contact" and d.get("id") == cid for k, d in events), 10,
                   what="live events through the new session")
        wait_until(lambda: stuck not in listener_pids(store), 10, what="the stopped session gone")
    finally:
        reader.kill()


def test_a_terminated_listen_session_is_made_again(clients, store):
    events: list = []
    reader = stream(clients["wall"], events)
    try:
        wait_until(lambda: len(listener_pids(store)) == 1, 10, what="the API's named LISTEN session")
        [old] = listener_pids(store)
        with store.engine.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": old})
        wait_until(lambda: [p for p in listener_pids(store) if p != old], 10, what="a new LISTEN session")
        cid = book(clients["website"], "+13125550196")
        wait_until(lambda: any(k == "contact" and d.get("id") == cid for k, d in events), 10,
                   what="live events through the new session")
    finally:
        reader.kill()
