"""`esl-cb doctor` against the simulator: every check passing, and each way an installation goes wrong."""
from __future__ import annotations

import re
import socket

import gevent
import pytest
from click.testing import CliRunner

from cli import main
from esl_cb.db.store import Store
from esl_cb.esl.prompts import PromptProblem, check_prompts
from esl_cb.sim import api
from esl_cb.sim.server import Simulator

from .fixtures import LAB, create_database, drop_database

SCRIPT = """
name: doctor
actions:
  - action: Begin
    Default: Queue
  - action: Reqagent
    Caption: Queue
    Skill: support
    Default: Music
  - action: Play
    Caption: Music
    Prompt: local_stream://moh
    MaxDurationSec: 30
    Default: Offer
  - action: Menu
    Caption: Offer
    Prompt: {offer}
    "1": Thanks
    Default: Music
  - action: Play
    Caption: Thanks
    Prompt: file_string://ivr/ivr-we_will_return_your_call_at_this_number.wav!ivr/ivr-thank_you.wav
    Default: Callback
  - action: Callback
    Default: Hangup
  - action: Hangup
"""
STOCK_OFFER = "file_string://ivr/ivr-if_you_would_like_us_to_call_back.wav!digits/1.wav"


@pytest.fixture
def switch():
    s = Simulator(("127.0.0.1", 0), identity=LAB, heartbeat=0, max_sessions=100, sessions_per_second=30).start()
    yield s
    s.stop()


@pytest.fixture
def doctor(switch, pg_url, tmp_path):
    store = Store(pg_url)
    with store.engine.begin() as conn:
        from sqlalchemy import text
        conn.execute(text("TRUNCATE callback_attempts, legs, contacts, agent_skills, agents, skills "
                          "RESTART IDENTITY CASCADE"))
    store.add_agent("alice", "user/1001", ["support"])

    def run(*extra: str, offer: str = STOCK_OFFER, esl: str | None = None, db: str = pg_url):
        script = tmp_path / "doctor.yaml"
        script.write_text(SCRIPT.format(offer=offer))
        args = ["doctor", "--esl", esl or f"127.0.0.1:{switch.port}", "--db", db, "--script", str(script), *extra]
        result = CliRunner().invoke(main, args, catch_exceptions=False)
        lines = {line.split()[1]: line for line in result.output.splitlines() if line[:4].strip() in ("OK", "WARN", "FAIL")}
        return result, lines
    run.store = store
    yield run
    store.close()


def status(lines: dict, check: str) -> str:
    return lines[check].split()[0]


def test_a_healthy_installation_passes_every_check(doctor):
    result, lines = doctor()
    assert result.exit_code == 0, result.output
    assert list(lines) == ["esl", "database", "version", "max-sessions", "sessions/s", "prompts", "agents", "dial",
                           "phones", "features", "clocks", "scheduling"]
    assert all(status(lines, c) == "OK" for c in lines), result.output
    assert "all 3 prompts of script 'doctor' are on the switch" in lines["prompts"]
    assert "all 1 agents' dial strings resolve" in lines["agents"]
    assert "FreeSWITCH Version 1.11.3-dev" in lines["version"]


def test_wrong_password(doctor):
    result, lines = doctor("--esl-password", "nope")
    assert result.exit_code == 1
    assert status(lines, "esl") == "FAIL" and "refused the password" in lines["esl"]
    assert "--esl-password" in result.output
    assert status(lines, "database") == "OK"


def test_nothing_listening(doctor):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    result, lines = doctor(esl=f"127.0.0.1:{port}")
    assert result.exit_code == 1
    assert status(lines, "esl") == "FAIL" and f"nothing answers at 127.0.0.1:{port}" in lines["esl"]
    assert "start FreeSWITCH" in result.output


def test_something_that_is_not_freeswitch(doctor):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def serve():
        conn, _ = server.accept()
        conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n\r\n\n\n")
        gevent.sleep(1)
        conn.close()
    g = gevent.spawn(serve)
    try:
        result, lines = doctor(esl="127.0.0.1:%d" % server.getsockname()[1])
    finally:
        g.kill()
        server.close()
    assert result.exit_code == 1 and "is not FreeSWITCH's event socket" in lines["esl"]


def test_a_missing_prompt_is_named(doctor):
    result, lines = doctor(offer="file_string://ivr/ivr-callback_offer.wav!digits/1.wav")
    assert result.exit_code == 1
    assert status(lines, "prompts") == "FAIL" and "1 of 3 prompts" in lines["prompts"]
    assert "action 'Offer': prompt 'file_string://ivr/ivr-callback_offer.wav!digits/1.wav' lacks " \
           "ivr/ivr-callback_offer.wav" in result.output
    assert "install them under the switch's sound_prefix" in result.output


def test_a_missing_stream_and_a_prompt_with_variables(doctor, switch):
    api.execute(switch.switch, "sim", "stream remove moh")
    result, lines = doctor(offer="ivr/{GREETING}.wav")
    assert status(lines, "prompts") == "FAIL"
    assert "names no local_stream source 'moh'" in result.output
    assert "1 with {variables} checked at run time" in lines["prompts"]


def test_an_unknown_user_in_an_agents_dial_string(doctor):
    doctor.store.add_agent("bob", "user/9999", ["support"])
    doctor.store.add_agent("carol", "sofia/nosuchprofile/2000@127.0.0.1", ["support"])
    result, lines = doctor()
    assert result.exit_code == 1
    assert status(lines, "agents") == "FAIL" and "2 of 3 agents cannot be rung" in lines["agents"]
    assert "agent bob: user/9999: no user 9999 in the switch's directory for domain 192.0.2.2" in result.output
    assert "agent carol: sofia/nosuchprofile/2000@127.0.0.1: the switch runs no sofia profile 'nosuchprofile'" \
           in result.output


def test_a_dial_template_through_a_gateway_the_switch_lacks(doctor):
    result, lines = doctor("--dial-template", "sofia/gateway/carrier/{number}")
    assert result.exit_code == 1 and status(lines, "dial") == "FAIL"
    assert "the switch has no gateway 'carrier'" in lines["dial"]


@pytest.mark.parametrize("rate,expected,code", [("30", "FAIL", 1), ("25", "WARN", 0), ("20", "OK", 0)])
def test_originate_rate_against_sessions_per_second(doctor, rate, expected, code):
    result, lines = doctor("--originate-rate", rate)
    assert status(lines, "sessions/s") == expected, result.output
    assert result.exit_code == code


def test_a_database_that_is_not_migrated(doctor):
    url = create_database()
    try:
        result, lines = doctor(db=url)
    finally:
        drop_database(url)
    assert result.exit_code == 1
    assert status(lines, "database") == "FAIL" and "none (no tables)" in lines["database"]
    assert "run: esl-cb db upgrade --db" in result.output
    assert status(lines, "agents") == "FAIL"


def test_a_database_that_is_not_there(doctor):
    result, lines = doctor(db="postgresql+psycopg2://postgres@127.0.0.1:1/nowhere")
    assert result.exit_code == 1 and "cannot reach the database" in lines["database"]


@pytest.mark.parametrize("offset,expected", [("0.3", "WARN"), ("-2", "FAIL")])
def test_clocks_that_disagree(doctor, switch, offset, expected):
    api.execute(switch.switch, "sim", f"clock {offset}")
    result, lines = doctor()
    assert status(lines, "clocks") == expected, result.output
    measured = int(re.search(r"switch ([-+]\d+) ms", lines["clocks"]).group(1))
    assert abs(measured - float(offset) * 1000) < 50, lines["clocks"]


# -- check_prompts on its own: the switch's answers as FreeSWITCH 1.11 gives them ----------------
def fake_switch(files: set[str], streams: set[str], prefix: str | None = "/snd/en/us/callie"):
    asked = []

    def api_call(cmd: str) -> str:
        asked.append(cmd)
        if cmd == "global_getvar sound_prefix":
            return prefix if prefix else "-ERR no reply\n"
        if cmd == "global_getvar sounds_dir":
            return "/snd"
        if cmd.startswith("file_exists "):
            return "true" if cmd[12:] in files else "false"
        if cmd.startswith("local_stream show "):
            name = cmd[18:]
            return f"{name}\n  location: /m\n" if name in streams else f"-ERR Cannot locate local_stream {name}!\n"
        raise AssertionError(cmd)
    api_call.asked = asked
    return api_call


def test_check_prompts_resolves_like_the_switch():
    files = {"/snd/en/us/callie/ivr/8000/a.wav", "/snd/en/us/callie/ivr/16000/b.wav", "/snd/en/us/callie/c.wav",
             "/abs/8000/d.wav"}
    call = fake_switch(files, {"moh"})
    prompts = [("A", "ivr/a.wav"), ("B", "ivr/b.wav"), ("C", "c.wav"), ("D", "/abs/d.wav"), ("E", "ivr/e.wav"),
               ("F", "file_string://ivr/a.wav!ivr/e.wav"), ("G", "tone_stream://%(200,0,800)"),
               ("H", "silence_stream://250"), ("I", "local_stream://moh"), ("J", "local_stream://jazz"),
               ("K", "say:en number pronounced 7"), ("L", "{PROMPT}")]
    problems = check_prompts(call, prompts)
    assert [(p.caption, p.missing) for p in problems] == [("E", True), ("F", True), ("J", True), ("K", False),
                                                          ("L", False)]
    assert "ivr/e.wav" in problems[1].reason and "plays the rest" in problems[1].reason
    assert str(problems[0]).startswith("action 'E': prompt 'ivr/e.wav' is not on the switch (looked for "
                                       "/snd/en/us/callie/ivr/e.wav and /snd/en/us/callie/ivr/{8000,16000,32000,48000}")
    assert call.asked.count("global_getvar sound_prefix") == 1
    assert len(call.asked) == len(set(call.asked))                  # every answer asked once
    assert isinstance(problems[0], PromptProblem)
    with pytest.raises(Exception):
        problems[0].reason = "x"                                     # frozen


def test_check_prompts_falls_back_to_sounds_dir_and_to_the_default_stream():
    call = fake_switch({"/snd/ivr/8000/a.wav"}, {"default"}, prefix=None)
    problems = check_prompts(call, [("A", "ivr/a.wav"), ("M", "local_stream://moh")])
    assert [(p.caption, p.missing) for p in problems] == [("M", False)]
    assert "plays 'default' instead" in problems[0].reason


def test_a_file_string_with_variables_has_its_fixed_parts_checked_now():
    files = {"/snd/en/us/callie/ivr/8000/you.wav"}
    call = fake_switch(files, set())
    prompts = [("P", "file_string://ivr/you.wav!{PositionSounds}"),        # fine: only its variable waits
               ("Q", "file_string://ivr/you.wav!{PositionSounds}!ivr/gone.wav"),
               ("R", "{PROMPT}")]
    problems = check_prompts(call, prompts)
    assert [(p.caption, p.missing, p.at_run_time) for p in problems] == [
        ("P", False, True), ("Q", True, False), ("R", False, True)]
    assert "ivr/gone.wav" in problems[1].reason and "plays the rest" in problems[1].reason
    unsure = check_prompts(fake_switch(files, set()), [("S", "file_string://say:en number 3!{X}")])
    assert [(p.missing, p.at_run_time) for p in unsure] == [(False, False)]      # say: is not a variable


def test_an_agent_whose_phone_is_not_registered_and_pins_without_the_feature_codes(doctor, switch):
    """Issue 20: a warning per agent whose phone has no registration (not offered); once agents have
    PINs, the dialplan must hand feature codes to esl-cb (here the switch cannot list its dialplan)."""
    from esl_cb.app.phones import PhoneService
    from esl_cb.sim import api

    doctor.store.add_agent("bob", "user/1002", ["support"])
    api.execute(switch.switch, "sim", "phone 1002 unregister")
    PhoneService(doctor.store).set_pin("alice", "1357")
    result, lines = doctor()
    assert result.exit_code == 0                       # warnings only
    assert status(lines, "phones") == "WARN" and "1 of 2 agents' phones are not registered" in lines["phones"]
    assert "agent bob: phone 1002@192.0.2.2 has no registration: not offered" in result.output
    assert status(lines, "features") == "WARN" and "cannot read the switch's dialplan" in lines["features"]
