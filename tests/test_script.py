"""Script loading and validation: every problem with file, caption and reason."""
from __future__ import annotations

import pytest

from esl_cb.domain import script as scripts

GOOD = """
name: t
actions:
  - action: Begin
    Default: Q
  - action: Reqagent
    Caption: Q
    Skill: support
    Default: Bye
  - action: Hangup
    Caption: Bye
"""


def problems(text: str) -> list[str]:
    with pytest.raises(scripts.ScriptInvalid) as e:
        scripts.parse(text, "bad.yaml")
    return [str(p) for p in e.value.problems]


def test_shipped_example_is_valid_and_as_specified():
    s = scripts.load(scripts.DEFAULT_SCRIPT)
    assert s.warnings == []
    a = s.actions
    assert a["Queue"].kind == "Reqagent" and a["Hold music"].props["MaxDurationSec"] == 30
    assert a["Offer callback"].branches == {"1": "Thank you", "Default": "Hold music"}
    assert a["Thank you"].branches["Default"] == "Callback" and a["Callback"].branches["Default"] == "Hangup"


def test_good_script_parses():
    s = scripts.parse(GOOD, "good.yaml")
    assert s.begin == "Begin" and list(s.actions) == ["Begin", "Q", "Bye"]


@pytest.mark.parametrize("change,expected", [
    (("Skill: support", "Skill: support\n    Colour: red"), "bad.yaml: action 'Q': error: unknown property 'Colour'"),
    (("action: Hangup", "action: Dance"), "bad.yaml: action 'Bye': error: unknown action 'Dance'"),
    (("Default: Bye", "Default: Nowhere"), "action 'Q': error: branch Default points at 'Nowhere'"),
    (("    Default: Bye\n", "\n"), "action 'Q': error: missing Default branch"),
    (("Caption: Bye", "Caption: Q"), "action 'Q': error: duplicate caption"),
    (("    Skill: support\n", ""), "action 'Q': error: missing property 'Skill'"),
])
def test_each_kind_of_problem_is_reported(change, expected):
    text = GOOD.replace(*change)
    assert any(expected in p for p in problems(text)), problems(text)


def test_unreachable_action():
    text = GOOD + "  - action: Hangup\n    Caption: Orphan\n"
    assert any("action 'Orphan': error: unreachable" in p for p in problems(text))


@pytest.mark.parametrize("value", ["60", "99", "-1", "2.5"])
def test_literal_call_delay_out_of_range(value):
    text = GOOD.replace("Default: Bye\n  - action: Hangup", f"Default: CB\n  - action: Callback\n    Caption: CB\n"
                        f"    CallDelaySec: {value}\n    Default: Bye\n  - action: Hangup")
    assert any("CallDelaySec must be a whole number from 0 to 59" in p for p in problems(text))


def test_call_delay_from_a_variable_is_checked_at_run_time_only():
    text = GOOD.replace("Default: Bye\n  - action: Hangup", "Default: CB\n  - action: Callback\n    Caption: CB\n"
                        "    CallDelaySec: \"{D}\"\n    Default: Bye\n  - action: Hangup")
    assert scripts.parse(text).actions["CB"].props["CallDelaySec"] == "{D}"


def test_voice_action_after_callback_is_a_warning():
    text = GOOD.replace("Default: Bye\n  - action: Hangup", "Default: CB\n  - action: Callback\n    Caption: CB\n"
                        "    Default: P\n  - action: Play\n    Caption: P\n    Prompt: x.wav\n    Default: Bye\n"
                        "  - action: Hangup")
    s = scripts.parse(text, "w.yaml")
    assert [str(w) for w in s.warnings] == [
        "w.yaml: action 'P': warning: voice action can run after Callback, when the caller is gone; "
        "it will take OnError"]


def test_several_problems_reported_together_and_yaml_errors_located():
    text = GOOD.replace("Skill: support", "Colour: red").replace("Default: Bye", "Default: Gone")
    got = problems(text)
    assert len(got) >= 3
    yaml_err = problems("actions: [\n  - action: Begin\n")
    assert "not valid YAML at line" in yaml_err[0]


def test_substitution():
    assert scripts.substitute("{ANI}-{X}", {"ANI": "1", "X": "2"}) == "1-2"
    with pytest.raises(KeyError, match="unknown variable {Y}"):
        scripts.substitute("{Y}", {})


def test_missing_file_is_a_clear_problem(tmp_path):
    with pytest.raises(scripts.ScriptInvalid, match="cannot read the file"):
        scripts.load(tmp_path / "nope.yaml")
