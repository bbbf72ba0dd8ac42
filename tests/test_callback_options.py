"""Callbacks the way contact centres run them (issue 14), end to end on the simulator: opening hours,
expiry, the customer's confirmation, the agent's whisper, scheduled callbacks and NotBefore."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import gevent
from click.testing import CliRunner

from cli import main
from esl_cb.domain import script as scripts

from .fixtures import wait_until
from .harness import Harness


def script(**callback) -> scripts.Script:
    props = "\n".join(f"    {k}: \"{v}\"" for k, v in callback.items())
    return scripts.parse(f"""
name: options
actions:
  - action: Begin
    Default: Queue
  - action: Reqagent
    Caption: Queue
    Skill: support
    Default: Offer
  - action: Menu
    Caption: Offer
    Prompt: digits/1.wav
    TimeoutSec: 2
    "1": Callback
    Default: Offer
  - action: Callback
    CallerID: "+13125557000"
{props}
    Default: Hangup
    OnError: Offer
  - action: Hangup
""", "options.yaml")


def test_a_closed_skill_keeps_its_callbacks_until_it_opens(pg_url):
    h = Harness(pg_url, script())
    try:
        now = datetime.now(timezone.utc)
        closed_today = f"{now.date().isoformat()},{(now + timedelta(days=1)).date().isoformat()}"
        h.store.add_skill("support")
        h.store.set_skill_hours("support", week="24/7", tz="UTC", closed=closed_today)
        h.agent("ann", "1001", answer=0.1)
        h.sim_api("endpoint +13125550501 answer 0.1")
        h.call("3125550501", "3125557000", "dtmf 1 0.5")
        h.wait_state("callback_queued")
        h.available("ann")
        gevent.sleep(1.5)                                       # the agent is free, but the skill is closed
        assert h.contact().state == "callback_queued" and h.originates_to("1001") == []
        h.store.set_skill_hours("support", closed="")           # open again
        h.wait_connected(timeout=10)
        out = CliRunner().invoke(main, ["skill", "hours", "support", "--db", pg_url])
        assert "always open" in out.output and "callbacks open now" in out.output
    finally:
        h.close()


def test_an_expired_callback_ends_and_is_never_dialled(pg_url):
    h = Harness(pg_url, script(ExpireAfterSec=1))
    try:
        h.call("3125550502", "3125557000", "dtmf 1 0.5")
        queued = h.wait_state("callback_queued")
        assert (queued.expire_at - queued.callback_requested_at).total_seconds() == 1.0
        ended = h.wait_state("ended", timeout=10)
        assert ended.outcome == "callback_expired"
        h.agent("ann", "1001", answer=0.1, available=True)
        gevent.sleep(0.5)
        assert h.originates_to("1001") == []
        assert h.rows("SELECT outcome, expire_at FROM reporting_contacts")[0]["outcome"] == "callback_expired"
    finally:
        h.close()


def test_the_customer_confirms_with_the_key_then_is_bridged(pg_url):
    h = Harness(pg_url, script(ConfirmPrompt="ivr/ivr-to_accept_press_one.wav", ConfirmKey="1"))
    try:
        h.agent("ann", "1001", answer=0.1)
        h.sim_api("endpoint +13125550503 answer 0.1 - press 1 0.5")     # a person: presses 1
        h.call("3125550503", "3125557000", "dtmf 1 0.5")
        h.wait_state("callback_queued")
        h.available("ann")
        connected = h.wait_connected(timeout=15)
        assert connected.confirmed is True
        broadcasts = h.commands("api uuid_broadcast")
        assert any(connected.agent_leg_uuid in b and "tone_stream" in b for b in broadcasts)      # the agent waited
        assert any(connected.callback_leg_uuid in b and "ivr-to_accept_press_one" in b for b in broadcasts)
        attempt = h.rows("SELECT result, confirmed FROM callback_attempts")[0]
        assert (attempt["result"], attempt["confirmed"]) == ("answered", True)
    finally:
        h.close()


def test_no_key_counts_as_not_answered_and_is_retried(pg_url):
    h = Harness(pg_url, script(ConfirmPrompt="ivr/ivr-to_accept_press_one.wav"), confirm_timeout=1.0,
                max_attempts=2, retry_interval=0.3)
    try:
        h.agent("ann", "1001", answer=0.1)
        h.sim_api("endpoint +13125550504 answer 0.1")                  # a voicemail box: answers, never keys
        h.call("3125550504", "3125557000", "dtmf 1 0.5")
        h.wait_state("callback_queued")
        h.available("ann")
        ended = h.wait_state("ended", timeout=20)
        assert ended.outcome == "callback_failed" and ended.attempts == 2 and ended.confirmed is None
        rows = h.rows("SELECT result, confirmed FROM callback_attempts ORDER BY attempt_no")
        assert [(r["result"], r["confirmed"]) for r in rows] == [("not_confirmed", False)] * 2
        wait_until(lambda: h.store.agent("ann").state == "Available", what="the agent released")
    finally:
        h.close()


def test_the_agent_hears_who_comes_next(pg_url):
    h = Harness(pg_url, script(WhisperPrompt="ivr/ivr-hold_connect_call.wav", CallDelaySec=1))
    try:
        h.agent("ann", "1001", answer=0.1)
        h.sim_api("endpoint +13125550505 answer 0.1")
        h.call("3125550505", "3125557000", "dtmf 1 0.5")
        h.wait_state("callback_queued")
        h.available("ann")
        connected = h.wait_connected(timeout=15)
        whisper = [b for b in h.commands("api uuid_broadcast") if connected.agent_leg_uuid in b]
        digits = "!".join(f"digits/{d}.wav" for d in "13125550505")
        assert whisper == [f"api uuid_broadcast {connected.agent_leg_uuid} file_string://ivr/ivr-hold_connect_call.wav!"
                           f"{digits} aleg"]
    finally:
        h.close()


def test_a_scheduled_callback_waits_for_its_time_then_goes_first(pg_url):
    h = Harness(pg_url, script())
    try:
        h.agent("ann", "1001", answer=0.1)
        h.sim_api("endpoint +13125550506 answer 0.1")
        out = CliRunner().invoke(main, ["callback", "schedule", "+13125550506", "--skill", "support", "--at", "+2",
                                        "--db", pg_url, "--operator", "olga"])
        assert out.exit_code == 0, out.output
        scheduled = h.contact(1)
        assert scheduled.state == "callback_queued" and scheduled.not_before is not None
        h.call("3125550507", "3125557000", "dtmf 1 0.5")             # a newer callback, same priority
        h.wait_state("callback_queued", 2)
        h.available("ann")
        gevent.sleep(0.5)
        assert h.contact(1).state == "callback_queued" and h.contact(2).state != "callback_queued"   # not yet due
        assert json.loads(CliRunner().invoke(main, ["audit", "--json", "--db", pg_url]).output)[0]["action"] == \
            "callback schedule"
        h.sim_api(f"hangup {h.wait_connected(2, timeout=10).callback_leg_uuid}")
        h.wait_connected(1, timeout=10)                      # due now: offered next
        refused = CliRunner().invoke(main, ["callback", "schedule", "+19005550100", "--skill", "support", "--at",
                                            "+60", "--db", pg_url])
        assert refused.exit_code == 1 and "premium-rate" in refused.output
    finally:
        h.close()


def test_not_before_on_the_callback_action(pg_url):
    h = Harness(pg_url, script(NotBefore="+2"))
    try:
        h.agent("ann", "1001", answer=0.1)
        h.sim_api("endpoint +13125550508 answer 0.1")
        h.call("3125550508", "3125557000", "dtmf 1 0.5")
        queued = h.wait_state("callback_queued")
        h.available("ann")
        assert 1.5 < (queued.not_before - queued.callback_requested_at).total_seconds() <= 2.0
        gevent.sleep(0.8)
        assert h.originates_to("1001") == []
        connected = h.wait_connected(timeout=10)
        assert connected.offered_at >= queued.not_before
    finally:
        h.close()


def test_script_check_knows_the_new_properties():
    bad = """
name: bad
actions:
  - action: Begin
    Default: Callback
  - action: Callback
    ConfirmKey: "11"
    ExpireAfterSec: 0
    NotBefore: tomorrow
    WhisperPrompt: two words.wav
    Default: Hangup
  - action: Hangup
"""
    try:
        scripts.parse(bad, "bad.yaml")
    except scripts.ScriptInvalid as e:
        text = str(e)
    else:
        raise AssertionError("the script should be invalid")
    for words in ("ConfirmKey must be one key", "ConfirmKey needs a ConfirmPrompt", "ExpireAfterSec must be above 0",
                  "NotBefore", "WhisperPrompt: 'two words.wav' is not a sound path"):
        assert words in text, words
