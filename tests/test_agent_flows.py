"""Wrap-up and the delays after a miss, end to end on the simulator (issue 20): the controller's timer
frees the agent and the next offer goes only then, ordered by the recorded timestamps (never a
timing window)."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import text

from esl_cb.app import AgentService
from esl_cb.db.store import as_utc

from .fixtures import wait_until
from .harness import Harness
from .test_callback_flow import quick_script


def _history(h: Harness, name: str) -> list:
    return h.rows("SELECT from_state, to_state, reason, at, contact_id FROM agent_state_history "
                  "WHERE agent_name = :n ORDER BY at, id", n=name)


def _settings(h: Harness, **values) -> None:
    AgentService(h.store).set_settings("support", skill=True, **values)


def test_after_a_conversation_the_agent_wraps_up_then_takes_the_next_caller(pg_url):
    h = Harness(pg_url, quick_script())
    try:
        h.agent("ann", "1001", answer=0.1)
        _settings(h, wrap_up=2)
        h.available("ann")
        first = h.call("3125550100")
        h.wait_connected(1)
        h.call("3125550101")
        h.wait_state("queued", 2)
        h.sim_api(f"hangup {first}")
        ended = h.wait_state("ended", 1)
        wait_until(lambda: h.store.agent("ann").state == "WrapUp", what="ann in WrapUp")
        second = h.wait_connected(2, timeout=15)
        # The second offer left when the wrap-up ended (the timer), not before.
        assert as_utc(second.offered_at) >= as_utc(ended.ended_at) + timedelta(seconds=2)
        states = [(r["from_state"], r["to_state"]) for r in _history(h, "ann")]
        assert ("OnCall", "WrapUp") in states and ("WrapUp", "Available") in states
        assert len(h.originates_to("1001")) == 2
    finally:
        h.close()


def test_an_agent_who_hangs_up_during_call_delay_is_not_offered_the_same_callback_at_once(pg_url):
    """The defect issue 20 names: the agent was Available at once and offered the same callback again."""
    h = Harness(pg_url, quick_script(delay="4"))
    try:
        h.agent("ann", "1001")
        _settings(h, left_delay=2)
        h.sim_api("endpoint 1001 answer 0.1 1")            # answers, hangs up 1 s later
        h.call("3125550100", "3125557000", "dtmf 1 1.2")
        before = h.wait_state("callback_queued")
        h.available("ann")
        wait_until(lambda: len(h.originates_to("1001")) == 2, timeout=15, what="the second offer to ann")
        history = _history(h, "ann")
        left = next(r for r in history if r["to_state"] == "Refused")
        assert left["reason"] == "left" and left["from_state"] == "OnCall"
        offers = [r for r in history if r["to_state"] == "Offered"]
        assert as_utc(offers[1]["at"]) >= as_utc(left["at"]) + timedelta(seconds=2)
        assert h.contact().queued_at == before.queued_at
        assert h.originates_to("+13125550100") == []
    finally:
        h.close()


@pytest.mark.parametrize("mode, reason", [("reject", "rejected"), ("busy", "busy")])
def test_an_agent_who_misses_twice_waits_each_delay_then_goes_on_break(pg_url, mode, reason):
    h = Harness(pg_url, quick_script())
    try:
        h.agent("ann", "1001")
        _settings(h, reject_delay=1, busy_delay=1, max_no_answer=2)
        h.sim_api(f"endpoint 1001 {mode}")
        h.call("3125550100", "3125557000", "dtmf 1 1.2")
        before = h.wait_state("callback_queued")
        h.available("ann")
        wait_until(lambda: h.store.agent("ann").state == "OnBreak", timeout=15, what="ann on break")
        a = h.store.agent("ann")
        assert a.state_reason == "no_answer"
        history = _history(h, "ann")
        assert [(r["to_state"], r["reason"]) for r in history if r["from_state"] == "Offered"] == [
            ("Refused", reason), ("OnBreak", "no_answer")]
        refused = next(r for r in history if r["to_state"] == "Refused")
        second = [r for r in history if r["to_state"] == "Offered"][1]
        assert as_utc(second["at"]) >= as_utc(refused["at"]) + timedelta(seconds=1)
        assert len(h.originates_to("1001")) == 2
        c = h.contact()
        assert c.state == "callback_queued" and c.queued_at == before.queued_at
        assert "on break (no_answer)" in [x["not_offered_because"] for x in h.store.agents()]
    finally:
        h.close()


def test_a_wrap_up_no_timer_watches_is_ended_by_the_sweep(pg_url):
    """A controller that crashed during a wrap-up (or another controller's agent): nobody holds its
    timer, and the dispatcher's sweep frees the agent once its time is over."""
    h = Harness(pg_url, quick_script())
    try:
        h.agent("ann", "1001", answer=0.1)
        h.call("3125550100")
        h.wait_state("queued")
        with h.store.engine.begin() as conn:       # as another process left it: WrapUp, no timer here
            conn.execute(text("UPDATE agents SET state = 'WrapUp', state_changed_at = now(), "
                              "state_until = now() + interval '0.5 second' WHERE name = 'ann'"))
        assert h.controller.hold_timers._timers == {}
        c = h.wait_connected(timeout=10)
        freed = next(r for r in _history(h, "ann") if r["from_state"] == "WrapUp")
        assert freed["to_state"] == "Available" and as_utc(c.offered_at) >= as_utc(freed["at"])
    finally:
        h.close()


def test_a_phone_the_switch_cannot_reach_is_no_miss_of_the_agents(pg_url):
    """An offer the switch answers with USER_NOT_REGISTERED never rang: the agent is not offered for a
    pause (status says why) but it is no miss of theirs, so it never puts them OnBreak 'no_answer'.
    (Reviewer's finding: the phone registered on another switch of the fleet, or gone between the claim
    and the originate, put the agent on a break after max-no-answer such offers.)"""
    h = Harness(pg_url, quick_script())
    try:
        h.agent("ann", "1001")
        _settings(h, max_no_answer=2, no_answer_delay=1)
        # The switch forgets the phone without telling the controller (another switch's registration).
        h.sim.switch.phones = {"unregistered": {"1001"}, "call_ids": {}}
        h.call("3125550100", "3125557000", "dtmf 1 1.2")
        before = h.wait_state("callback_queued")
        h.available("ann")
        wait_until(lambda: h.store.agent("ann").offer_not_before is not None, timeout=10,
                   what="ann held back after the failed offer")
        a = h.store.agent("ann")
        assert (a.state, a.missed_in_a_row) == ("Available", 0)
        why = [x["not_offered_because"] for x in h.store.agents() if x["name"] == "ann"][0]
        assert "phone unreachable (USER_NOT_REGISTERED)" in why, why
        assert [r["to_state"] for r in _history(h, "ann") if r["from_state"] == "Offered"] == ["Available"]
        assert h.contact().state == "callback_queued" and h.contact().queued_at == before.queued_at
    finally:
        h.close()
