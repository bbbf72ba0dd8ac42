"""Queued callbacks end to end (issue 3), against the simulator and a real PostgreSQL."""
from __future__ import annotations

import pytest

from esl_cb.domain import script as scripts

from .fixtures import wait_until
from .harness import Harness


@pytest.fixture
def example_script():
    s = scripts.load(scripts.DEFAULT_SCRIPT)
    # The shipped script, with its 30 s of music cut to 2 s so the test runs in seconds.
    s.actions["Hold music"].props["MaxDurationSec"] = 2
    return s


@pytest.fixture
def h(pg_url, example_script):
    harness = Harness(pg_url, example_script)
    yield harness
    harness.close()


def test_example_script_callback_end_to_end(h):
    h.agent("alice", "1001", answer=0.3)
    caller = h.call("3125550100", "3125557000", "dtmf 1 3.0")
    queued = h.wait_state("callback_queued")
    # The caller was hung up after the thank-you, and the contact kept place and priority.
    wait_until(lambda: caller not in h.sim.switch.channels, what="the caller to be disconnected")
    assert queued.queued_at is not None and queued.callback_requested_at > queued.queued_at
    assert (queued.priority_initial, queued.priority_acceleration, queued.priority_max) == (10, 1, 50)
    assert queued.callback_number == "+13125550100"
    assert queued.original_ani == "3125550100" and queued.original_dnis == "3125557000"
    assert (queued.ani, queued.dnis) == ("+13125557000", "+13125550100")     # rule 5: they switched
    assert h.originates_to("+13125550100") == []

    h.available("alice")
    connected = h.wait_state("connected", timeout=20)
    agent_leg = h.originates_to("1001")[0]
    customer_leg = h.originates_to("+13125550100")[0]
    assert agent_leg["vars"]["esl_cb_contact_id"] == "1"
    assert agent_leg["vars"]["origination_caller_id_name"] == "Callback +13125550100"
    assert customer_leg["vars"]["esl_cb_contact_id"] == "1"                       # rule 6: same contact
    assert customer_leg["vars"]["origination_caller_id_number"] == "+13125557000"  # CallerID = DNIS
    assert customer_leg["dial"] == "sofia/gateway/pstn/+13125550100"
    waited = customer_leg["t"] - h.sim.switch.answered_at[agent_leg["uuid"]]
    assert abs(waited - 5.0) <= 0.25, f"dialled {waited:.3f}s after the agent answered, not CallDelaySec=5"
    bridged = h.sim.switch.channels[customer_leg["uuid"]].peer
    assert bridged is not None and bridged.uuid == agent_leg["uuid"]
    assert connected.queued_at == queued.queued_at

    h.sim_api(f"hangup {customer_leg['uuid']}")
    ended = h.wait_state("ended")
    assert ended.outcome == "callback_completed"
    report = h.rows("SELECT * FROM reporting_contacts")
    assert len(report) == 1 and report[0]["direction"] == "inbound" and report[0]["callback_requested"]
    assert report[0]["agent"] == "alice" and report[0]["attempts"] == 1
    billing = wait_until(lambda: [r for r in h.rows("SELECT * FROM billing_legs ORDER BY started_at")
                                  if r["ended_at"] is not None and r["kind"] == "callback"], what="billing")
    assert billing[0]["direction"] == "outbound" and billing[0]["to_number"] == "+13125550100"
    attempts = h.rows("SELECT attempt_no, result FROM callback_attempts")
    assert [(a["attempt_no"], a["result"]) for a in attempts] == [(1, "answered")]
