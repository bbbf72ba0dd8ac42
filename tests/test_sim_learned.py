"""What the real FreeSWITCH taught the simulator (esl-captures 12 and 13, and measurements on the real
switch; tests/test_real_learned.py asserts the same facts on it). The `check_*` functions hold each
fact once, for both switches."""
from __future__ import annotations

import json
import re
import socket
import time
import uuid as uuidlib

import gevent
from gevent.event import AsyncResult

from esl_cb.esl.inbound import InboundConnection
from esl_cb.sim import api

from .fixtures import wait_until
from .replay import SocketCall, differences, load, replay

CALL_COLUMNS = ("uuid,direction,created,created_epoch,name,state,cid_name,cid_num,ip_addr,dest,presence_id,"
                "presence_data,accountcode,callstate,callee_name,callee_num,callee_direction,call_uuid,hostname,"
                "sent_callee_name,sent_callee_num,b_uuid,b_direction,b_created,b_created_epoch,b_name,b_state,"
                "b_cid_name,b_cid_num,b_ip_addr,b_dest,b_presence_id,b_presence_data,b_accountcode,b_callstate,"
                "b_callee_name,b_callee_num,b_callee_direction,b_sent_callee_name,b_sent_callee_num,"
                "call_created_epoch")
STATUS = re.compile(
    r"UP \d+ years?, \d+ days?, \d+ hours?, \d+ minutes?, \d+ seconds?, \d+ milliseconds?, \d+ microseconds?\n"
    r"FreeSWITCH \(Version [^)]+\) is ready\n"
    r"\d+ session\(s\) since startup\n"
    r"\d+ session\(s\) - peak \d+, last 5min \d+ \n"
    r"-?\d+ session\(s\) per Sec out of max (\d+), peak \d+, last 5min \d+ \n"
    r"(\d+) session\(s\) max\n"
    r"min idle cpu \d+\.\d\d/\d+\.\d\d\n"
    r"Current Stack Size/Max \d+K/\d+K\n$")


# -- facts, for both switches ------------------------------------------------------------------
def check_answered_leg_lags_in_show_channels(connect, originate, tries: int = 5) -> None:
    """After CHANNEL_ANSWER, `show channels` reads RINGING for up to ~200 ms (the core db is written in
    batches); uuid_dump reads the live session: answered at once. connect(on_event) -> an
    InboundConnection; originate(uuid, conn) places a call to a phone that answers after ringing a while (so that the
    leg is listed before it answers)."""
    lags, seen_ringing = [], 0
    for _ in range(tries):
        answered = AsyncResult()
        conn = connect(lambda ev: ev.name == "CHANNEL_ANSWER" and answered.set(time.monotonic()))
        call = conn.api
        leg = str(uuidlib.uuid4())
        originate(leg, conn)
        at = answered.get(timeout=10)
        dump = json.loads(call(f"uuid_dump {leg} json"))
        assert dump["Answer-State"] == "answered" and dump["Channel-Call-State"] == "ACTIVE"
        assert dump["Event-Name"] == "CHANNEL_DATA" and dump["Event-Calling-Function"] == "uuid_dump_function"
        first = True
        while True:
            rows = [r for r in json.loads(call("show channels as json")).get("rows", []) if r["uuid"] == leg]
            state = rows[0]["callstate"] if rows else "missing"
            if state == "ACTIVE":
                lags.append(time.monotonic() - at)
                break
            assert state == "RINGING", state
            seen_ringing += first
            first = False
            assert time.monotonic() - at < 0.5, "show channels still says RINGING 0.5 s after the answer"
            gevent.sleep(0.005)
        assert json.loads(call(f"uuid_dump {leg} json"))["Answer-State"] == "answered"
        call(f"uuid_kill {leg}")
        if seen_ringing:
            break
    assert seen_ringing, f"show channels caught up at once every time: {lags}"
    assert max(lags) < 0.3, lags


def check_uuid_dump_forms(call, leg: str) -> None:
    assert call("uuid_dump") == "-USAGE: <uuid> [format]\n"
    assert call("uuid_dump 11111111-2222-4333-8444-555555555555") == "-ERR No such channel!\n"
    assert call("uuid_dump 11111111-2222-4333-8444-555555555555 json") == "-ERR No such channel!\n"
    plain = call(f"uuid_dump {leg}")
    assert plain.startswith("Event-Name: CHANNEL_DATA\nCore-UUID: ") and plain.endswith("\n\n")
    assert f"\nUnique-ID: {leg}\n" in plain and "\nAnswer-State: answered\n" in plain
    assert "\nEvent-Calling-File: mod_commands.c\nEvent-Calling-Function: uuid_dump_function\n" in plain
    assert re.search(r"\nChannel-Name: sofia/\w+/\w+%40", plain), "values are percent-encoded as in events"
    dump = json.loads(call(f"uuid_dump {leg} json"))
    assert [k for k in dump] == [line.split(": ", 1)[0] for line in plain.strip().split("\n")]
    assert call(f"uuid_dump {leg} xml").startswith("<event>\n  <headers>\n    <Event-Name>CHANNEL_DATA</Event-Name>\n")


def check_show_formats(call) -> None:
    assert call("show channels count") == f"\n{len(json.loads(call('show channels as json')).get('rows', []))} total.\n"
    calls = call("show calls")
    assert calls.split("\n", 1)[0] == CALL_COLUMNS or calls == "\n0 total.\n"


def check_settings(call, sps: int, max_sessions: int, user: str, domain: str, gateway: str | None,
                   profile: str) -> None:
    m = STATUS.match(call("status"))
    assert m, call("status")
    assert (int(m.group(1)), int(m.group(2))) == (sps, max_sessions)
    assert call("fsctl max_sessions") == f"+OK max sessions: {max_sessions}\n"
    assert call("fsctl sps") == f"+OK sessions per second: {sps}\n"
    assert call("fsctl sps 0") == f"+OK sessions per second: {sps}\n"        # 0 changes nothing
    assert call("fsctl").startswith("-USAGE: [api_expansion [on|off]|")
    assert call("global_getvar domain") == domain
    assert call("global_getvar esl_cb_no_such_variable") == "-ERR no reply\n"
    assert call(f"user_exists id {user} {domain}") == "true"
    assert call(f"user_exists id 9999 {domain}") == "false"
    assert call(f"user_exists id {user} nosuch.example") == "false"
    assert call(f"user_exists id {user}") == "false"
    assert call("sofia status gateway esl_cb_nosuch") == "Invalid Gateway!\n"
    assert call("sofia status profile esl_cb_nosuch") == "Invalid Profile!\n"
    if gateway:
        text = call(f"sofia status gateway {gateway}")
        assert text.startswith("=" * 97 + "\nName    \t" + gateway + "\n") and "\nStatus  \tUP\n" in text
    assert call(f"sofia status profile {profile}").startswith("=" * 97 + "\nName             \t" + profile + "\n")
    listing = call("sofia status")
    assert re.search(rf"^ *{profile}\tprofile\t *sip:mod_sofia@[\d.]+:\d+\tRUNNING \(\d+\)$", listing, re.M), listing
    assert call("strftime %s") == "-ERR no reply\n"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", call("strftime"))
    assert abs(int(call("strepoch")) - time.time()) < 2


def check_sounds(call, prompt: str) -> None:
    """file_exists is true for an installed prompt by its absolute path in the rate folder only."""
    prefix = call("global_getvar sound_prefix")
    assert prefix.startswith("/") and prefix.startswith(call("global_getvar sounds_dir"))
    d, name = prompt.rsplit("/", 1)
    assert call(f"file_exists {prefix}/{d}/8000/{name}") == "true"
    assert call(f"file_exists {prefix}/{d}") == "true"                 # a folder counts
    assert call(f"file_exists {prefix}/{prompt}") == "false"
    assert call(f"file_exists {prompt}") == "false"                    # relative: never
    assert call("file_exists tone_stream://%(200,0,440)") == "false"
    assert call("file_exists local_stream://moh") == "false"
    assert call("local_stream show moh").startswith("moh\n  location: ")
    assert "\n  ready:    true\n" in call("local_stream show moh")
    assert call("local_stream show esl_cb_nosuch") == "-ERR Cannot locate local_stream esl_cb_nosuch!\n"
    assert call("local_stream show").startswith("moh,")


def check_missing_prompts(call: SocketCall, installed: str, missing: str = "ivr/esl-cb-missing.wav") -> None:
    """Playback of what the switch lacks ends at once; play_and_get_digits returns after its invalid
    sound with no digit and no read_result, not after its timeout."""
    took, done = call.execute("playback", missing)
    assert done.get("Application-Response") == "FILE NOT FOUND" and took < 0.2, took
    assert done.get("variable_current_application_response") == "FILE NOT FOUND"
    took, done = call.execute("playback", "local_stream://esl_cb_nosuch")
    assert done.get("Application-Response") == "FILE NOT FOUND" and took < 0.2, took
    took, done = call.execute("playback", f"file_string://{missing}!ivr/esl-cb-missing-too.wav")
    assert done.get("Application-Response") == "FILE NOT FOUND" and took < 0.2, took
    took, done = call.execute("playback", f"file_string://{missing}!{installed}")
    assert done.get("Application-Response") == "FILE PLAYED", "a file_string plays the parts it finds"
    for prompt in (missing, "local_stream://esl_cb_nosuch", f"file_string://{missing}!ivr/esl-cb-missing-too.wav"):
        took, done = call.execute("play_and_get_digits", f"1 1 1 3000 # {prompt} silence_stream://250 cb_digit \\d")
        assert 0.2 < took < 0.6, (prompt, took)                         # 0.25 s of invalid sound, not 3 s
        assert done.get("Application-Response") == "_none_"
        assert done.get("variable_read_result") == "" and done.get("variable_cb_digit") == ""
        assert done.get("variable_playback_ms") == "250"                # what played: the invalid sound
    took, done = call.execute("play_and_get_digits", f"1 1 1 1000 # file_string://{missing}!{installed} "
                                                     "silence_stream://250 cb_digit \\d")
    assert took > 1.0 and done.get("variable_read_result") == "failure"  # a partial prompt plays: a real wait


# -- the simulator -------------------------------------------------------------------------------
def sim_connect(sim):
    def connect(on_event):
        conn = InboundConnection("127.0.0.1", sim.port, "ClueCon", on_event, timeout=5)
        conn.connect(["CHANNEL_ANSWER"])
        return conn
    return connect


def test_an_answered_leg_reads_ringing_in_show_channels_for_a_batch(sim):
    api.execute(sim.switch, "sim", "endpoint 5551000 answer 0.3")     # rings long enough to be listed
    check_answered_leg_lags_in_show_channels(
        sim_connect(sim), lambda leg, conn: conn.bgapi(f"originate {{origination_uuid={leg}}}sofia/gateway/pstn/5551000 "
                                                       "&park()"))


def test_show_channels_lists_new_and_gone_legs_a_batch_late_and_coredb_0_is_live(sim):
    sw = sim.switch
    now = [100.0]
    sw.coredb.clock, sw.coredb.started = (lambda: now[0]), 100.0     # batches at 100.0, 100.2, 100.4...
    api.execute(sw, "sim", "endpoint 5551000 answer 0.01")
    now[0] = 100.05
    leg = api.execute(sw, "originate", "sofia/gateway/pstn/5551000 &park()").split()[1]
    assert api.execute(sw, "show", "channels as json") == '{"row_count": 0}\n'      # not in a batch yet
    assert api.execute(sw, "show", "channels count") == "\n0 total.\n"
    now[0] = 100.21
    rows = json.loads(api.execute(sw, "show", "channels as json"))["rows"]
    assert [(r["uuid"], r["callstate"], r["application"]) for r in rows] == [(leg, "ACTIVE", "park")]
    now[0] = 100.25
    api.execute(sw, "uuid_kill", leg)
    gevent.sleep(0.05)
    assert api.execute(sw, "uuid_exists", leg) == "false"
    assert json.loads(api.execute(sw, "show", "channels as json"))["row_count"] == 1   # gone, still listed
    now[0] = 100.41
    assert api.execute(sw, "show", "channels as json") == '{"row_count": 0}\n'
    leg = api.execute(sw, "originate", "sofia/gateway/pstn/5551000 &park()").split()[1]
    assert api.execute(sw, "sim", "coredb 0") == "+OK\n"                           # no batches: live
    assert [r["uuid"] for r in json.loads(api.execute(sw, "show", "channels as json"))["rows"]] == [leg]


def test_a_ringing_row_is_what_capture_13_shows(sim):
    """The row of a leg not yet answered carries the originate's caller id and no codec or application."""
    recorded = [r for r in load("13-show-channels-lag.jsonl")[1:] if r["dir"] == "in" and '"RINGING"' in r["raw"]]
    ringing = [row for row in json.loads(recorded[0]["raw"].split("\n\n", 1)[1])["rows"] if row["callstate"] == "RINGING"]
    api.execute(sim.switch, "sim", "coredb 0")
    api.execute(sim.switch, "sim", "endpoint agent noanswer")
    leg = str(uuidlib.uuid4())
    api.background(sim.switch, "originate", f"{{origination_uuid={leg},origination_caller_id_number=3125550100,"
                   "origination_caller_id_name=Callback,esl_cb_contact_id=42,ignore_early_media=true,"
                   "originate_timeout=20}sofia/lab/agent@127.0.0.1:5080 &park()", str(uuidlib.uuid4()))
    gevent.sleep(0.05)
    row = json.loads(api.execute(sim.switch, "show", "channels as json"))["rows"][0]
    expected = dict(ringing[0], uuid=leg, call_uuid=leg, created=row["created"], created_epoch=row["created_epoch"],
                    hostname=row["hostname"])
    assert row == expected
    api.execute(sim.switch, "uuid_kill", leg)


def test_uuid_dump_is_the_live_session_in_the_real_switchs_format(sim):
    api.execute(sim.switch, "sim", "endpoint agent answer 0.01")
    leg = str(uuidlib.uuid4())
    assert api.execute(sim.switch, "originate", f"{{origination_uuid={leg},origination_caller_id_number=3125550100,"
                       "origination_caller_id_name=Callback,esl_cb_contact_id=42,ignore_early_media=true,"
                       "originate_timeout=20}sofia/lab/agent@127.0.0.1:5080 &park()") == f"+OK {leg}\n"
    gevent.sleep(0.05)
    call = lambda cmd: api.execute(sim.switch, *cmd.split(" ", 1)) if " " in cmd else api.execute(sim.switch, cmd, "")  # noqa: E731
    check_uuid_dump_forms(call, leg)
    # Header for header what the real switch dumped for the same parked leg (capture 13).
    recorded = next(r for r in load("13-show-channels-lag.jsonl")[1:] if r["dir"] == "in" and "uuid_dump_function" in r["raw"])
    real = json.loads(recorded["raw"].split("\n\n", 1)[1])
    ours = json.loads(call(f"uuid_dump {leg} json"))
    assert list(ours) == list(real)
    same = ("Channel-State", "Channel-Call-State", "Answer-State", "Call-Direction", "Caller-Caller-ID-Name",
            "Caller-Orig-Caller-ID-Name", "Caller-Orig-Caller-ID-Number", "variable_esl_cb_contact_id",
            "variable_current_application", "Event-Calling-Line-Number")
    assert {k: ours[k] for k in same} == {k: real[k] for k in same}


def test_show_calls_lists_a_bridged_pair_as_one_call(sim):
    sw = sim.switch
    api.execute(sw, "sim", "coredb 0")
    api.execute(sw, "sim", "endpoint 5551000 answer 0.01")
    a = api.execute(sw, "originate", "sofia/gateway/pstn/5551000 &park()").split()[1]
    b = api.execute(sw, "originate", "sofia/gateway/pstn/5551000 &park()").split()[1]
    assert api.execute(sw, "uuid_bridge", f"{a} {b}") == f"+OK {b}\n"
    calls = json.loads(api.execute(sw, "show", "calls as json"))
    assert calls["row_count"] == 1 and list(calls["rows"][0]) == CALL_COLUMNS.split(",")
    assert (calls["rows"][0]["uuid"], calls["rows"][0]["b_uuid"]) == (a, b)
    chans = {r["uuid"]: r for r in json.loads(api.execute(sw, "show", "channels as json"))["rows"]}
    assert (chans[a]["state"], chans[a]["application"], chans[a]["application_data"]) == ("CS_SOFT_EXECUTE", "uuid_bridge", b)
    assert chans[b]["state"] == "CS_EXCHANGE_MEDIA"
    check_show_formats(lambda cmd: api.execute(sw, *cmd.split(" ", 1)))


def test_settings_and_limits_answer_like_freeswitch(sim):
    sw = sim.switch
    sw.sessions_per_second = 30

    def call(cmd: str) -> str:
        name, _, arg = cmd.partition(" ")
        return api.execute(sw, name, arg)
    check_settings(call, sps=30, max_sessions=100, user="1001", domain="192.0.2.2", gateway="pstn", profile="internal")
    assert call("global_getvar sounds_dir") == "/usr/local/freeswitch/share/freeswitch/sounds"   # capture 12
    assert call("fsctl max_sessions 50") == "+OK max sessions: 50\n" and sw.max_sessions == 50
    assert call("fsctl sps 40") == "+OK sessions per second: 40\n" and sw.sessions_per_second == 40
    assert "\n40 session(s) per Sec out of max" not in call("status") and "out of max 40," in call("status")
    assert call("status").startswith("UP 0 years, 0 days, 0 hours, 0 minutes, ")


def check_refusals(conn, burst: int) -> None:
    """Over max-sessions or sessions-per-second an originate fails at once with
    DESTINATION_OUT_OF_ORDER, and the refused leg never shows a channel event. conn: an
    InboundConnection subscribed to ALL whose events land in conn.events."""
    assert conn.api("fsctl max_sessions 1") == "+OK max sessions: 1\n"
    first, refused = str(uuidlib.uuid4()), str(uuidlib.uuid4())
    conn.bgapi(f"originate {{origination_uuid={first},originate_timeout=20}}{conn.dial} &park()")
    try:
        gevent.sleep(0.2)
        assert conn.api(f"uuid_exists {first}") == "true"            # ringing: a session
        assert conn.api(f"originate {{origination_uuid={refused}}}{conn.dial} &park()") == \
            "-ERR DESTINATION_OUT_OF_ORDER\n"
    finally:
        conn.api(f"uuid_kill {first}")
        conn.api(f"fsctl max_sessions {conn.max_sessions}")
    gevent.sleep(1.0 - time.time() % 1 + 0.05)
    legs = [str(uuidlib.uuid4()) for _ in range(burst)]
    # Sent together (each without waiting for the one before's reply): on a busy machine one at a time
    # could straddle a second, and FreeSWITCH counts sessions per calendar second.
    sends = {leg: gevent.spawn(conn.bgapi, f"originate {{origination_uuid={leg}}}{conn.dial} &park()") for leg in legs}
    gevent.joinall(list(sends.values()), raise_error=True)
    jobs = {g.value: leg for leg, g in sends.items()}

    def refused_now() -> list[str]:
        results = {jobs[e.get("Job-UUID")]: e.body for e in conn.events if e.get("Job-UUID") in jobs}
        return [leg for leg, body in results.items() if body == b"-ERR DESTINATION_OUT_OF_ORDER\n"]
    # Past sessions-per-second at least this many are refused, each at once (waited for, not slept on:
    # on a busy machine the replies take longer than any fixed pause).
    refusals = wait_until(lambda: len(r := refused_now()) >= conn.min_refused and r, 15,
                          what=f"{conn.min_refused} refusals of {burst} originates")
    touched = {e.uuid for e in conn.events}
    assert refused not in touched and not touched & set(refusals)
    for leg in legs:
        conn.api(f"uuid_kill {leg}")
    # This second's sessions are used up: whatever calls the switch next (the next test's caller) waits
    # for the next second, which is when the switch counts afresh.
    gevent.sleep(1.0 - time.time() % 1 + 0.05)


def test_refusals_over_the_limits_are_destination_out_of_order_without_channel_events(sim):
    api.execute(sim.switch, "sim", "endpoint 5551000 answer 5")
    sim.switch.sessions_per_second = 3
    events = []
    conn = InboundConnection("127.0.0.1", sim.port, "ClueCon", events.append, timeout=5)
    conn.connect(["ALL"])
    conn.events, conn.dial, conn.max_sessions = events, "sofia/gateway/pstn/5551000", 100
    conn.min_refused = 5 - 3
    try:
        check_refusals(conn, burst=5)
    finally:
        conn.close()


def test_prompts_the_switch_lacks(sim):
    sim.switch.time_scale = 1.0
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    sim.switch.socket_target = listener.getsockname()
    api.execute(sim.switch, "sim", "call 3125550199 3125557000")
    call = SocketCall(listener)
    try:
        check_sounds(call.api, "ivr/ivr-thank_you.wav")
        check_missing_prompts(call, "ivr/ivr-thank_you.wav")
    finally:
        call.hangup()
        listener.close()


def test_the_sim_command_installs_and_removes_prompts_streams_users_and_gateways(sim):
    sw = sim.switch

    def call(cmd: str) -> str:
        name, _, arg = cmd.partition(" ")
        return api.execute(sw, name, arg)
    prefix = call("global_getvar sound_prefix")
    assert call("sim prompt add ivr/ivr-callback_offer.wav") == f"+OK {prefix}/ivr/8000/ivr-callback_offer.wav\n"
    assert call(f"file_exists {prefix}/ivr/8000/ivr-callback_offer.wav") == "true"
    assert sw.sounds.playable("ivr/ivr-callback_offer.wav")
    assert call("sim prompt remove ivr/ivr-callback_offer.wav") == "+OK 1 file(s) removed\n"
    assert call("sim prompt remove ivr/ivr-thank_you.wav") == "+OK 4 file(s) removed\n"   # every rate
    assert sw.sounds.playable("file_string://ivr/ivr-thank_you.wav!digits/1.wav") == ["digits/1.wav"]
    assert call("sim prompt add /srv/prompts/hello.wav") == "+OK /srv/prompts/hello.wav\n"
    assert call("file_exists /srv/prompts/hello.wav") == "true"
    assert call("sim stream remove moh") == "+OK\n" and not sw.sounds.playable("local_stream://moh")
    assert call("local_stream show moh") == "-ERR Cannot locate local_stream moh!\n"
    assert call("sim stream add default") == "+OK\n"
    assert sw.sounds.playable("local_stream://moh") == ["local_stream://default"]   # unknown: 'default' plays
    assert call("sim user add 7001") == "+OK\n" and call("user_exists id 7001 192.0.2.2") == "true"
    assert call("sim user remove 1001") == "+OK\n" and call("user_exists id 1001 192.0.2.2") == "false"
    assert call("sim gateway add carrier") == "+OK\n"
    assert "\nStatus  \tUP\n" in call("sofia status gateway carrier")
    assert call("sim gateway down carrier") == "+OK\n" and "\nStatus  \tDOWN\n" in call("sofia status gateway carrier")
    assert call("sim gateway remove carrier") == "+OK\n"
    assert call("originate sofia/gateway/carrier/5551000 &park()") == "-ERR INVALID_GATEWAY\n"
    assert call("sim prompt frobnicate x").startswith("-USAGE: sim endpoint")


def test_the_sim_clock_can_run_off_the_hosts(sim):
    assert api.execute(sim.switch, "sim", "clock 2.5") == "+OK\n"
    assert abs(int(api.execute(sim.switch, "strepoch", "")) - (time.time() + 2.5)) < 1.1
    assert api.execute(sim.switch, "sim", "clock 0") == "+OK\n"
    assert abs(sim.switch.clock() - time.time()) < 0.01


def test_capture_12_missing_prompt_replays_identically(sim):
    from .test_sim_replay import setup_lab

    setup_lab(sim, time_scale=1.0)
    result = replay("12-outbound-missing-prompt.jsonl", sim)
    assert differences("12", result) == []
