"""Kill the controller (SIGKILL, a real process) at each step of a callback's life and restart it:
every callback ends exactly once, and the simulator's record proves nobody was dialled twice."""
from __future__ import annotations

import time

import pytest
from sqlalchemy import text

from esl_cb.db.store import Store

from .procs import ControllerProcess, SimProcess, free_port

SCRIPT = """
name: faults
actions:
  - action: Begin
    Default: Queue
  - action: Reqagent
    Caption: Queue
    Skill: support
    Default: Menu
  - action: Menu
    Prompt: ivr/ivr-if_you_would_like_us_to_call_back.wav
    TimeoutSec: 3
    "1": Callback
    Default: Menu
  - action: Callback
    CallDelaySec: 3
    CallerID: "+13125557000"
    Default: Hangup
    OnError: Menu
  - action: Hangup
"""
CUSTOMER = "+13125550100"


def poll(fn, timeout=30.0, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def rig(pg_url, tmp_path):
    store = Store(pg_url)
    with store.engine.begin() as conn:
        conn.execute(text("TRUNCATE callback_attempts, legs, contacts, agent_skills, agents, skills, controllers "
                          "RESTART IDENTITY CASCADE"))
    script = tmp_path / "faults.yaml"
    script.write_text(SCRIPT)
    port = free_port()
    sim = SimProcess(tmp_path, port)
    ctl = ControllerProcess(tmp_path, pg_url, sim.port, port, script)
    yield store, sim, ctl, tmp_path
    ctl.stop()
    sim.stop()
    store.close()


def state(store):
    with store.engine.connect() as conn:
        return conn.execute(text("SELECT state, outcome, attempts, agent_leg_uuid, callback_leg_uuid "
                                 "FROM contacts WHERE id = 1")).first()


@pytest.mark.parametrize("step", ["callback_queued", "offered", "accepted", "dialling", "connected"])
def test_kill_at_each_step_then_restart(rig, step):
    store, sim, ctl, tmp = rig
    store.add_agent("ann", "user/1001", ["support"])
    sim.api("sim endpoint 1001 answer " + ("3" if step == "offered" else "0.2"))
    sim.api(f"sim endpoint {CUSTOMER} answer " + ("3" if step == "dialling" else "0.2"))
    sim.api("sim call 3125550100 3125557000 dtmf 1 0.5")
    poll(lambda: state(store) and state(store).state == "callback_queued", what="callback queued")
    from esl_cb.domain.states import AgentState
    if step != "callback_queued":
        store.set_agent_state("ann", AgentState.AVAILABLE, list(AgentState))
        store.notify("test")
    poll(lambda: state(store).state == step, what=f"the contact to reach {step}")
    ctl.kill()                                           # SIGKILL: no goodbye, no cleanup
    killed_at = state(store)
    ctl.start()
    if step == "callback_queued":
        store.set_agent_state("ann", AgentState.AVAILABLE, list(AgentState))
        store.notify("test")
    connected = poll(lambda: (s := state(store)) and s.state == "connected" and s, timeout=40,
                     what=f"connected after a kill at {step} (log in {tmp})")
    sim.api(f"sim hangup {connected.callback_leg_uuid}")
    final = poll(lambda: (s := state(store)) and s.state == "ended" and s, what="the contact to end")
    assert final.outcome == "callback_completed"
    dials = [o for o in sim.originates() if o["number"] == CUSTOMER]
    assert len(dials) == 1, f"dialled {len(dials)} times after a kill at {step}"
    with store.engine.connect() as conn:
        attempts = conn.execute(text("SELECT attempt_no, result FROM callback_attempts ORDER BY attempt_no")).all()
    assert [a.result for a in attempts][-1] == "answered"
    if step in ("dialling", "connected"):
        assert connected.callback_leg_uuid == killed_at.callback_leg_uuid      # re-attached, not redialled


def test_sigterm_finishes_the_due_dial_then_exits_0_and_a_restart_goes_on(rig):
    """A clean stop (systemd's SIGTERM): no new offers; the dial due within the grace goes out; the
    process exits 0; what is left (a queued callback, the ringing customer) waits for the next start,
    and nobody is dialled twice."""
    import signal

    from esl_cb.domain.states import AgentState
    store, sim, ctl, tmp = rig
    store.add_agent("ann", "user/1001", ["support"])
    sim.api("sim endpoint 1001 answer 0.2")
    sim.api(f"sim endpoint {CUSTOMER} answer 6")                     # still ringing when the process exits
    sim.api("sim endpoint +13125550101 answer 6")
    sim.api("sim call 3125550100 3125557000 dtmf 1 0.5")
    sim.api("sim call 3125550101 3125557000 dtmf 1 0.5")
    poll(lambda: _count(store, "state = 'callback_queued'") == 2, what="two callbacks queued")
    store.set_agent_state("ann", AgentState.AVAILABLE, list(AgentState))
    store.notify("test")
    accepted = poll(lambda: _first(store, "state = 'accepted'"), what="one callback accepted (CallDelaySec 3 s)")
    ctl.proc.send_signal(signal.SIGTERM)
    assert ctl.proc.wait(15) == 0, (tmp / "controller.log").read_text()[-3000:]
    log = (tmp / "controller.log").read_text()
    assert "stopping: no new calls or offers" in log and "stopped" in log
    number = accepted.callback_number
    dials = [o for o in sim.originates() if o["number"] == number]
    assert len(dials) == 1                                           # due within the grace: it went
    assert _first(store, f"id = {accepted.id}").state == "dialling"
    assert _count(store, "state = 'callback_queued'") == 1           # nothing new was offered
    ctl.start()
    connected = poll(lambda: _first(store, f"id = {accepted.id} AND state = 'connected'"), timeout=20,
                     what=f"the ringing customer connected after the restart (log in {tmp})")
    assert connected.callback_leg_uuid == dials[0]["uuid"]
    assert len([o for o in sim.originates() if o["number"] == number]) == 1


def _first(store, where: str):
    with store.engine.connect() as conn:
        return conn.execute(text(f"SELECT * FROM contacts WHERE {where} ORDER BY id LIMIT 1")).first()


def _count(store, where: str) -> int:
    with store.engine.connect() as conn:
        return conn.execute(text(f"SELECT count(*) FROM contacts WHERE {where}")).scalar()
