"""GET /api/v1/events with Last-Event-ID (issue 19): a client that reconnects gets exactly the
events it missed, in order, then the live ones; an id no longer kept gets a `reset` event."""
from __future__ import annotations

import json

import gevent
from sqlalchemy import text

from esl_cb.domain.states import AgentState

from .api_helpers import api, clients, store  # noqa: F401  (fixtures)
from .fixtures import wait_until


class Stream:
    """An open /api/v1/events, read in a greenlet into `events` [(id, event, data)]."""

    def __init__(self, client, last_event_id: str | None = None) -> None:
        self.events: list[tuple[int | None, str, dict]] = []
        self.last_id: str | None = None        # the SSE id as sent: what a client sends back as Last-Event-ID
        headers = {"Last-Event-ID": last_event_id} if last_event_id is not None else {}
        self.reader = gevent.spawn(self._read, client, headers)
        wait_until(lambda: self.events and self.events[0][1] == "hello", 10, what="the stream's hello")

    def _read(self, client, headers) -> None:
        with client.stream("GET", "/api/v1/events", headers=headers, timeout=30) as r:
            assert r.status_code == 200
            event_id = kind = None
            for line in r.iter_lines():
                if line.startswith("id: "):
                    self.last_id = line[4:]
                    event_id = int(line[4:].split(".")[0])
                elif line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: ") and kind:
                    self.events.append((event_id, kind, json.loads(line[6:])))
                elif line == "":
                    event_id = kind = None

    def ids(self) -> list[int]:
        return [i for i, _, _ in self.events if i is not None]

    def close(self) -> None:
        self.reader.kill()


def book(client, number: str, skill: str = "support") -> int:
    r = client.post("/api/v1/callbacks", json={"number": number, "skill": skill})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def kept(store, after: int) -> list[tuple[int, dict]]:
    with store.engine.connect() as conn:
        return [(i, json.loads(d)) for i, d in conn.execute(text(
            "SELECT id, doc FROM api_events WHERE id > :a ORDER BY id"), {"a": after})]


def test_a_reconnect_with_last_event_id_gets_exactly_what_it_missed_in_order(clients, store):
    first = Stream(clients["wall"])
    try:
        seen = book(clients["website"], "+13125550180")
        wait_until(lambda: any(d.get("id") == seen and k == "contact" for _, k, d in first.events), 5,
                   what="the first booking's event")
        wait_until(lambda: first.ids() and first.ids()[-1] == kept(store, 0)[-1][0], 5, what="every event so far")
        last = first.ids()[-1]
    finally:
        first.close()
    assert first.ids() == sorted(first.ids()) and len(set(first.ids())) == len(first.ids())

    # Disconnected: a booking (its insert and its tie to the token), an agent's state, a cancel.
    missed_booking = book(clients["crm"], "+13125550181", "sales")
    store.set_agent_state("bob", AgentState.AVAILABLE, list(AgentState))
    assert clients["wall"].delete(f"/api/v1/callbacks/{seen}").status_code == 200
    missed = kept(store, last)
    assert [(d["kind"], d.get("id"), d.get("state")) for _, d in missed if "change" not in d] == [
        ("contact", missed_booking, "callback_queued"), ("agent", store.agent("bob").id, "Available"),
        ("contact", seen, "ended")]

    again = Stream(clients["wall"], str(last))
    try:
        wait_until(lambda: len(again.ids()) >= len(missed), 5, what="the missed events")
        gevent.sleep(0.2)
        assert again.ids() == [i for i, _ in missed]                       # exactly those, in order
        assert [d for _, _, d in again.events[1:]] == [{"event_id": i, **d} for i, d in missed]
        live = book(clients["website"], "+13125550182")
        wait_until(lambda: any(d.get("id") == live for _, _, d in again.events), 5, what="a live event after them")
        assert again.ids() == sorted(again.ids()) and len(set(again.ids())) == len(again.ids())
    finally:
        again.close()


def test_a_booking_token_replays_only_its_own_events(clients, store):
    first = Stream(clients["website"])
    try:
        mine = book(clients["website"], "+13125550183")
        wait_until(lambda: any(d.get("id") == mine for _, _, d in first.events), 5, what="my booking's event")
        last = first.ids()[-1]
    finally:
        first.close()
    theirs = book(clients["crm"], "+13125550184", "sales")
    assert clients["website"].delete(f"/api/v1/callbacks/{mine}").status_code == 200
    again = Stream(clients["website"], str(last))
    try:
        wait_until(lambda: any(d.get("state") == "ended" for _, _, d in again.events), 5, what="my cancel")
        assert {d.get("id") for _, k, d in again.events if k == "contact"} == {mine}
        assert theirs not in {d.get("id") for _, _, d in again.events}
    finally:
        again.close()


def test_an_id_no_longer_kept_gets_a_reset(clients, store):
    book(clients["website"], "+13125550185")
    oldest = kept(store, 0)[0][0]
    with store.engine.begin() as conn:
        conn.execute(text("DELETE FROM api_events WHERE id <= :i"), {"i": oldest})      # pruned
    for n, gone in enumerate((str(oldest), "not-an-id", "99999999999")):
        s = Stream(clients["wall"], gone)
        try:
            wait_until(lambda: len(s.events) >= 2, 5, what="the reset")
            assert s.events[1][:2] == (None, "reset"), s.events
            assert "read the state again" in s.events[1][2]["why"]
            live = book(clients["website"], f"+1312555019{n}")
            wait_until(lambda: any(d.get("id") == live for _, _, d in s.events), 5, what="live events after it")
        finally:
            s.close()


def test_the_log_bounds_itself_without_an_api_process(store):
    """Every 1000th event, esl_cb_event() drops the events 100,000 and more behind it (a site with no
    API running keeps no more than that); the API also prunes by age (--event-log-hours)."""
    with store.engine.begin() as conn:
        conn.execute(text("DELETE FROM api_events"))
        conn.execute(text("INSERT INTO api_events (id, at, doc) SELECT g, now(), '{}' FROM generate_series(1, 5) g"))
        conn.execute(text("INSERT INTO api_events (id, at, doc) VALUES (100500, now(), '{}')"))
        conn.execute(text("SELECT setval(pg_get_serial_sequence('api_events', 'id'), 100999)"))
        conn.execute(text("""SELECT esl_cb_event('{"kind": "test"}'::json)"""))          # event 101000
        kept = list(conn.execute(text("SELECT id FROM api_events ORDER BY id")).scalars())
    assert kept == [100500, 101000]

    # The prune runs in the controllers' transactions: a row someone holds (the API's purge) is
    # skipped, not waited on; a later prune takes it.
    with store.engine.begin() as conn:
        conn.execute(text("INSERT INTO api_events (id, at, doc) SELECT g, now(), '{}' FROM generate_series(1, 3) g"))
        conn.execute(text("SELECT setval(pg_get_serial_sequence('api_events', 'id'), 101999)"))
    with store.engine.connect() as purge, store.engine.begin() as controller:
        purge.execute(text("SELECT id FROM api_events WHERE id = 2 FOR UPDATE"))
        controller.execute(text("SET LOCAL lock_timeout = '1s'"))
        controller.execute(text("""SELECT esl_cb_event('{"kind": "test"}'::json)"""))      # event 102000
        assert list(controller.execute(text("SELECT id FROM api_events WHERE id < 100 ORDER BY id")).scalars()) == [2]
        purge.rollback()
    from esl_cb.db.api_records import ApiRecords
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE api_events SET at = now() - interval '7 hours' WHERE id = 100500"))
    assert ApiRecords(store.engine).purge_events(6.0) == 1


def event(conn, n: str) -> int:
    return conn.execute(text("SELECT esl_cb_event(json_build_object('kind', 'test', 'n', CAST(:n AS text)))"),
                        {"n": n}).scalar_one()


def test_an_event_that_commits_after_a_later_one_is_not_lost(clients, store):
    """Event ids come from a sequence at insert, events are visible at commit: a transaction can
    commit its lower id after another's higher one. Neither a reconnect (Last-Event-ID: the higher
    one) nor a stream that replayed the higher one may lose the lower one."""
    with store.engine.begin() as conn:
        start = event(conn, "start")
    for reconnect in (True, False):
        slow, s = store.engine.connect(), None
        try:
            slow.begin()
            low = event(slow, "low")                   # in flight...
            if reconnect:                              # gets `high` live
                s = Stream(clients["wall"])
            with store.engine.begin() as conn:
                high = event(conn, "high")             # ...while a later one commits first
            if not reconnect:                          # gets `high` replayed, then `low` must come live
                s = Stream(clients["wall"], str(start))
            assert low < high
            wait_until(lambda: high in s.ids(), 5, what="the later event")
            if reconnect:                              # the client saw `high` and went away
                s.close()
                last = s.last_id
            slow.commit()                              # now `low` commits
            if reconnect:
                s = Stream(clients["wall"], last)
            wait_until(lambda: low in s.ids(), 5, what=f"the earlier event ({'reconnect' if reconnect else 'live'})")
            gevent.sleep(0.2)
            assert sorted(s.ids()) == sorted(set(s.ids()))     # each once
        finally:
            if s is not None:
                s.close()
            slow.close()
