"""The HTTP API's queues, agents, reports and live events (issue 19), against a real `esl-cb api`
process and PostgreSQL."""
from __future__ import annotations

import json

import gevent
from sqlalchemy import text

from esl_cb.domain.states import AgentState

from .api_helpers import api, clients, problem, store  # noqa: F401  (fixtures)
from .fixtures import wait_until


def book(clients, number: str, skill: str = "support", token: str = "website", **extra) -> int:
    r = clients[token].post("/api/v1/callbacks", json={"number": number, "skill": skill, **extra})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def test_queues_count_waiting_callers_and_callbacks_and_agents(clients, store):
    book(clients, "+13125550100")
    book(clients, "+13125550101", priority=9)
    live = store.create_contact("call-1", "+13125550150", "3125557000", "t", "+13125550150", "3125557000")
    from esl_cb.domain.queue import Priority
    store.queue_contact(live, "support", Priority(5, 0, 5))
    store.set_agent_state("alice", AgentState.AVAILABLE, list(AgentState))
    for token in ("website", "alice", "wall"):
        doc = clients[token].get("/api/v1/queues").json()
        support = next(q for q in doc["queues"] if q["skill"] == "support")
        assert (support["waiting_callers"], support["waiting_callbacks"], support["being_served"]) == (1, 2, 0)
        assert support["agents"] == {"Available": 1} and support["agents_available"] == 1 and support["open"]
        assert "contacts" not in support
    problem(clients["website"].get("/api/v1/queues", params={"detail": "true"}), 403, "forbidden")
    rows = next(q for q in clients["wall"].get("/api/v1/queues", params={"detail": "true"}).json()["queues"]
                if q["skill"] == "support")["contacts"]
    # SPEC 3 order: priority 9, then 5 (the live caller), then 0.
    assert [(r["place"], r["id"], r["kind"]) for r in rows] == [(1, 2, "callback"), (2, 3, "live"), (3, 1, "callback")]
    assert rows[0]["number"] == "+13125550101" and rows[0]["waiting_sec"] >= 0 and rows[0]["state"] == "callback_queued"


def test_agents_as_each_role_sees_them(clients, store):
    everyone = clients["wall"].get("/api/v1/agents").json()["agents"]
    assert [(a["name"], a["state"], a["skills"]) for a in everyone] == [("alice", "LoggedOut", ["support"]),
                                                                         ("bob", "LoggedOut", ["sales"])]
    assert everyone[0]["in_state_sec"] >= 0
    assert [a["name"] for a in clients["alice"].get("/api/v1/agents").json()["agents"]] == ["alice"]
    problem(clients["website"].get("/api/v1/agents"), 403, "forbidden")
    assert clients["alice"].get("/api/v1/agents/alice").json()["contact"] is None
    problem(clients["alice"].get("/api/v1/agents/bob"), 403, "forbidden")
    problem(clients["wall"].get("/api/v1/agents/nobody"), 404, "not_found")


def test_agent_state_changes_through_the_api(clients, store):
    r = clients["alice"].put("/api/v1/agents/alice/state", json={"state": "login"})
    assert r.status_code == 200 and r.json()["before"] == "LoggedOut" and r.json()["after"] == "Unavailable"
    assert clients["alice"].put("/api/v1/agents/alice/state", json={"state": "available"}).json()["after"] == \
        "Available"
    problem(clients["alice"].put("/api/v1/agents/alice/state", json={"state": "available"}), 409, "wrong_state")
    problem(clients["alice"].put("/api/v1/agents/alice/state", json={"state": "lunch"}), 422, "invalid_input", "state")
    problem(clients["alice"].put("/api/v1/agents/alice/state", json={"state": "break"}), 422, "invalid_input",
            "reason")
    assert clients["alice"].put("/api/v1/agents/alice/state", json={"state": "break", "reason": "lunch"}).json()[
        "after"] == "OnBreak"                         # issue 20: a break is a state of its own, with its reason
    assert store.agent("alice").state_reason == "lunch"
    doc = clients["alice"].get("/api/v1/agents").json()["agents"][0]
    assert (doc["state"], doc["reason"], doc["not_offered_because"]) == ("OnBreak", "lunch", "on break (lunch)")
    # During a call a break (or logout) waits for its end: 200, when_call_ends, the agent still OnCall.
    store.set_agent_state("alice", AgentState.ON_CALL, list(AgentState))
    r = clients["alice"].put("/api/v1/agents/alice/state", json={"state": "break", "reason": "meeting"})
    assert r.status_code == 200 and r.json()["when_call_ends"] and r.json()["before"] == "OnCall"
    doc = clients["alice"].get("/api/v1/agents").json()["agents"][0]
    assert (doc["state"], doc["pending_state"]) == ("OnCall", "OnBreak")
    store.set_agent_state("alice", AgentState.AVAILABLE, list(AgentState))     # the call ends: the break starts
    assert (store.agent("alice").state, store.agent("alice").state_reason) == ("OnBreak", "meeting")
    problem(clients["alice"].put("/api/v1/agents/alice/state", json={"state": "end_wrap_up"}), 409, "wrong_state")
    problem(clients["alice"].put("/api/v1/agents/bob/state", json={"state": "login"}), 403, "forbidden")
    problem(clients["website"].put("/api/v1/agents/bob/state", json={"state": "login"}), 403, "forbidden")
    assert clients["wall"].put("/api/v1/agents/bob/state", json={"state": "available"}).status_code == 200
    problem(clients["wall"].put("/api/v1/agents/nobody/state", json={"state": "login"}), 404, "not_found")
    log = [(a["operator"], a["action"], a["detail"]) for a in store.audit_log()]
    assert ("token:alice", "agent break", "lunch") in log and ("token:wall", "agent state", "LoggedOut -> Available") \
        in log


def test_an_agent_sees_the_contact_offered_with_its_data_and_history(clients, store):
    old = book(clients, "+13125550160", data={"ticket": "1"})
    clients["wall"].delete(f"/api/v1/callbacks/{old}")
    cid = book(clients, "+13125550160", data={"ticket": "4711", "name": "Ada"})
    store.set_agent_state("alice", AgentState.AVAILABLE, list(AgentState))
    offer = store.claim_offer("leg-1")
    assert offer.contact_id == cid
    doc = clients["alice"].get("/api/v1/agents/alice").json()
    assert doc["state"] == "Offered" and doc["contact"]["id"] == cid
    assert (doc["contact"]["number"], doc["contact"]["data"], doc["contact"]["kind"]) == \
        ("+13125550160", {"ticket": "4711", "name": "Ada"}, "callback")
    assert [(h["id"], h["outcome"]) for h in doc["contact"]["history"]] == [(old, "cancelled")]


def test_a_reserved_callback_is_offered_only_to_its_agent(clients, store):
    store.add_agent("carol", "user/1003", ["support"])
    first = book(clients, "+13125550170")
    second = book(clients, "+13125550171")
    assert clients["wall"].patch(f"/api/v1/callbacks/{first}", json={"agent": "carol"}).status_code == 200
    store.set_agent_state("alice", AgentState.AVAILABLE, list(AgentState))      # idle longest, but not carol
    offer = store.claim_offer("leg-a")
    assert (offer.agent_name, offer.contact_id) == ("alice", second)
    assert store.claim_offer("leg-b") is None                                     # nobody else may take it
    store.set_agent_state("carol", AgentState.AVAILABLE, list(AgentState))
    offer = store.claim_offer("leg-c")
    assert (offer.agent_name, offer.contact_id) == ("carol", first)


def test_reports_of_today(clients, store):
    a = book(clients, "+13125550180")
    clients["wall"].delete(f"/api/v1/callbacks/{a}")
    with store.engine.begin() as conn:            # one answered, 90 s after it arrived
        conn.execute(text("UPDATE contacts SET connected_at = arrived_at + interval '90 seconds' WHERE id = :i"),
                     {"i": a})
    doc = clients["wall"].get("/api/v1/reports/today", params={"tz": "America/Chicago"}).json()
    assert doc["contacts"] == 1 and doc["outcomes"] == {"cancelled": 1} and doc["callback_rate"] == 1.0
    assert len(doc["waits_by_hour"]) == 24 and doc["tz"] == "America/Chicago"
    answered = [h for h in doc["waits_by_hour"] if h["answered"]]
    assert len(answered) == 1 and answered[0]["average_wait_sec"] == 90.0
    problem(clients["wall"].get("/api/v1/reports/today", params={"tz": "Mars/Olympus"}), 422, "invalid_input", "tz")
    problem(clients["website"].get("/api/v1/reports/today"), 403, "forbidden")
    problem(clients["alice"].get("/api/v1/reports/today"), 403, "forbidden")


class Stream:
    """An open /api/v1/events, read in a greenlet into `events` [(event, data)]."""

    def __init__(self, client) -> None:
        self.events: list[tuple[str, dict]] = []
        self.status = 0
        self.client = client
        self.reader = gevent.spawn(self._read)
        wait_until(lambda: self.events and self.events[0][0] == "hello", 10, what="the stream's hello")

    def _read(self) -> None:
        with self.client.stream("GET", "/api/v1/events", timeout=30) as r:
            self.status = r.status_code
            kind = None
            for line in r.iter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: ") and kind:
                    self.events.append((kind, json.loads(line[6:])))

    def contacts(self) -> list[tuple[int, str]]:
        return [(d["id"], d["state"]) for k, d in self.events if k == "contact"]

    def close(self) -> None:
        self.reader.kill()


def test_live_events_show_each_token_what_it_may_see(clients, store):
    streams = {name: Stream(clients[name]) for name in ("wall", "website", "crm", "alice")}
    try:
        assert streams["wall"].events[0][1]["listening"] is True
        mine = book(clients, "+13125550190")
        wait_until(lambda: (mine, "callback_queued") in streams["wall"].contacts(), 5, what="the booking's event")
        wait_until(lambda: (mine, "callback_queued") in streams["website"].contacts(), 5, what="the booker's event")
        store.set_agent_state("alice", AgentState.AVAILABLE, list(AgentState))
        wait_until(lambda: ("agent", "alice") in [(k, d.get("name")) for k, d in streams["alice"].events], 5,
                   what="alice's own state")
        store.claim_offer("leg-1")
        wait_until(lambda: (mine, "offered") in streams["alice"].contacts(), 5, what="the offer to alice")
        wait_until(lambda: (mine, "offered") in streams["website"].contacts(), 5, what="the booker's offer event")
        store.set_agent_state("bob", AgentState.AVAILABLE, list(AgentState))
        wait_until(lambda: ("agent", "bob") in [(k, d.get("name")) for k, d in streams["wall"].events], 5,
                   what="bob's state on the supervisor's stream")
        gevent.sleep(0.3)          # what must not arrive has had the time the others took
        assert streams["crm"].contacts() == []                               # not its booking
        assert [d.get("name") for k, d in streams["alice"].events if k == "agent"] == ["alice", "alice"]
        assert all(k != "agent" for k, _ in streams["website"].events)
        assert any(k == "wake" for k, _ in streams["wall"].events) and \
            all(k != "wake" for k, _ in streams["website"].events)
    finally:
        for s in streams.values():
            s.close()


def test_the_board_comes_a_page_at_a_time_with_whole_counts(clients, store):
    """detail=true with a limit: those an agent has first, then the waiting ones by place; the pages
    joined by their cursors are the whole queue in order; the counts are always whole."""
    from esl_cb.domain.queue import Priority
    ids = [book(clients, f"+1312555{n:04d}", priority=n % 3) for n in range(7)]
    live = store.create_contact("call-9", "+13125559999", "3125557000", "t", "+13125559999", "3125557000")
    store.queue_contact(live, "support", Priority(1, 0, 1))
    store.set_agent_state("alice", AgentState.AVAILABLE, list(AgentState))
    offered = store.claim_offer("leg-1")                       # one contact offered to alice
    assert offered is not None and offered.contact_id != live
    whole = next(q for q in clients["wall"].get("/api/v1/queues", params={"detail": "true", "limit": 500})
                 .json()["queues"] if q["skill"] == "support")
    assert whole["next_cursor"] is None and len(whole["contacts"]) == 8
    assert [(r["id"], r["place"]) for r in whole["contacts"][:1]] == [(offered.contact_id, None)]
    paged, cursor, pages = [], None, 0
    while True:
        params = {"detail": "true", "limit": 3, "skill": "support", **({"cursor": cursor} if cursor else {})}
        doc = clients["wall"].get("/api/v1/queues", params=params).json()
        assert [q["skill"] for q in doc["queues"]] == ["support"]
        q = doc["queues"][0]
        assert (q["waiting_callers"], q["waiting_callbacks"], q["being_served"]) == (1, 6, 1)
        paged += q["contacts"]
        pages += 1
        cursor = q["next_cursor"]
        if cursor is None:
            break
    def rows(contacts):
        return [(r["id"], r["place"], r["state"]) for r in contacts]
    assert pages == 3 and rows(paged) == rows(whole["contacts"])
    assert [r["place"] for r in paged if r["place"]] == list(range(1, 8))
    assert set(r["id"] for r in paged) == set(ids) | {live}
    problem(clients["wall"].get("/api/v1/queues", params={"detail": "true", "cursor": "3"}), 422, "invalid_input",
            "cursor")
    problem(clients["wall"].get("/api/v1/queues", params={"skill": "nowhere"}), 404, "not_found", "skill")
    problem(clients["wall"].get("/api/v1/queues", params={"detail": "true", "limit": 501}), 422, "invalid_input")
