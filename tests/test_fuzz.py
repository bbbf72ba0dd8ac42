"""Property-based tests (hypothesis): caller ids, keyed digits, script values and ESL header values of
every shape. Nothing but an E.164 number the policy allows may reach an originate, nothing may crash
the controller, and a hostile peer on the outbound socket is cut off without harm."""
from __future__ import annotations

import os
import re
import socket
import time

import gevent
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from esl_cb.controller.guard import CallbackGuard
from esl_cb.controller.ports import CallerVoice, LiveCall, StoreQueue
from esl_cb.domain import script as scripts
from esl_cb.domain.numbers import InvalidNumber, normalize
from esl_cb.domain.policy import DestinationPolicy
from esl_cb.domain.runtime import ActionFailed, ScriptRunner
from esl_cb.esl import commands
from esl_cb.esl.inbound import Event
from esl_cb.esl.wire import FrameReader, ProtocolError, UnsafeValue, command_text

from .fixtures import wait_until
from .harness import Harness
from .test_esl_values import recording_channel

E164 = re.compile(r"\+[0-9]{6,16}")
# Examples per property (ESL_CB_FUZZ_EXAMPLES=20000 for a deep run; CI runs the default).
EXAMPLES = int(os.environ.get("ESL_CB_FUZZ_EXAMPLES", "2000"))
POLICY = DestinationPolicy()                  # the defaults: the US only, no premium-rate and the like
# Anything a caller controls: printable text, digits with separators, control bytes, injection attempts.
hostile = st.one_of(
    st.text(max_size=60),
    st.from_regex(r"\+?[0-9 ().\-]{0,30}", fullmatch=True),
    st.builds(lambda a, b: a + b, st.sampled_from(["{", "}", ",", "|", "${", "&", "'", "\n", "\r\n\r\n", "%0A",
                                                     "1000,sofia/gateway/x/900", "{x=y}", "user/1001"]),
              st.text(alphabet="0123456789+", max_size=16)),
)


@settings(max_examples=EXAMPLES, deadline=None)
@given(hostile, st.sampled_from(["US", "GB", "DE", "JM", "XX"]))
def test_normalize_returns_e164_or_says_why(raw, region):
    try:
        out = normalize(raw, region)
    except InvalidNumber as e:
        assert str(e)
        return
    assert E164.fullmatch(out), out


@settings(max_examples=EXAMPLES, deadline=None)
@given(hostile, st.sampled_from(["sofia/gateway/pstn/{number}", "sofia/gateway/pstn/{digits}", "user/{digits}"]))
def test_a_dial_string_never_carries_more_than_a_number(number, template):
    try:
        dial = commands.dial_for(template, number)
    except commands.UnsafeDialString:
        return
    assert commands.DIAL_STRING.match(dial) and not set(dial) & set("{},| '\"&$\n\r")


class FakeCall:
    def __init__(self, digits: str) -> None:
        self.digits = digits

    def play(self, prompt, max_seconds):
        pass

    def menu(self, prompt, timeout, keys):
        return "1"

    def capture(self, prompt, min_digits, max_digits, timeout, terminator):
        return self.digits

    def hangup(self):
        pass


class FakeStore:
    """What the guard and StoreQueue need of the store; records what would be stored."""

    def __init__(self) -> None:
        self.stored: list[str] = []
        self.refused: list[str] = []

    def overridden(self, number):
        return False

    def record_refusal(self, contact_id, number, calling, stage, rule, reason):
        self.refused.append(number)

    def request_callback(self, contact_id, number, caller_id, delay, ani, dnis, limits=None, override=False,
                         options=None):
        self.stored.append(number)
        self.stored.append(caller_id)
        return contact_id

    def queue_contact(self, contact_id, skill, priority):
        pass


SCRIPT = scripts.parse("""
name: fuzz
actions:
  - action: Begin
    Default: Queue
  - action: Reqagent
    Caption: Queue
    Skill: "{Skill}"
    PriorityInitial: "{Prio}"
    Default: Ask
  - action: Capture
    Caption: Ask
    Prompt: ivr/ivr-please_enter_the_number_where_we_can_reach_you.wav
    Variable: Digits
    Default: Choose
  - action: Menu
    Caption: Choose
    Prompt: digits/1.wav
    "1": Callback
    Default: Choose
  - action: Callback
    PhoneNumber: "{Target}"
    CallerID: "{DNIS}"
    CallDelaySec: "{Delay}"
    Default: Hangup
    OnError: Done
  - action: Hangup
    Caption: Done
  - action: Hangup
""", "fuzz.yaml")


@settings(max_examples=EXAMPLES * 3 // 4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ani=hostile, dnis=hostile, digits=hostile, skill=hostile, prio=hostile, delay=hostile,
       target=st.sampled_from(["{ANI}", "{Digits}", "{DNIS}"]))
def test_only_allowed_e164_numbers_are_ever_stored_for_a_callback(ani, dnis, digits, skill, prio, delay, target):
    store = FakeStore()
    queue = StoreQueue(store, 1, lambda: None, CallbackGuard(POLICY, store), ani)
    variables = {"ANI": ani, "DNIS": dnis, "ContactID": "1", "Skill": skill, "Prio": prio, "Delay": delay,
                 "Target": target}
    runner = ScriptRunner(SCRIPT, FakeCall(digits), queue, variables)
    result = runner.run()                                      # never raises
    assert result.ended_by in ("hangup", "end")
    for number in store.stored:
        assert E164.fullmatch(number), number
    if store.stored:
        assert POLICY.check(store.stored[0]).allowed
    for number in store.refused:
        assert not POLICY.check(number).allowed


@settings(max_examples=EXAMPLES // 2, deadline=None)
@given(st.lists(st.tuples(st.text(alphabet=st.characters(blacklist_characters=":\n"), min_size=1, max_size=20),
                          st.text(max_size=200)), max_size=30),
       st.binary(max_size=300))
def test_any_event_header_value_is_read_without_a_crash(headers, body):
    text = "".join(f"{k}: {v.replace(chr(10), ' ')}\n" for k, v in headers)
    ev = Event(text, body)
    for k, _ in headers:
        ev.get(k)
    assert isinstance(ev.name, str) and isinstance(ev.uuid, str)


@settings(max_examples=EXAMPLES // 2, deadline=None)
@given(st.lists(st.binary(max_size=400), max_size=20))
def test_the_frame_reader_takes_any_bytes(chunks):
    reader = FrameReader()
    try:
        for c in chunks:
            for frame in reader.feed(c):
                assert isinstance(frame.body, bytes)
    except ProtocolError:
        pass


# Text with a line break or NUL somewhere in it, and text of any shape.
broken = st.builds(lambda a, brk, b: a + brk + b, st.text(max_size=30), st.sampled_from(["\n", "\r", "\r\n", "\x00"]),
                   st.text(max_size=30))
any_value = st.one_of(hostile, broken)


@settings(max_examples=EXAMPLES // 2, deadline=None)
@given(st.text(max_size=40) | broken, st.lists(st.tuples(st.from_regex(r"[A-Za-z0-9_-]{1,12}", fullmatch=True),
                                                          any_value), max_size=4))
def test_a_command_is_one_frame_of_exactly_its_headers_or_is_refused(line, headers):
    try:
        text = command_text(line, headers)
    except UnsafeValue:
        assert not line.strip() or any(set(v) & set("\r\n\x00") for v in [line] + [v for _, v in headers])
        return
    frames = FrameReader().feed((text + "\n\n").encode())
    assert len(frames) == 1 and frames[0].first_line == line
    assert len(frames[0].headers) == 1 + len(headers)


VOICE = scripts.parse("""
name: voice
actions:
  - action: Begin
    Default: Say
  - action: Play
    Caption: Say
    Prompt: "say:en number iterated {ANI}"
    Default: Ask
    OnError: Ask
  - action: Menu
    Caption: Ask
    Prompt: "{DNIS}"
    Default: Done
    OnError: Done
  - action: Hangup
    Caption: Done
""", "voice.yaml")
SENDMSG_HEADERS = {"call-command", "execute-app-name", "execute-app-arg", "Event-UUID", "hangup-cause"}


@settings(max_examples=EXAMPLES // 2, deadline=None)
@given(ani=any_value, dnis=any_value)
def test_no_caller_value_puts_a_line_break_on_the_outbound_socket(ani, dnis):
    """Whatever the caller id and the number dialled hold, every message a voice action writes is
    its own headers, one line each: a CR, LF or NUL never reaches the socket."""
    channel, session = recording_channel()
    result = ScriptRunner(VOICE, CallerVoice(LiveCall(1, channel)), FakeStore(),
                          {"ANI": ani, "DNIS": dnis, "ContactID": "1"}).run()
    assert result.ended_by == "hangup"
    for msg in session.sent:
        assert not set(msg) & set("\r\x00")
        lines = msg.split("\n")
        if lines[0] == "sendmsg":
            names = [line.split(": ", 1)[0] for line in lines[1:]]
            assert len(names) == len(set(names)) and set(names) <= SENDMSG_HEADERS, msg
        else:
            assert len(lines) == 1, msg


# -- the controller itself, on the simulator ---------------------------------------------
CALL_NOW = scripts.parse("""
name: straight
actions:
  - action: Begin
    Default: Queue
  - action: Reqagent
    Caption: Queue
    Skill: support
    Default: Callback
  - action: Callback
    CallerID: "+13125557000"
    Default: Hangup
    OnError: Hangup
  - action: Hangup
""", "straight.yaml")


def test_hostile_caller_ids_end_to_end_on_the_simulator(pg_url):
    """Caller ids of every shape through arrival, Callback and the dial, with an agent taking every
    callback: every originate to a customer carries an allowed E.164 number; the controller lives."""
    h = Harness(pg_url, CALL_NOW, callbacks_per_caller_per_hour=0, callbacks_per_number_per_day=0)
    try:
        h.agent("ann", "1001", answer=0.02, available=True)
        h.sim_api("endpoint 1001 answer 0.02 0.1")
        seen: list[str] = []

        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
        @given(st.text(alphabet=st.characters(blacklist_categories=("Cs", "Zs", "Cc")), min_size=1, max_size=24) |
               st.from_regex(r"\+?1?[2-9][0-9]{9}", fullmatch=True))
        def one_call(ani):
            before = h.count("SELECT count(*) FROM contacts")
            reply = h.sim_api(f"call {ani} 3125557000")
            if not reply.startswith("+OK"):
                return                                      # the simulator could not even place it
            seen.append(ani)
            wait_until(lambda: h.count("SELECT count(*) FROM contacts") > before, 5, what="the contact")
        one_call()
        wait_until(lambda: h.count("SELECT count(*) FROM contacts WHERE state NOT IN ('ended', 'callback_queued')")
                   == 0, 30, what="every call settled")
        customers = [o for o in h.sim.switch.originates if o["dial"].startswith("sofia/gateway/pstn/")]
        for o in customers:
            number = o["dial"].rsplit("/", 1)[1]
            assert E164.fullmatch(number) and POLICY.check(number).allowed, o["dial"]
        assert len(seen) >= 30
        assert all(not g.dead for g in (h.controller.greenlet("dispatcher"), h.controller.greenlet("esl")))
    finally:
        h.close()


ATTACKS = {
    "endless line": b"X" * (2 * 1024 * 1024),
    "endless header block": b"Header: " + b"v" * 1000 + b"\n" + (b"H: v\n" * 200_000),
    "negative length": b"Content-Length: -5\nContent-Type: text/event-plain\n\n",
    "length not a number": b"Content-Length: abc\nContent-Type: text/event-plain\n\n",
    "huge length": b"Content-Length: 99999999999\nContent-Type: text/event-plain\n\n",
    "short body": b"Content-Length: 100\nContent-Type: text/event-plain\n\nshort",  # then the peer goes away
    "no colon": b"no colon here\n\n",
    "binary": bytes(range(256)) * 40,
}


@pytest.mark.parametrize("attack", list(ATTACKS.values()), ids=list(ATTACKS))
def test_a_hostile_peer_on_the_outbound_socket_is_cut_off(pg_url, attack, caplog):
    h = Harness(pg_url, CALL_NOW)
    caplog.set_level("INFO", logger="esl_cb.esl.outbound")
    try:
        s = socket.create_connection(("127.0.0.1", h.controller.listen_port), timeout=5)
        assert s.recv(100).startswith(b"connect")                    # we greet it as we greet FreeSWITCH
        t0 = time.monotonic()
        try:
            s.sendall(attack)
            s.shutdown(socket.SHUT_WR) if attack.endswith(b"short") else None
            while s.recv(65536):
                pass
        except OSError:
            pass                                                     # cut off while sending: fine
        assert time.monotonic() - t0 < 11                            # not followed for ever
        s.close()
        wait_until(lambda: [r for r in caplog.records if r.name == "esl_cb.esl.outbound" and
                            ("broke the ESL protocol" in r.getMessage() or "unreadable" in r.getMessage() or
                             "ended before connect" in r.getMessage())], 5, what="the peer cut off and said so")
        gevent.sleep(0.2)
        assert not h.controller.greenlet("outbound-socket server").dead
        h.agent("ann", "1001", answer=0.05, available=True)          # a real call still works
        h.sim_api("endpoint +13125550190 answer 0.05")
        h.call("3125550190", "3125557000")
        h.wait_connected(timeout=10)
    finally:
        h.close()


def test_action_failed_is_what_a_refusal_raises():
    store = FakeStore()
    guard = CallbackGuard(POLICY, store)
    with pytest.raises(ActionFailed, match="premium-rate"):
        guard.request(1, "+19005550100", "+13125550100", lambda limits, override: 1)
    assert store.refused == ["+19005550100"]
