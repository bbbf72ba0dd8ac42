"""A controller that was only slow, on the real FreeSWITCH (issue 17, fencing): `esl-cb run` is
stopped with SIGSTOP past its heartbeat timeout while it holds one callback in CallDelaySec and one
in the queue; a second controller on the same switch and database takes both over; then the first
runs again (SIGCONT). Each customer is dialled exactly once, counted on the wire (SIPp's trace), and
the stalled controller says it was taken over and starts over."""
from __future__ import annotations

import signal

import pytest

from esl_cb.domain import script as scripts
from esl_cb.domain.states import AgentState

from .freeswitch.rig import RealRig, fs_rig, until  # noqa: F401  (fs_rig: a fixture)
from .procs import ControllerProcess, free_port
from .test_real_flows import digits, quick_yaml

pytestmark = pytest.mark.freeswitch

X, Y = "+13125550451", "+13125550461"         # phones.xml: ending in 1, they answer
TIMEOUT = 3.0                                 # heartbeat_timeout of both controllers
DELAY = 8                                     # CallDelaySec: X's dial falls due during the stall


def test_a_stalled_controller_is_taken_over_and_nobody_is_dialled_twice(fs_rig, pg_url, tmp_path):  # noqa: F811
    script_file = tmp_path / "quick.yaml"
    script_file.write_text(quick_yaml(delay=DELAY))
    config = tmp_path / "a.yaml"
    config.write_text(f"heartbeat_timeout: {TIMEOUT}\nheartbeat_interval: 0.5\ncontroller_id: stalled-a\n")
    # B: in this process, on its own port (the switch hands new callers to A's port only).
    b = RealRig(fs_rig, pg_url, scripts.load(script_file), start=False, listen=f"127.0.0.1:{free_port()}",
                controller_id="adopter-b", heartbeat_timeout=TIMEOUT, heartbeat_interval=0.5)
    b.store.controller_id = "adopter-b"
    a = ControllerProcess(tmp_path, b.settings.db, b.switch.esl_port, fs_rig.controller_port, script_file,
                          "--config", str(config), "--dial-template", b.phones.dial_template(),
                          "--agent-ring-timeout", "5", "--callback-ring-timeout", "8")
    log = tmp_path / "controller.log"
    try:
        b.agent("ann", "agent1")
        b.agent("bob", "agent1")
        b.call(X, key="1", key_after=0.5)
        b.wait_state("callback_queued", 1, timeout=15)
        b.call(Y, key="1", key_after=0.5)
        b.wait_state("callback_queued", 2, timeout=15)
        b.store.set_agent_state("ann", AgentState.AVAILABLE, list(AgentState))
        b.store.notify("test")
        held = b.wait_state("accepted", 1, timeout=20)              # A holds X in CallDelaySec...
        assert held.controller_id == "stalled-a" and b.contact(2).state == "callback_queued"   # ...and Y queued
        a.proc.send_signal(signal.SIGSTOP)
        b.start()
        until(lambda: b.contact(1).controller_id == "adopter-b", timeout=TIMEOUT + 10,
              what="B to take X over from the stalled A")
        b.available("bob")
        until(lambda: len(b.invites_to(digits(X))) == 1, timeout=DELAY + 10, what="X dialled by B at its due time")
        a.proc.send_signal(signal.SIGCONT)
        until(lambda: "was taken over by another controller" in log.read_text(), timeout=15,
              what=f"A to say it was taken over (log {log})")
        x = b.wait_connected(1, timeout=20)
        y = b.wait_connected(2, timeout=DELAY + 20)
        for c in (x, y):
            b.api(f"uuid_kill {c.callback_leg_uuid}")
        assert b.wait_state("ended", 1).outcome == "callback_completed"
        assert b.wait_state("ended", 2).outcome == "callback_completed"
        assert len(b.invites_to(digits(X))) == 1 and len(b.invites_to(digits(Y))) == 1
        text = log.read_text()
        assert "starting over as a new member" in text and "joined as epoch" in text
        assert a.proc.poll() is None                               # A runs on, as a new member
    finally:
        if a.proc and a.proc.poll() is None:
            a.proc.send_signal(signal.SIGCONT)
        a.stop()
        b.close()
