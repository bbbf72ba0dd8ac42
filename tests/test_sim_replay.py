"""The simulator answers each recorded client conversation like the real FreeSWITCH did."""
from __future__ import annotations

import pytest

from esl_cb.sim import api

from .replay import differences, replay

ENDPOINTS = [
    "endpoint agent answer 1.0", "endpoint busy busy", "endpoint noanswer noanswer",
    "endpoint reject reject", "endpoint nobody fail",
]


def setup_lab(sim, time_scale: float = 0.1) -> None:
    sim.switch.time_scale = time_scale
    sim.switch.caller_name = "Lab Caller"     # SIPp's display name in the lab
    for line in ENDPOINTS:
        assert api.execute(sim.switch, "sim", line) == "+OK\n"


@pytest.mark.parametrize("capture", [
    "01-connect-auth.jsonl",
    "02-event-formats.jsonl",
    "03-originate-park-kill.jsonl",
    "04-originate-failures.jsonl",
    "05-uuid-bridge.jsonl",
    "06-api-uuid-commands.jsonl",
])
def test_inbound_capture_replays_identically(sim, capture):
    setup_lab(sim)
    result = replay(capture, sim)
    assert differences(capture, result) == []


@pytest.mark.parametrize("capture,plan", [
    # SIPp sent RFC 2833 '1' 4.5 s after its ACK and then waited for our BYE.
    ("07-outbound-dtmf.jsonl", "dtmf 1 4.5"),
    # The caller hung up 1 s into the music, with and without linger.
    ("08-outbound-caller-hangup.jsonl", "hangup 1"),
    ("10-outbound-caller-hangup-nolinger.jsonl", "hangup 1"),
])
def test_outbound_capture_replays_identically(sim, capture, plan):
    setup_lab(sim, time_scale=1.0)
    result = replay(capture, sim, plan_for_call=plan)
    assert differences(capture, result) == []
