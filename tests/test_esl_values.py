"""Values bound for an ESL line: CR, LF or NUL in any of them is refused before a byte is written
(issue 17, item 9), whoever the caller of the ESL layer is."""
from __future__ import annotations

import greenswitch
import pytest

from esl_cb.esl import commands
from esl_cb.esl.outbound import CallChannel, LeanEvent
from esl_cb.esl.wire import FrameReader, UnsafeValue, command_text

from .replay import load
from .test_esl_send import QuietSwitch, connect

BREAKS = ["\n", "\r", "\r\n", "\x00"]


class Reply:
    def __init__(self, data: str = "+OK") -> None:
        self.data = data


class RecordingSession:
    """What CallChannel needs of greenswitch's session. Records each message it would write; a
    sendmsg execute completes at once (its CHANNEL_EXECUTE_COMPLETE carries our Event-UUID)."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.channel: CallChannel | None = None

    def send(self, data: str) -> Reply:
        self.sent.append(data)
        lines = data.split("\n")
        if lines[0] == "sendmsg" and "call-command: execute" in lines:
            uuid = next(line.split(": ", 1)[1] for line in lines if line.startswith("Event-UUID: "))
            event = LeanEvent(f"Event-Name: CHANNEL_EXECUTE_COMPLETE\nApplication-UUID: {uuid}\n")
            self.channel._on_event(event)          # its waiter is registered before the send
        return Reply()


def recording_channel() -> tuple[CallChannel, RecordingSession]:
    session = RecordingSession()
    channel = CallChannel(session)
    session.channel = channel
    channel.data = {"Unique-ID": "0000cccc-0000-4000-8000-000000000001"}
    return channel, session


@pytest.fixture
def quiet():
    fake = QuietSwitch()
    yield fake
    fake.close()


@pytest.mark.parametrize("brk", BREAKS, ids=repr)
def test_inbound_commands_refuse_line_breaks_and_send_nothing(quiet, brk):
    conn = connect(quiet)
    quiet.reading.set()
    with pytest.raises(UnsafeValue, match=r"command line .*holds CR, LF or NUL"):
        conn.api(f"uuid_exists 1111{brk}uuid_kill 2222")
    with pytest.raises(UnsafeValue, match="command line"):
        conn.bgapi(f"originate user/1000{brk}&park()")
    with pytest.raises(UnsafeValue, match="header Job-UUID"):
        conn.bgapi("status", job_uuid=f"0000{brk}Event-UUID: x")
    with pytest.raises(UnsafeValue, match="header name"):
        conn.command("bgapi status", headers={"Job-UUID\nX": "1"})
    # Refused before a byte was written: the connection is intact and the next reply is its own.
    assert conn.connected
    assert conn.api("uuid_exists 3333") == "answer to uuid_exists 3333\n"
    assert quiet.commands == ["api uuid_exists 3333"]
    conn.close()


def test_the_refusal_names_the_value_and_shows_it():
    with pytest.raises(UnsafeValue) as refused:
        command_text("sendmsg", [("execute-app-arg", "say:en\r\nhangup-cause: X")])
    assert "execute-app-arg" in str(refused.value) and repr("say:en\r\nhangup-cause: X") in str(refused.value)
    assert isinstance(refused.value, ValueError)


@pytest.mark.parametrize("brk", BREAKS, ids=repr)
def test_outbound_execute_api_and_hangup_refuse_line_breaks_and_send_nothing(brk):
    channel, session = recording_channel()
    with pytest.raises(UnsafeValue, match="execute-app-arg"):
        channel.execute("playback", f"say:en number iterated 123{brk}call-command: hangup")
    with pytest.raises(UnsafeValue, match="execute-app-name"):
        channel.execute(f"playback{brk}", "ivr/ivr-thank_you.wav")
    with pytest.raises(UnsafeValue, match="command line"):
        channel.api(f"uuid_break {channel.uuid}{brk}uuid_kill x")
    with pytest.raises(UnsafeValue, match="hangup-cause"):
        channel.hangup(f"NORMAL_CLEARING{brk}")
    assert session.sent == [] and channel._waiting == {}          # nothing written, no waiter left behind
    assert channel.execute("playback", "ivr/ivr-thank_you.wav")      # the channel still works
    assert session.sent[0].split("\n")[:4] == ["sendmsg", "call-command: execute", "execute-app-name: playback",
                                               "execute-app-arg: ivr/ivr-thank_you.wav"]


@pytest.mark.parametrize("brk", BREAKS, ids=repr)
def test_command_strings_refuse_line_breaks(brk):
    uuid = "0000cccc-0000-4000-8000-000000000001"
    with pytest.raises(commands.UnsafeDialString):
        commands.check_dial_string(f"user/1001{brk}")
    with pytest.raises(commands.UnsafeDialString):
        commands.broadcast(uuid, [f"ivr/ivr-thank_you.wav{brk}"])
    with pytest.raises(UnsafeValue):
        commands.originate(uuid, "user/1001", {"esl_cb_role": "agent"}, app="park", arg=f"x{brk}y")
    with pytest.raises(UnsafeValue):
        commands.originate(uuid, "user/1001", {f"esl_cb_role{brk}": "agent"})
    assert issubclass(commands.UnsafeDialString, UnsafeValue)


def test_a_command_text_is_one_frame_with_exactly_its_headers():
    text = command_text("bgapi status", [("Job-UUID", "0000aaaa"), ("X-Note", "a: b")])
    frames = FrameReader().feed((text + "\n\n").encode())
    assert len(frames) == 1
    assert frames[0].first_line == "bgapi status"
    assert frames[0].headers[1:] == [("Job-UUID", "0000aaaa"), ("X-Note", "a: b")]


def test_outbound_values_are_decoded_after_the_lines_are_split():
    """A caller id holding '%0A' (FreeSWITCH does not re-encode a '%XX' it is handed) decodes to a
    line break inside its own header: it cannot become a header of its own (greenswitch decodes the
    whole block first, so 'Unique-ID' below would read 'evil')."""
    event = LeanEvent("Unique-ID: good\nCaller-Caller-ID-Number: 123%0D%0AUnique-ID%3A%20evil\nX: 1\n")
    assert event.headers["Unique-ID"] == "good"
    assert event.headers["Caller-Caller-ID-Number"] == "123\r\nUnique-ID: evil"
    assert event.headers["X"] == "1"


@pytest.mark.parametrize("capture", ["07-outbound-dtmf.jsonl", "08-outbound-caller-hangup.jsonl",
                                     "12-outbound-missing-prompt.jsonl"])
def test_outbound_frames_of_the_real_switch_read_as_greenswitch_reads_them(capture):
    """On what FreeSWITCH really sent, every header reads as before; only a value FreeSWITCH encoded a
    line break into (the SDP) keeps its CR LF instead of greenswitch's re-joined lines."""
    blocks = 0
    for record in load(capture):
        if record.get("dir") != "in":
            continue
        head, _, body = record["raw"].partition("\n\n")
        for text in [head + "\n"] + ([body] if "Event-Name: " in body[:200] else []):
            ours, theirs = LeanEvent(text).headers, greenswitch.esl.ESLEvent(text).headers
            assert ours.keys() == theirs.keys()
            assert {k: v for k, v in ours.items() if "\n" not in theirs[k]} == \
                {k: v for k, v in theirs.items() if "\n" not in v}
            blocks += 1
    assert blocks > 10
