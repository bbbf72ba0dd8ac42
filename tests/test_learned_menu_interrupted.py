"""A menu (play_and_get_digits) interrupted, on the real FreeSWITCH and on the simulator (same checks).

Measured on FreeSWITCH 1.11 (these checks, on the real-switch rig):
- `uuid_bridge` ends it at once (about 24 ms). During its prompt it leaves no read_result (as a missing
  prompt does); once the prompt is over and it waits for a key, read_result is `failure`.
- `uuid_break` during its prompt stops the prompt only: the read goes on to its timeout, then the
  invalid-input sound, then read_result `failure`. One during the wait for a key is held: the read
  still waits its timeout, and the break cuts the invalid-input sound instead (playback_ms 0).
Before, the simulator ended the application at once on a break, and with no read_result on a
bridge whatever the phase.
"""
from __future__ import annotations

import socket
import time
import uuid as uuidlib

import pytest

from esl_cb.sim import api

from .replay import SocketCall
from .test_real_learned import fs_rig  # noqa: F401  (the real switch's rig, a module fixture)

LONG_PROMPT = "silence_stream://2000"     # generated media: the same 2 s on both switches
SHORT_PROMPT = "silence_stream://100"


def _start(call: SocketCall, prompt: str, timeout_ms: int) -> tuple[str, int]:
    """play_and_get_digits started (its CHANNEL_EXECUTE seen); (its Application-UUID, frame index)."""
    assert call.api(f"uuid_setvar_multi {call.uuid} read_result=;cb_digit=").startswith("+OK")
    event_uuid = str(uuidlib.uuid4())
    start = len(call.client.frames)
    call.send(f"sendmsg\ncall-command: execute\nexecute-app-name: play_and_get_digits\n"
              f"execute-app-arg: 1 1 1 {timeout_ms} # {prompt} silence_stream://250 cb_digit \\d\n"
              f"Event-UUID: {event_uuid}\n\n")
    call._wait(lambda f: f.get("Event-Name") == "CHANNEL_EXECUTE" and f.get("Application-UUID") == event_uuid,
               start)
    return event_uuid, start


def _completed(call: SocketCall, event_uuid: str, start: int):
    return call._wait(lambda f: f.get("Event-Name") == "CHANNEL_EXECUTE_COMPLETE"
                      and f.get("Application-UUID") == event_uuid, start)


def check_break_stops_the_prompt_not_the_read(call: SocketCall) -> None:
    event_uuid, start = _start(call, LONG_PROMPT, 1000)
    time.sleep(0.2)
    assert call.api(f"uuid_break {call.uuid}").startswith("+OK")
    broken = time.monotonic()
    done = _completed(call, event_uuid, start)
    took = time.monotonic() - broken
    assert 1.0 < took < 1.8, f"after the prompt's break the read waits its 1 s timeout and the 0.25 s sound: {took:.2f}"
    assert done.get("variable_read_result") == "failure" and not done.get("variable_cb_digit")
    assert done.get("variable_playback_ms") == "250"

    event_uuid, start = _start(call, SHORT_PROMPT, 1500)
    time.sleep(0.5)                                        # the prompt is over: the read waits
    assert call.api(f"uuid_break {call.uuid}").startswith("+OK")
    broken = time.monotonic()
    done = _completed(call, event_uuid, start)
    took = time.monotonic() - broken
    assert 0.8 < took < 1.5, f"a break during the wait for a key does not end the read: {took:.2f}"
    assert done.get("variable_read_result") == "failure"
    assert done.get("variable_playback_ms") == "0", "the held break cuts the invalid-input sound"


def check_bridge_ends_the_menu(call: SocketCall, agent_leg: str, during_prompt: bool) -> None:
    event_uuid, start = _start(call, LONG_PROMPT if during_prompt else SHORT_PROMPT, 5000)
    if not during_prompt:
        time.sleep(0.6)                                    # the prompt is over: the read waits
    bridged = time.monotonic()
    assert call.api(f"uuid_bridge {call.uuid} {agent_leg}").startswith("+OK")
    done = _completed(call, event_uuid, start)
    assert time.monotonic() - bridged < 0.5, "uuid_bridge ends the menu at once"
    assert done.get("Application-Response") == "_none_"
    assert done.get("variable_read_result") == ("" if during_prompt else "failure")
    assert not done.get("variable_cb_digit")


def _listener(port: int = 0) -> socket.socket:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(1)
    return listener


def test_an_interrupted_menu_on_the_simulator(sim):
    sim.switch.time_scale = 1.0
    listener = _listener()
    sim.switch.socket_target = listener.getsockname()
    api.execute(sim.switch, "sim", "endpoint 5551000 answer 0.05")
    try:
        for during_prompt in (True, False):
            api.execute(sim.switch, "sim", "call 3125550199 3125557000")
            call = SocketCall(listener)
            try:
                if during_prompt:
                    check_break_stops_the_prompt_not_the_read(call)
                leg = str(uuidlib.uuid4())
                reply = call.api(f"originate {{origination_uuid={leg}}}sofia/gateway/pstn/5551000 &park()")
                assert reply == f"+OK {leg}\n", reply
                check_bridge_ends_the_menu(call, leg, during_prompt)
            finally:
                call.hangup()
    finally:
        listener.close()


@pytest.mark.freeswitch
def test_an_interrupted_menu_on_the_real_switch(fs_rig):  # noqa: F811
    listener = _listener(fs_rig.controller_port)
    try:
        for during_prompt in (True, False):
            caller = fs_rig.caller("3125550199", key=None)
            try:
                call = SocketCall(listener)
                try:
                    if during_prompt:
                        check_break_stops_the_prompt_not_the_read(call)
                    leg = str(uuidlib.uuid4())
                    reply = call.api(f"originate {{origination_uuid={leg}}}{fs_rig.phones.dial('agent1')} &park()")
                    assert reply == f"+OK {leg}\n", reply
                    check_bridge_ends_the_menu(call, leg, during_prompt)
                finally:
                    call.hangup()
            finally:
                caller.stop()
                fs_rig.switch.hangup_all()
    finally:
        listener.close()
