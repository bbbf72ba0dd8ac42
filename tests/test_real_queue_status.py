"""Where the caller stands, on the real FreeSWITCH: two SIPp callers wait for one busy agent; the
second hears "you are number two in line" and its estimated wait, made of stock prompt files that
the switch finds and plays (the simulator's twin is tests/test_queue_status.py)."""
from __future__ import annotations

import pytest

from esl_cb.domain import script as scripts
from esl_cb.domain.states import AgentState
from esl_cb.esl.inbound import InboundConnection

from .freeswitch.rig import RealRig, fs_rig, until  # noqa: F401  (fs_rig is a fixture)
from .freeswitch.switch import PASSWORD
from .test_queue_status import FLOW

pytestmark = pytest.mark.freeswitch
PROMPT_SECONDS = 0.4            # every prompt file of the rig's switch (tests/freeswitch/switch.py add_prompt)


@pytest.fixture
def rig(fs_rig, pg_url):  # noqa: F811
    r = RealRig(fs_rig, pg_url, scripts.parse(FLOW, "flow.yaml"))
    yield r
    r.close()


def test_the_second_caller_hears_position_two_and_its_estimated_wait(rig):
    r = rig
    done: list[dict] = []           # every application the switch finished, with what it played
    host, port = r.switch.esl.split(":")
    esl = InboundConnection(host, int(port), PASSWORD, lambda ev: done.append({
        "uuid": ev.get("Unique-ID"), "app": ev.get("Application"), "data": ev.get("Application-Data"),
        "response": ev.get("Application-Response"), "ms": ev.variable("playback_ms")}))
    try:
        esl.connect(["CHANNEL_EXECUTE_COMPLETE"])
        r.agent("alice", "agent1")
        r.store.set_agent_state("alice", AgentState.ON_CALL, list(AgentState))   # staffed, busy elsewhere
        r.call("+13125550201", key=None, hangup_after=8.0)
        first = r.wait_state("queued", 1).caller_uuid
        r.call("+13125550202", key=None, hangup_after=8.0)
        second = r.wait_state("queued", 2).caller_uuid

        def played(uuid: str) -> list[dict]:
            return [d for d in done if d["uuid"] == uuid and d["app"] == "playback"
                    and not d["data"].startswith("local_stream://")]
        until(lambda: len(played(second)) >= 2, timeout=15, what="the second caller's announcements")
        position, wait = played(second)[:2]
        assert position["data"] == "file_string://ivr/ivr-you_are_number.wav!digits/2.wav!ivr/ivr-in_line.wav"
        # One agent, busy, no handle time yet (180 s): the second waits ~360 s, "six minutes".
        assert wait["data"] == "file_string://ivr/ivr-estimated_hold_time.wav!digits/6.wav!time/minutes.wav"
        # The switch played every part: a file it lacked would be skipped and the playback 400 ms
        # shorter. (Measured: playback_ms is the files' length plus 250 ms; one 0.4 s file reads 650.)
        for p, files in ((position, 3), (wait, 3)):
            assert p["response"] == "FILE PLAYED", p
            assert abs(int(p["ms"]) - (files * PROMPT_SECONDS * 1000 + 250)) <= 100, p
        assert played(first)[0]["data"] == \
            "file_string://ivr/ivr-you_are_number.wav!digits/1.wav!ivr/ivr-in_line.wav"
        assert len(played(first)) == 1 or "estimated_hold_time" not in played(first)[1]["data"]   # 180 s: no
    finally:
        esl.close()
