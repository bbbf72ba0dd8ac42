"""`esl-cb doctor` against the real FreeSWITCH: a healthy installation passes; a missing prompt and an
agent the switch's directory lacks are named."""
from __future__ import annotations

import os

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from benchmarks.common import schedule_process
from cli import main
from esl_cb.app.phones import PhoneService
from esl_cb.db.store import Store

from .freeswitch.sipp import register_phone
from .test_doctor import SCRIPT, STOCK_OFFER
from .test_real_learned import fs_rig  # noqa: F401

pytestmark = pytest.mark.freeswitch


@pytest.fixture
def doctor(fs_rig, pg_url, tmp_path):  # noqa: F811
    store = Store(pg_url)
    with store.engine.begin() as conn:
        conn.execute(text("TRUNCATE callback_attempts, legs, contacts, agent_skills, agents, skills "
                          "RESTART IDENTITY CASCADE"))
    store.add_agent("alice", "user/2001", ["support"])                       # in the test directory
    store.add_agent("bob", fs_rig.phones.dial("agent1"), ["support"])         # sofia/test/...

    def run(offer: str = STOCK_OFFER):
        script = tmp_path / "doctor.yaml"
        script.write_text(SCRIPT.format(offer=offer))
        result = CliRunner().invoke(main, ["doctor", "--esl", fs_rig.switch.esl, "--db", pg_url, "--script",
                                           str(script), "--dial-template", fs_rig.phones.dial("{digits}")],
                                    catch_exceptions=False)
        lines = {line.split()[1]: line for line in result.output.splitlines() if line[:4].strip() in ("OK", "WARN", "FAIL")}
        return result, lines
    run.store = store
    yield run
    store.close()


def test_a_healthy_installation_passes_every_check(doctor, fs_rig):  # noqa: F811
    # alice's phone (user/2001) registers, and she has a PIN: the rig's dialplan has the feature codes
    register_phone(fs_rig.switch.root / "registrations", fs_rig.switch.sip_port, "2001", fs_rig.phones.port)
    PhoneService(doctor.store).set_pin("alice", "1357")
    result, lines = doctor()
    assert result.exit_code == 0, result.output
    assert all(line.startswith("OK ") for line in lines.values()), result.output
    assert "30 new sessions per second" in lines["sessions/s"] and "100 sessions at most" in lines["max-sessions"]
    assert "sofia profile 'test' is running" in lines["dial"]
    assert "all 1 agents' phones are registered" in lines["phones"]
    assert "the dialplan hands agents' feature codes to esl-cb" in lines["features"]


def test_a_missing_prompt_and_an_unknown_user_are_named(doctor):
    doctor.store.add_agent("carol", "user/9999", ["support"])
    result, lines = doctor(offer="file_string://ivr/ivr-callback_offer.wav!digits/1.wav")
    assert result.exit_code == 1
    assert lines["prompts"].startswith("FAIL") and "lacks ivr/ivr-callback_offer.wav" in result.output
    assert lines["agents"].startswith("FAIL")
    assert "agent carol: user/9999: no user 9999 in the switch's directory for domain 127.0.0.1" in result.output


def test_a_realtime_switch_above_the_controller_is_named(doctor, fs_rig):  # noqa: F811
    """FreeSWITCH runs SCHED_FIFO 10 by default (the tests start it -np): the doctor finds its process
    through its pid file and says the controller needs --realtime-priority above it."""
    pid = fs_rig.switch.proc.pid
    _, lines = doctor()
    assert lines["scheduling"].startswith("OK") and "FreeSWITCH normal" in lines["scheduling"]
    try:
        schedule_process(pid, os.SCHED_FIFO, 10)
    except PermissionError:                   # not root: the switch stays normal, and the doctor says so
        _, lines = doctor()
        assert "FreeSWITCH normal" in lines["scheduling"]
        return
    try:
        result, lines = doctor()
        assert lines["scheduling"].startswith("WARN") and "FreeSWITCH SCHED_FIFO 10" in lines["scheduling"]
        assert "--realtime-priority 20" in result.output
        assert result.exit_code == 0                  # a warning, not a failure
    finally:
        schedule_process(pid, os.SCHED_OTHER, 0)
