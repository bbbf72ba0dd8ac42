"""Agents the way contact centres run them (issue 20), in the store on both dialects: wrap-up after a
conversation, the delays after a miss and OnBreak at max-no-answer, a logout or break asked during a
call, the sweep that ends what is due, and the state history that adds up to the wall time."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import text

from esl_cb.app import AgentService
from esl_cb.db.agent_states import why_not_offered
from esl_cb.db.store import Store, StoreError, utcnow
from esl_cb.domain.queue import Priority
from esl_cb.domain.states import AgentState, Miss

from .fixtures import DIALECTS, migrated_store


@pytest.fixture(params=DIALECTS)
def store(request, tmp_path):
    with migrated_store(request.param, tmp_path) as st:
        st.add_agent("alice", "user/1001", ["support"])
        yield st


def _queue(store: Store, i: int) -> int:
    cid = store.create_contact(f"call-{i}", f"+1312555{i:04d}", "3125557000", "t", f"+1312555{i:04d}", "3125557000")
    store.queue_contact(cid, "support", Priority(10, 0, 10))
    return cid


def _set(store: Store, skill: bool = True, name: str = "support", **settings) -> None:
    AgentService(store).set_settings(name, skill=skill, **settings)


def _live_call(store: Store, i: int, leg: str):
    cid = _queue(store, i)
    offer = store.claim_offer(leg)
    assert offer is not None and offer.contact_id == cid and store.accept_live(offer)
    return cid


def _agent(store: Store):
    return store.agent("alice")


def test_wrap_up_after_a_conversation_then_available_by_the_timer_or_the_sweep(store):
    _set(store, wrap_up=30)
    AgentService(store).set_agent_state("alice", "available")
    held = []
    store.hold_listener = held.append
    first = _live_call(store, 1, "leg-1")
    second = _queue(store, 2)
    done, nxt = store.complete(first, "caller hung up", claim_leg_uuid="leg-2")
    assert done and nxt is None                       # no claim with wrap-up: alice is not free
    a = _agent(store)
    assert a.state == "WrapUp" and a.contact_id is None
    assert len(held) == 1 and held[0].state is AgentState.WRAP_UP
    assert abs((held[0].until - utcnow()).total_seconds() - 30) < 2
    assert "wrap-up until" in why_not_offered(a, utcnow())
    assert store.claim_offer("leg-3") is None         # offered nothing meanwhile
    assert store.end_holds() == []                    # not due yet
    with store.engine.begin() as conn:                # as if its time passed while no controller ran
        conn.execute(text("UPDATE agents SET state_until = :t"), {"t": utcnow() - timedelta(seconds=1)})
    assert store.end_holds() == ["alice"]
    assert _agent(store).state == "Available"
    offer = store.claim_offer("leg-4")
    assert offer.contact_id == second


def test_an_agent_override_wins_and_ends_wrap_up_early(store):
    _set(store, wrap_up=30)
    _set(store, skill=False, name="alice", wrap_up=0)      # alice: no wrap-up
    AgentService(store).set_agent_state("alice", "available")
    first = _live_call(store, 1, "leg-1")
    second = _queue(store, 2)
    done, nxt = store.complete(first, "caller hung up", claim_leg_uuid="leg-2")
    assert done and nxt.contact_id == second            # freed and claimed in the same statement, as before
    _set(store, skill=False, name="alice", wrap_up=None)  # back to the skill's 30 s
    store.accept_live(nxt)
    store.complete(second, "caller hung up")
    assert _agent(store).state == "WrapUp"
    change = AgentService(store).end_wrap_up("alice")
    assert (change.before, change.after) == ("WrapUp", "Available")


@pytest.mark.parametrize("miss, delay_key, reason", [(Miss.REJECTED, "reject_delay", "rejected"),
                                                      (Miss.BUSY, "busy_delay", "busy"),
                                                      (Miss.NO_ANSWER, "no_answer_delay", "no_answer")])
def test_a_miss_holds_the_agent_for_its_own_delay_and_the_contact_keeps_its_place(store, miss, delay_key, reason):
    _set(store, reject_delay=11, busy_delay=22, no_answer_delay=33, max_no_answer=3)
    AgentService(store).set_agent_state("alice", "available")
    cid = _queue(store, 1)
    queued_at = store.contact(cid).queued_at
    offer = store.claim_offer("leg-1")
    hold = store.offer_failed(offer, refused=True, reason="declined", miss=miss)
    expected = {"reject_delay": 11, "busy_delay": 22, "no_answer_delay": 33}[delay_key]
    a = _agent(store)
    assert (a.state, a.state_reason, a.missed_in_a_row) == ("Refused", reason, 1)
    assert abs((hold.until - utcnow()).total_seconds() - expected) < 2
    c = store.contact(cid)
    assert c.state == "queued" and c.queued_at == queued_at
    assert store.claim_offer("leg-2") is None          # not offered during the delay
    assert "delay until" in why_not_offered(a, utcnow())


def test_max_no_answer_misses_in_a_row_put_the_agent_on_break(store):
    _set(store, reject_delay=0, max_no_answer=2)
    AgentService(store).set_agent_state("alice", "available")
    with store.engine.begin() as conn:        # a miss long ago, then an answer: the row starts again
        conn.execute(text("UPDATE agents SET missed_in_a_row = 1"))
    answered = _live_call(store, 0, "leg-0")
    assert _agent(store).missed_in_a_row == 0
    store.complete(answered, "caller hung up")
    cid = _queue(store, 1)
    first = store.claim_offer("leg-1")
    store.offer_failed(first, refused=True, reason="declined", miss=Miss.REJECTED)
    assert _agent(store).state == "Available"          # a delay of 0: offered again at once
    again = store.claim_offer("leg-2")
    assert again.contact_id == cid
    store.offer_failed(again, refused=True, reason="declined", miss=Miss.REJECTED)
    a = _agent(store)
    assert (a.state, a.state_reason) == ("OnBreak", "no_answer")
    assert store.contact(cid).state == "queued"
    assert why_not_offered(a, utcnow()) == "on break (no_answer)"
    # Back from the break: the count starts again.
    AgentService(store).set_agent_state("alice", "available")
    assert _agent(store).missed_in_a_row == 0


def test_hanging_up_during_call_delay_is_a_miss_with_its_own_delay(store):
    _set(store, left_delay=15)
    AgentService(store).set_agent_state("alice", "available")
    cid = _queue(store, 1)
    store.request_callback(cid, "+13125550001", "+13125557000", 5, "+13125557000", "+13125550001")
    offer = store.claim_offer("leg-1")
    assert store.accept_callback(offer, 5) is not None
    assert store.agent_left_before_dial(cid, "agent hung up")
    a = _agent(store)
    assert (a.state, a.state_reason) == ("Refused", "left")
    assert a.missed_in_a_row == 1
    assert store.claim_offer("leg-2") is None          # the same callback is not offered to them at once


def test_a_break_or_logout_asked_during_a_call_starts_at_its_end(store):
    _set(store, wrap_up=0)
    agents = AgentService(store)
    agents.set_agent_state("alice", "available")
    first = _live_call(store, 1, "leg-1")
    change = agents.set_agent_state("alice", "break", reason="lunch")
    assert change.when_call_ends and _agent(store).state == "OnCall"
    store.complete(first, "caller hung up", claim_leg_uuid="leg-2")
    a = _agent(store)
    assert (a.state, a.state_reason, a.pending_state) == ("OnBreak", "lunch", None)
    history = [(h.from_state, h.to_state, h.reason) for h in store.agent_history(a.id)]
    assert history[-2:] == [("Offered", "OnCall", None), ("OnCall", "OnBreak", "lunch")]
    # In wrap-up: at its end.
    _set(store, wrap_up=30)
    agents.set_agent_state("alice", "available")
    second = _live_call(store, 2, "leg-3")
    store.complete(second, "caller hung up")
    assert _agent(store).state == "WrapUp"
    assert agents.set_agent_state("alice", "logout").when_call_ends
    assert agents.end_wrap_up("alice").after == "LoggedOut"          # said as it is (was: 'Available')
    assert _agent(store).state == "LoggedOut"
    # A change made now drops the pending one: the agent's latest word wins.
    agents.set_agent_state("alice", "available")
    third = _live_call(store, 3, "leg-4")
    assert agents.set_agent_state("alice", "break", reason="lunch").when_call_ends
    store.complete(third, "caller hung up")
    assert _agent(store).state == "WrapUp"
    assert agents.set_agent_state("alice", "available").after == "Available"
    a = _agent(store)
    assert (a.state, a.pending_state) == ("Available", None)


def test_the_history_adds_up_to_the_wall_time_for_each_agent(store):
    store.add_agent("bob", "user/1002", ["support"])
    _set(store, wrap_up=30, reject_delay=5)
    agents = AgentService(store)
    agents.set_agent_state("alice", "login")
    agents.set_agent_state("alice", "available")
    agents.set_agent_state("bob", "available")
    first = _live_call(store, 1, "leg-1")         # alice (idle longest)
    store.complete(first, "caller hung up")
    cid = _queue(store, 2)
    offer = store.claim_offer("leg-2")            # bob
    store.offer_failed(offer, refused=True, reason="declined", miss=Miss.REJECTED)
    agents.set_agent_state("alice", "end_wrap_up")
    agents.set_agent_state("alice", "break", reason="lunch")
    assert store.contact(cid).state == "queued"
    now = "now()" if store._pg else "strftime('%Y-%m-%d %H:%M:%f', 'now')"
    seconds = ("extract(epoch FROM {b} - {a})" if store._pg else "(julianday({b}) - julianday({a})) * 86400.0")
    with store.engine.connect() as conn:
        # One statement: the view's open intervals and the wall time read the same clock.
        rows = conn.execute(text(f"""
            SELECT w.agent_name, w.wall, s.total FROM
              (SELECT agent_name, {seconds.format(a='min(at)', b=now)} AS wall
                 FROM agent_state_history GROUP BY agent_name) w
              JOIN (SELECT agent_name, sum(seconds) AS total FROM agent_day_states GROUP BY agent_name) s
                ON s.agent_name = w.agent_name""")).all()
        report = {r.agent_name: r for r in conn.execute(text("SELECT * FROM agent_day_report")).all()}
    assert {r.agent_name for r in rows} == {"alice", "bob"}
    for r in rows:
        assert abs(float(r.wall) - float(r.total)) < 0.01, r
    alice, bob = report["alice"], report["bob"]
    assert alice.handled == 1 and alice.missed == 0 and bob.missed == 1 and bob.handled == 0
    assert alice.on_call_sec > 0 and alice.wrap_up_sec > 0 and bob.delay_sec > 0
    assert 0 < alice.occupancy <= 1
    days = store.agent_day_report()
    assert [d["breaks"] for d in days if d["agent_name"] == "alice"][0].keys() == {"lunch"}


def _history(store: Store, rows: list[tuple[str, str, str]]) -> int:
    """alice's history replaced by (from, to, at ISO UTC) rows, the last one open until now."""
    from datetime import datetime
    agent_id = _agent(store).id
    with store.engine.begin() as conn:
        conn.execute(text("DELETE FROM agent_state_history WHERE agent_id = :a"), {"a": agent_id})
        for frm, to, at in rows:
            conn.execute(text("INSERT INTO agent_state_history (agent_id, agent_name, from_state, to_state, at) "
                              "VALUES (:a, 'alice', :f, :t, :at)"),
                         {"a": agent_id, "f": frm, "t": to, "at": datetime.fromisoformat(at)})
    return agent_id


@pytest.mark.parametrize("tz, expected", [
    ("UTC", {"2026-03-01": 7200, "2026-03-02": 7200}),
    ("Europe/Amsterdam", {"2026-03-01": 3600, "2026-03-02": 10800}),     # 23:00-03:00 local (UTC+1)
    ("America/Chicago", {"2026-03-01": 14400}),                           # 16:00-20:00 local (UTC-6)
])
def test_an_interval_over_midnight_counts_on_each_day_of_the_report_time_zone(store, tz, expected):
    """Before migration 0015 the whole interval counted on the UTC day it started (7,200 + 7,200 s
    were 14,400 s on 1 March whatever the reader's time zone). SQLite's days are UTC days."""
    _history(store, [(None, "LoggedOut", "2026-03-01T12:00:00+00:00"),
                     ("LoggedOut", "Available", "2026-03-01T22:00:00+00:00"),
                     ("Available", "LoggedOut", "2026-03-02T02:00:00+00:00")])
    if not store._pg and tz != "UTC":
        with pytest.raises(StoreError, match="need PostgreSQL"):
            store.agent_day_report(agent="alice", tz=tz)
        return
    days = {d["day"]: d for d in store.agent_day_report(agent="alice", tz=tz)}
    available = {day: round(float(d["available_sec"])) for day, d in days.items() if float(d["available_sec"])}
    assert available == expected
    # Each day's states add up to its whole length (the open LoggedOut interval runs until now).
    first_full_day = sorted(days)[1]
    assert round(float(days[first_full_day]["logged_in_sec"]) + float(days[first_full_day]["logged_out_sec"])) == 86400


def test_a_report_time_zone_that_does_not_exist_is_refused_by_name(store):
    with pytest.raises(StoreError, match="Europe/Amsterdm"):
        store.agent_day_report(tz="Europe/Amsterdm")
