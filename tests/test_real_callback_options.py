"""Issue 14 on the real FreeSWITCH: a customer confirming with a key over RTP (and a voicemail-like
phone that never does), the agent's whisper, a skill's closed hours, expiry and scheduled callbacks."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import gevent
import pytest
from click.testing import CliRunner

from cli import main

from .freeswitch.rig import RealRig, fs_rig, until  # noqa: F401  (a fixture)
from .test_callback_options import script

pytestmark = pytest.mark.freeswitch


@pytest.fixture
def rig(fs_rig, pg_url):  # noqa: F811
    made: list[RealRig] = []

    def make(s, **settings) -> RealRig:
        r = RealRig(fs_rig, pg_url, s, **settings)
        made.append(r)
        return r
    yield make
    for r in made:
        r.close()


def _queue_callback(r: RealRig, number: str) -> None:
    r.call(number, key="1", key_after=0.5)
    r.wait_state("callback_queued", timeout=15)


def test_a_person_confirms_with_a_key(rig):
    r = rig(script(ConfirmPrompt="ivr/ivr-to_accept_press_one.wav", ConfirmKey="1"), confirm_timeout=4.0,
            max_attempts=1)
    r.agent("ann", "agent1")
    _queue_callback(r, "+13125550608")                 # phones.xml: ends in 8, answers and presses 1
    r.available("ann")
    connected = r.wait_connected(timeout=20)
    assert connected.confirmed is True
    dump = r.api(f"uuid_dump {connected.callback_leg_uuid} json")
    assert f'"Other-Leg-Unique-ID":"{connected.agent_leg_uuid}"' in dump
    r.api(f"uuid_kill {connected.callback_leg_uuid}")
    r.wait_state("ended")


def test_a_voicemail_box_does_not_confirm(rig):
    r2 = rig(script(ConfirmPrompt="ivr/ivr-to_accept_press_one.wav"), confirm_timeout=3.0, max_attempts=1)
    r2.agent("bob", "agent1")
    _queue_callback(r2, "+13125550611")                # answers, never presses: a voicemail box
    r2.available("bob")
    ended = r2.wait_state("ended", timeout=25)
    assert ended.outcome == "callback_failed"
    assert [a["result"] for a in r2.rows("SELECT result FROM callback_attempts")] == ["not_confirmed"]
    assert len(r2.invites_to("13125550611")) == 1


def test_the_agent_hears_a_whisper_during_call_delay(rig):
    r = rig(script(WhisperPrompt="ivr/ivr-hold_connect_call.wav", CallDelaySec=3))
    r.agent("cara", "agent1")
    _queue_callback(r, "+13125550621")
    r.available("cara")
    accepted = until(lambda: (c := r.contact()).state == "accepted" and c, timeout=15, what="the agent to accept")
    dump = until(lambda: (d := json.loads(r.api(f"uuid_dump {accepted.agent_leg_uuid} json"))) and
                 "ivr-hold_connect_call" in d.get("variable_current_application_data", "") and d,
                 timeout=3, what="the whisper on the agent's leg")
    assert "digits/1.wav!digits/3.wav!digits/1.wav!digits/2.wav" in dump["variable_current_application_data"]
    r.wait_state("connected", timeout=10)


def test_closed_hours_expiry_and_a_scheduled_callback(rig, pg_url):
    r = rig(script(ExpireAfterSec=30))
    r.agent("dan", "agent1")
    today = datetime.now(timezone.utc).date()
    r.store.add_skill("support")
    r.store.set_skill_hours("support", week="24/7", tz="UTC", closed=f"{today},{today + timedelta(days=1)}")
    _queue_callback(r, "+13125550631")
    r.available("dan")
    gevent.sleep(1.5)
    assert r.contact().state == "callback_queued" and r.invites_to("agent1") == []     # closed: not offered
    out = CliRunner().invoke(main, ["callback", "schedule", "+13125550641", "--skill", "support", "--at", "+1",
                                    "--db", pg_url])
    assert out.exit_code == 0, out.output
    r.store.set_skill_hours("support", closed="")                                       # open: both go
    first = r.wait_connected(1, timeout=15)
    r.api(f"uuid_kill {first.callback_leg_uuid}")
    second = r.wait_connected(2, timeout=15)
    assert second.not_before is not None and len(r.invites_to("13125550641")) == 1
    r.api(f"uuid_kill {second.callback_leg_uuid}")
    r.wait_state("ended", 2)


def test_an_expired_callback_is_not_dialled(rig):
    r3 = rig(script(ExpireAfterSec=1))
    _queue_callback(r3, "+13125550651")
    assert r3.wait_state("ended", timeout=10).outcome == "callback_expired"
