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
    # A replay sends each command as soon as the frames recorded before it have arrived, not after
    # the recorded pause (03 waited 1 s before 'show channels'): read the core database live here.
    # Its ~200 ms batches are tested in test_sim_learned.py.
    assert api.execute(sim.switch, "sim", "coredb 0") == "+OK\n"
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


def test_nolinger_race_sends_only_the_disconnect_notice(sim):
    """Capture 11: the notice and the close can overtake every hangup event."""
    setup_lab(sim, time_scale=1.0)
    sim.switch.nolinger_race = True
    result = replay("11-outbound-caller-hangup-nolinger-race.jsonl", sim, plan_for_call="hangup 1")
    assert differences("11", result) == []


def test_inbound_call_reaches_listeners_like_capture_09(sim):
    """mod_callcenter is not simulated (esl-cb replaces it); the caller's arrival in 09 is."""
    from .replay import Client, Parsed, compare, load
    import gevent
    import socket

    setup_lab(sim)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    sim.switch.socket_target = listener.getsockname()
    recorded = [Parsed(r["raw"]) for r in load("09-callcenter.jsonl")[1:] if r["dir"] == "in"]
    caller = next(p.get("Unique-ID") for p in recorded
                  if p.get("Event-Name") == "CHANNEL_CREATE" and p.get("Call-Direction") == "inbound")
    expected = []
    for p in recorded:
        if p.get("Unique-ID") == caller and p.get("Event-Name") not in ("CUSTOM", "PLAYBACK_START"):
            expected.append(p)
            if p.get("Event-Name") == "CHANNEL_EXECUTE_COMPLETE" and p.get("Application") == "answer":
                break
    client = Client(socket.create_connection(sim.address))
    client.send("auth ClueCon\n\n")
    client.send("event plain ALL\n\n")
    with gevent.Timeout(5):
        while len(client.frames) < 3:
            gevent.sleep(0.01)
    sim.switch.caller_name = "Lab Caller"
    api.execute(sim.switch, "sim", "call 3125550199 5002")
    with gevent.Timeout(5):
        while len([f for f in client.frames if f.event]) < len(expected):
            gevent.sleep(0.01)
    events = [f for f in client.frames if f.event and f.get("Event-Name") != "API"][:len(expected)]
    assert [e.get("Event-Name") for e in events] == [e.get("Event-Name") for e in expected]
    diffs = [d for e, a in zip(expected, events) for d in compare(e, a)
             if "Channel-Name" not in d and "channel_name" not in d]
    assert diffs == []


def test_comparison_catches_a_changed_reply(sim):
    """The replay check itself can fail: a switch that answers differently is caught."""
    from esl_cb.sim import api as sim_api

    setup_lab(sim)
    original = sim_api.COMMANDS["uuid_exists"]
    sim_api.COMMANDS["uuid_exists"] = lambda switch, arg: "maybe"
    try:
        result = replay("03-originate-park-kill.jsonl", sim)
    finally:
        sim_api.COMMANDS["uuid_exists"] = original
    assert any("maybe" in d for d in differences("03", result))


def test_comparison_catches_a_changed_header(sim):
    setup_lab(sim)
    sim.switch.identity.hostname = "not-fs-lab"
    result = replay("01-connect-auth.jsonl", sim)
    sim.switch.identity.hostname = "fs-lab"
    result2 = replay("02-event-formats.jsonl", sim)
    assert differences("01", result) == []          # 01 carries no events
    assert differences("02", result2) == []
    sim.switch.identity.hostname = "not-fs-lab"
    result3 = replay("02-event-formats.jsonl", sim)
    sim.switch.identity.hostname = "fs-lab"
    assert any("FreeSWITCH-Hostname" in d for d in differences("02", result3))
