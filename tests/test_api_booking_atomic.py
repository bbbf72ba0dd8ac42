"""A booking through the HTTP API is one transaction: the callback, its tie to the booking token
and the Idempotency-Key's answer commit together or not at all (issue 19). A fault is injected in
the database itself (a trigger that fails the second or third write), so the API process cannot
tell it from a crash between the writes: nothing may be left half-stored, and the retry with the
same Idempotency-Key makes exactly one callback its token can see."""
from __future__ import annotations

import pytest
from sqlalchemy import text

from esl_cb.db.store import Store

from .api_helpers import api, clients, problem, store  # noqa: F401  (fixtures)

FAULT_FUNCTION = """
CREATE FUNCTION test_fault() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'injected fault';
END
$$
"""
FAULTS = {
    # the tie of the callback to the token that booked it
    "tie": "CREATE TRIGGER test_fault BEFORE INSERT ON api_bookings FOR EACH ROW EXECUTE FUNCTION test_fault()",
    # the Idempotency-Key's answer (its status set from 0, running, to the answer's)
    "answer": "CREATE TRIGGER test_fault BEFORE INSERT OR UPDATE ON idempotency_keys FOR EACH ROW "
              "WHEN (NEW.status <> 0) EXECUTE FUNCTION test_fault()",
}
TABLES = {"tie": "api_bookings", "answer": "idempotency_keys"}


def count(store: Store, sql: str) -> int:
    with store.engine.connect() as conn:
        return conn.execute(text(sql)).scalar()


@pytest.fixture
def fault(store):
    def inject(where: str) -> None:
        with store.engine.begin() as conn:
            conn.execute(text(FAULT_FUNCTION))
            conn.execute(text(FAULTS[where]))
    yield inject
    with store.engine.begin() as conn:
        for table in TABLES.values():
            conn.execute(text(f"DROP TRIGGER IF EXISTS test_fault ON {table}"))
        conn.execute(text("DROP FUNCTION IF EXISTS test_fault()"))


def lift(store: Store, where: str) -> None:
    with store.engine.begin() as conn:
        conn.execute(text(f"DROP TRIGGER test_fault ON {TABLES[where]}"))


@pytest.mark.parametrize("where", ["tie", "answer"])
def test_a_fault_between_the_writes_stores_nothing_and_the_retry_books_once(clients, store, fault, where):
    body = {"number": "+13125550160", "skill": "support", "data": {"ticket": "77"}}
    key = {"Idempotency-Key": f"fault-{where}"}
    fault(where)
    failed = clients["website"].post("/api/v1/callbacks", json=body, headers=key)
    assert failed.status_code == 500, failed.text
    # Nothing half-stored: no callback its token cannot see, no audit row of a booking that is not there.
    assert count(store, "SELECT count(*) FROM contacts") == 0
    assert count(store, "SELECT count(*) FROM api_bookings") == 0
    assert count(store, "SELECT count(*) FROM audit_log WHERE action = 'callback schedule'") == 0
    assert count(store, "SELECT count(*) FROM idempotency_keys WHERE status <> 0") == 0

    lift(store, where)
    retry = clients["website"].post("/api/v1/callbacks", json=body, headers=key)
    assert retry.status_code == 201, retry.text
    again = clients["website"].post("/api/v1/callbacks", json=body, headers=key)
    assert again.status_code == 201 and again.headers["idempotent-replayed"] == "true"
    assert again.json() == retry.json()
    assert count(store, "SELECT count(*) FROM contacts") == 1
    mine = clients["website"].get(retry.headers["location"])
    assert mine.status_code == 200 and mine.json()["data"] == {"ticket": "77"}
    assert [c["id"] for c in clients["website"].get("/api/v1/callbacks").json()["items"]] == [retry.json()["id"]]


def test_a_booking_without_a_key_is_tied_to_its_token_in_its_own_transaction(clients, store, fault):
    fault("tie")
    failed = clients["crm"].post("/api/v1/callbacks", json={"number": "+13125550161", "skill": "sales"})
    assert failed.status_code == 500
    assert count(store, "SELECT count(*) FROM contacts") == 0
    lift(store, "tie")
    booked = clients["crm"].post("/api/v1/callbacks", json={"number": "+13125550161", "skill": "sales"})
    assert booked.status_code == 201
    assert clients["crm"].get(booked.headers["location"]).status_code == 200
    problem(clients["website"].get(booked.headers["location"]), 404, "not_found")
