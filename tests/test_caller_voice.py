"""The script's voice actions on the caller's channel (controller/ports.py CallerVoice): a prompt that
would carry CR, LF or NUL into a sendmsg header takes the action's OnError, sends nothing and leaves
the caller on the line (issue 17, item 9)."""
from __future__ import annotations

import pytest

from esl_cb.controller.ports import CallerVoice, LiveCall
from esl_cb.domain import script as scripts
from esl_cb.domain.runtime import ScriptRunner

from .test_esl_values import recording_channel


class NoQueue:
    def reqagent(self, skill, priority):
        pass


def voice_script(kind: str, prompt: str) -> scripts.Script:
    extra = {"Play": "", "Menu": '    "1": Failed\n', "Capture": "    Variable: Digits\n"}[kind]
    return scripts.parse(f"""
name: voice
actions:
  - action: Begin
    Default: Say
  - action: {kind}
    Caption: Say
    Prompt: "{prompt}"
{extra}    Default: Done
    OnError: Failed
  - action: Assign
    Caption: Failed
    Variable: FAILED
    Value: "yes"
    Default: Done
  - action: Hangup
    Caption: Done
""", "voice.yaml")

HANGUP = "sendmsg\ncall-command: hangup\nhangup-cause: NORMAL_CLEARING"


def run(kind: str, prompt: str, ani: str):
    channel, session = recording_channel()
    runner = ScriptRunner(voice_script(kind, prompt), CallerVoice(LiveCall(1, channel)), NoQueue(),
                          {"ANI": ani, "DNIS": "3125557000", "ContactID": "1"})
    return runner.run(), session


INJECTIONS = [("say:en number iterated {ANI}", "3125550100\r\ncall-command: hangup"),
              ("speak:flite|kal|{ANI}", "hello\nexecute-app-name: bridge"),
              ("say:en number iterated {ANI}", "3125550100\x00"),
              ("{ANI}", "ivr/ivr-thank_you.wav\rX")]


@pytest.mark.parametrize("kind", ["Play", "Menu", "Capture"])
@pytest.mark.parametrize("prompt, ani", INJECTIONS)
def test_a_prompt_with_a_line_break_takes_on_error_and_sends_nothing(kind, prompt, ani):
    result, session = run(kind, prompt, ani)
    assert result.variables["FAILED"] == "yes"
    assert "line break or NUL" in result.variables["_ERR"] and "{ANI}" not in result.variables["_ERR"]
    assert session.sent == [HANGUP]         # not a byte for the prompt; the script went on to its Hangup
    assert result.ended_by == "hangup"


def test_the_esl_layers_own_refusal_takes_on_error_too(monkeypatch):
    """Whatever the port's own check misses, the ESL layer refuses (UnsafeValue): still OnError."""
    monkeypatch.setattr(CallerVoice, "_check_prompt", staticmethod(lambda prompt: None))
    result, session = run("Play", "say:en number iterated {ANI}", "1\r\ncall-command: hangup")
    assert result.variables["FAILED"] == "yes" and "CR, LF or NUL" in result.variables["_ERR"]
    assert session.sent == [HANGUP]


@pytest.mark.parametrize("prompt", ["say:en number iterated 3125550100", "ivr/ivr-thank_you.wav",
                                    "speak:flite|kal|hello there"])
def test_a_clean_prompt_is_played(prompt):
    result, session = run("Play", prompt, "3125550100")
    assert result.variables.get("FAILED") is None and result.variables["_ERR"] == ""
    assert f"execute-app-arg: {prompt}" in session.sent[0].split("\n") and session.sent[1:] == [HANGUP]


def test_a_path_with_a_space_is_still_not_a_sound_path():
    result, session = run("Play", "ivr/ivr-thank you.wav", "3125550100")
    assert result.variables["FAILED"] == "yes" and "is not a sound path" in result.variables["_ERR"]
    assert session.sent == [HANGUP]
