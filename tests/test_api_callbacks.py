"""The HTTP API's callbacks (issue 19), against a real `esl-cb api` process and PostgreSQL: every
endpoint with good and bad input, answering the documented status and problem code."""
from __future__ import annotations

import json

import gevent
import pytest
from sqlalchemy import text

from esl_cb.app.changes import CallerIds
from esl_cb.db.store import Store

from .api_helpers import api, clients, make_token, problem, store  # noqa: F401  (fixtures)


def count(store: Store, sql: str) -> int:
    with store.engine.connect() as conn:
        return conn.execute(text(sql)).scalar()


def test_the_openapi_description_is_served_without_a_token(api):
    with api.client() as c:
        doc = c.get("/api/v1/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    for path in ("/api/v1/callbacks", "/api/v1/callbacks/{contact_id}", "/api/v1/queues", "/api/v1/agents",
                 "/api/v1/agents/{name}/state", "/api/v1/events", "/api/v1/reports/today"):
        assert path in doc["paths"], path
    assert set(doc["paths"]["/api/v1/callbacks/{contact_id}"]) == {"get", "patch", "delete"}
    assert "HTTPBearer" in doc["components"]["securitySchemes"]


def test_no_token_a_wrong_token_and_a_revoked_one_are_401(api, store):
    with api.client() as c:
        r = c.post("/api/v1/callbacks", json={"number": "+13125550100", "skill": "support"})
        assert r.headers["www-authenticate"].startswith("Bearer")
        problem(r, 401, "unauthenticated")
    with api.client("ecb_not-a-token") as c:
        problem(c.get("/api/v1/callbacks"), 401, "unauthenticated")
    secret, _ = make_token(store, "gone", "supervisor")
    from esl_cb.app.tokens import TokenService
    TokenService(store).revoke("gone")
    with api.client(secret) as c:
        problem(c.get("/api/v1/queues"), 401, "unauthenticated")
    assert count(store, "SELECT count(*) FROM contacts") == 0


def test_a_booking_answers_201_with_its_location_place_and_wait(api, store, clients):
    CallerIds(store).set("support", "+13125557000")
    r = clients["website"].post("/api/v1/callbacks", json={"number": "312-555-0100", "skill": "support",
                                                           "data": {"ticket": "4711"}, "delay": 3})
    assert r.status_code == 201, r.text
    doc = r.json()
    assert r.headers["location"] == "/api/v1/callbacks/1" == doc["location"]
    assert (doc["id"], doc["state"], doc["position"], doc["number"], doc["caller_id"]) == \
        (1, "callback_queued", 1, "+13125550100", "+13125557000")
    assert doc["ewt_sec"] == 3600                              # nobody staffed: "an hour or more"
    c = store.contact(1)
    assert (c.callback_caller_id, c.call_delay_sec) == ("+13125557000", 3) and '"4711"' in c.callback_options
    assert store.audit_log()[0]["operator"] == "token:website"
    got = clients["website"].get("/api/v1/callbacks/1").json()
    assert (got["state"], got["position"], got["data"], got["attempt_results"], got["outcome"]) == \
        ("callback_queued", 1, {"ticket": "4711"}, [], None)
    second = clients["crm"].post("/api/v1/callbacks", json={"number": "+13125550100", "skill": "support",
                                                            "caller_id": "+13125559999"})
    assert second.status_code == 200 and second.json()["merged_into"] == 1     # joined the open callback
    assert clients["crm"].get("/api/v1/callbacks/1").status_code == 200        # now it is the crm's too


@pytest.mark.parametrize("body,status,code,where", [
    ({"number": "312 555 0100 ext 12", "skill": "support"}, 422, "invalid_number", "number"),
    ({"number": "hello", "skill": "support"}, 422, "invalid_number", "number"),
    ({"number": "+13125550100", "skill": "support", "caller_id": "5000"}, 422, "invalid_number", "caller_id"),
    ({"number": "+13125550100", "skill": "nobody"}, 422, "unknown_skill", "skill"),
    ({"number": "+13125550100", "skill": "support", "data": {"note": "x" * 5000}}, 422, "invalid_input", "data"),
    ({"number": "+13125550100", "skill": "support", "data": ["a"]}, 422, "invalid_input", "data"),
    ({"number": "+13125550100", "skill": "support", "delay": 60}, 422, "invalid_input", "delay"),
    ({"number": "+13125550100", "skill": "support", "priority": "high"}, 422, "invalid_input", "priority"),
    ({"number": "+13125550100", "skill": "support", "not_before": "tomorrow"}, 422, "invalid_input", "not_before"),
    ({"number": "+13125550100", "skill": "support", "window": {"start": "+7200", "end": "+3600"}}, 422,
     "invalid_input", "window.end"),
    ({"number": "+13125550100", "skill": "support", "colour": "red"}, 422, "invalid_input", "colour"),
    ({"skill": "support"}, 422, "invalid_input", "number"),
    ({"number": "+19005550100", "skill": "support"}, 422, "policy_refused", "number"),
])
def test_a_bad_booking_is_a_problem_naming_the_field(clients, store, body, status, code, where):
    problem(clients["website"].post("/api/v1/callbacks", json=body), status, code, where)
    assert count(store, "SELECT count(*) FROM contacts") == 0


def test_a_body_that_is_too_large_or_not_json(clients, store):
    huge = json.dumps({"number": "+13125550100", "skill": "support", "data": {"x": "y" * 70_000}})
    problem(clients["website"].post("/api/v1/callbacks", content=huge, headers={"Content-Type": "application/json"}),
            413, "request_too_large")
    problem(clients["website"].post("/api/v1/callbacks", content=b"{not json",
                                    headers={"Content-Type": "application/json"}), 422, "invalid_input")
    assert count(store, "SELECT count(*) FROM contacts") == 0


def test_the_fourth_booking_of_a_number_in_a_day_is_429(clients, store):
    for skill, token in (("support", "website"), ("sales", "website")):
        assert clients[token].post("/api/v1/callbacks", json={"number": "+13125550102", "skill": skill}).status_code \
            == 201
    store.add_skill("billing")
    store.add_skill("vip")
    assert clients["crm"].post("/api/v1/callbacks", json={"number": "+13125550102", "skill": "billing"}).status_code \
        == 201
    problem(clients["crm"].post("/api/v1/callbacks", json={"number": "+13125550102", "skill": "vip"}), 429,
            "rate_limited", "number")


def test_a_repeated_idempotency_key_makes_one_callback_and_answers_the_same(clients, store):
    body = {"number": "+13125550103", "skill": "support", "priority": 5}
    key = {"Idempotency-Key": "order-4711"}
    first = clients["website"].post("/api/v1/callbacks", json=body, headers=key)
    again = clients["website"].post("/api/v1/callbacks", json=body, headers=key)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json() and again.headers["location"] == first.headers["location"]
    assert again.headers["idempotent-replayed"] == "true" and "idempotent-replayed" not in first.headers
    assert count(store, "SELECT count(*) FROM contacts") == 1
    assert count(store, "SELECT count(*) FROM audit_log WHERE action = 'callback schedule'") == 1
    problem(clients["website"].post("/api/v1/callbacks", json={**body, "priority": 6}, headers=key), 422,
            "idempotency_key_reused", "Idempotency-Key")
    # Keys are the token's own: another token's same key is another request.
    other = clients["crm"].post("/api/v1/callbacks", json={"number": "+13125550104", "skill": "support"}, headers=key)
    assert other.status_code == 201 and other.json()["id"] == 2
    problem(clients["website"].post("/api/v1/callbacks", json=body, headers={"Idempotency-Key": "x" * 300}), 422,
            "invalid_input", "Idempotency-Key")


def test_a_key_past_its_24_hours_is_a_new_request(clients, store):
    key = {"Idempotency-Key": "order-old"}
    first = clients["website"].post("/api/v1/callbacks", json={"number": "+13125550109", "skill": "support"},
                                    headers=key)
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE idempotency_keys SET created_at = now() - interval '25 hours'"))
    later = clients["website"].post("/api/v1/callbacks", json={"number": "+13125550110", "skill": "support"},
                                    headers=key)
    assert first.status_code == later.status_code == 201 and later.json()["id"] != first.json()["id"]
    assert "idempotent-replayed" not in later.headers
    # The key now holds the later answer, and replays it.
    again = clients["website"].post("/api/v1/callbacks", json={"number": "+13125550110", "skill": "support"},
                                    headers=key)
    assert again.headers["idempotent-replayed"] == "true" and again.json() == later.json()
    assert count(store, "SELECT count(*) FROM idempotency_keys") == 1


def test_a_failed_request_does_not_keep_its_key(clients, store):
    key = {"Idempotency-Key": "try-again"}
    problem(clients["website"].post("/api/v1/callbacks", json={"number": "+13125550105", "skill": "billing"},
                                    headers=key), 422, "unknown_skill")
    store.add_skill("billing")
    assert clients["website"].post("/api/v1/callbacks", json={"number": "+13125550105", "skill": "billing"},
                                   headers=key).status_code == 201


def test_the_same_key_sent_twice_at_once_makes_one_callback(clients, store):
    body = {"number": "+13125550106", "skill": "support"}
    answers = [gevent.spawn(clients[name].post, "/api/v1/callbacks", json=body,
                            headers={"Idempotency-Key": "at-once"}) for name in ("website", "website", "website")]
    gevent.joinall(answers, timeout=10, raise_error=True)
    statuses = sorted(a.value.status_code for a in answers)
    assert statuses.count(201) >= 1 and set(statuses) <= {201, 409}, statuses
    assert count(store, "SELECT count(*) FROM contacts") == 1


def test_a_booking_token_sees_only_its_own_bookings(clients, store):
    mine = clients["website"].post("/api/v1/callbacks", json={"number": "+13125550107", "skill": "support"}).json()
    theirs = clients["crm"].post("/api/v1/callbacks", json={"number": "+13125550108", "skill": "sales"}).json()
    problem(clients["website"].get(f"/api/v1/callbacks/{theirs['id']}"), 404, "not_found")
    problem(clients["website"].delete(f"/api/v1/callbacks/{theirs['id']}"), 404, "not_found")
    problem(clients["website"].patch(f"/api/v1/callbacks/{theirs['id']}", json={"not_before": "+60"}), 404,
            "not_found")
    assert [c["id"] for c in clients["website"].get("/api/v1/callbacks").json()["items"]] == [mine["id"]]
    assert {c["id"] for c in clients["wall"].get("/api/v1/callbacks").json()["items"]} == {mine["id"], theirs["id"]}
    problem(clients["alice"].get(f"/api/v1/callbacks/{mine['id']}"), 403, "forbidden")
    problem(clients["alice"].get("/api/v1/callbacks"), 403, "forbidden")
    problem(clients["alice"].post("/api/v1/callbacks", json={"number": "+13125550109", "skill": "support"}), 403,
            "forbidden")
    problem(clients["wall"].get("/api/v1/callbacks/999"), 404, "not_found")


def test_the_list_filters_and_pages(clients, store):
    for i in range(5):
        clients["wall"].post("/api/v1/callbacks", json={"number": f"+1312555011{i}", "skill": "support"})
    clients["wall"].post("/api/v1/callbacks", json={"number": "+13125550120", "skill": "sales"})
    clients["wall"].delete("/api/v1/callbacks/1")
    page = clients["wall"].get("/api/v1/callbacks", params={"skill": "support", "limit": 2}).json()
    assert [c["id"] for c in page["items"]] == [5, 4] and page["next_cursor"] == "4"
    page = clients["wall"].get("/api/v1/callbacks", params={"skill": "support", "limit": 2,
                                                            "cursor": page["next_cursor"]}).json()
    assert [c["id"] for c in page["items"]] == [3, 2]
    page = clients["wall"].get("/api/v1/callbacks", params={"skill": "support", "limit": 2, "cursor": "2"}).json()
    assert [c["id"] for c in page["items"]] == [1] and page["next_cursor"] is None
    assert [c["id"] for c in clients["wall"].get("/api/v1/callbacks", params={"state": "ended"}).json()["items"]] \
        == [1]
    assert len(clients["wall"].get("/api/v1/callbacks", params={"state": "open"}).json()["items"]) == 5
    assert [c["id"] for c in clients["wall"].get("/api/v1/callbacks", params={"number": "312 555 0120"})
            .json()["items"]] == [6]
    assert clients["wall"].get("/api/v1/callbacks", params={"since": "2999-01-01T00:00:00"}).json()["items"] == []
    problem(clients["wall"].get("/api/v1/callbacks", params={"state": "lost"}), 422, "invalid_input", "state")
    problem(clients["wall"].get("/api/v1/callbacks", params={"cursor": "abc"}), 422, "invalid_input", "cursor")
    problem(clients["wall"].get("/api/v1/callbacks", params={"since": "yesterday"}), 422, "invalid_input", "since")
    problem(clients["wall"].get("/api/v1/callbacks", params={"number": "x"}), 422, "invalid_number", "number")
    problem(clients["wall"].get("/api/v1/callbacks", params={"limit": 1000}), 422, "invalid_input", "limit")


def _dialling(store: Store, cid: int) -> None:
    with store.engine.begin() as conn:
        for state in ("offered", "accepted", "dialling"):
            conn.execute(text("UPDATE contacts SET state = :s WHERE id = :id"), {"s": state, "id": cid})


def test_patch_priority_time_and_agent(clients, store):
    cid = clients["website"].post("/api/v1/callbacks", json={"number": "+13125550130", "skill": "support"}).json()["id"]
    r = clients["wall"].patch(f"/api/v1/callbacks/{cid}", json={"priority": 50, "agent": "alice",
                                                                "not_before": "2999-01-01T10:00"})
    problem(r, 422, "invalid_input", "not_before")                       # more than a year ahead
    r = clients["wall"].patch(f"/api/v1/callbacks/{cid}", json={"priority": 50, "agent": "alice", "not_before": "+600"})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["priority"] == {"initial": 50, "acceleration": 0, "max": 50} and doc["assigned_agent"] == "alice"
    assert doc["not_before"] is not None and doc["ewt_sec"] >= 590
    assert clients["wall"].patch(f"/api/v1/callbacks/{cid}", json={"agent": None, "not_before": None}).json()[
        "assigned_agent"] is None
    problem(clients["wall"].patch(f"/api/v1/callbacks/{cid}", json={"agent": "nobody"}), 422, "invalid_input", "agent")
    problem(clients["wall"].patch(f"/api/v1/callbacks/{cid}", json={"agent": "bob"}), 422, "invalid_input", "agent")
    problem(clients["wall"].patch(f"/api/v1/callbacks/{cid}", json={}), 422, "invalid_input")
    problem(clients["wall"].patch(f"/api/v1/callbacks/{cid}", json={"priority": None}), 422, "invalid_input",
            "priority")
    problem(clients["website"].patch(f"/api/v1/callbacks/{cid}", json={"priority": 99}), 403, "forbidden")
    assert clients["website"].patch(f"/api/v1/callbacks/{cid}", json={"not_before": "+60"}).status_code == 200
    _dialling(store, cid)
    problem(clients["wall"].patch(f"/api/v1/callbacks/{cid}", json={"priority": 1}), 409, "wrong_state")
    assert [a["action"] for a in store.audit_log()].count("callback change") == 3


def test_delete_cancels_and_is_409_once_dialled(clients, store):
    a = clients["website"].post("/api/v1/callbacks", json={"number": "+13125550140", "skill": "support"}).json()["id"]
    b = clients["website"].post("/api/v1/callbacks", json={"number": "+13125550141", "skill": "support"}).json()["id"]
    r = clients["website"].delete(f"/api/v1/callbacks/{a}", params={"reason": "customer called back"})
    assert r.status_code == 200 and r.json() == {"id": a, "state": "ended", "outcome": "cancelled",
                                                 "was": "callback_queued"}
    assert clients["website"].get(f"/api/v1/callbacks/{a}").json()["outcome"] == "cancelled"
    problem(clients["website"].delete(f"/api/v1/callbacks/{a}"), 409, "wrong_state")
    _dialling(store, b)
    doc = problem(clients["wall"].delete(f"/api/v1/callbacks/{b}"), 409, "wrong_state")
    assert "being dialled" in doc["detail"]
    assert store.contact(b).state == "dialling"


def test_unknown_paths_and_methods_are_problems_too(clients):
    problem(clients["wall"].get("/api/v1/nothing"), 404, "not_found")
    problem(clients["wall"].put("/api/v1/callbacks"), 405, "method_not_allowed")
    problem(clients["wall"].get("/api/v1/callbacks/abc"), 422, "invalid_input", "contact_id")
