"""The If action: its Condition language (our own parser, never eval), its validation when a script
loads, and its branches when it runs."""
from __future__ import annotations

import pytest

from esl_cb.domain import condition
from esl_cb.domain import script as scripts
from esl_cb.domain.condition import ConditionError, evaluate, load_problem
from esl_cb.domain.runtime import ScriptRunner

VARS = {"EWTSec": "130", "AgentsAvailable": "0", "Position": "3", "CallbackPending": "0", "Skill": "sales",
        "Empty": "", "Neg": "-2.5", "Text": "abc", "Injected": "1 or 1 == 1"}


@pytest.mark.parametrize("text,expected", [
    ("{EWTSec} > 120", True),
    ("{EWTSec} > 130", False),
    ("{EWTSec} >= 130", True),
    ("{EWTSec} < 130.5", True),
    ("{EWTSec} <= 129", False),
    ("{AgentsAvailable} == 0", True),
    ("{AgentsAvailable} == 0.0", True),              # numbers compare as numbers
    ("{CallbackPending} != 1", True),
    ("{Neg} < -2", True),
    ("120 < {EWTSec}", True),
    ('{Skill} == "sales"', True),
    ("{Skill} == 'support'", False),
    ('"{Skill}-x" == "sales-x"', True),              # a variable inside quotes is substituted
    ('{Empty} == ""', True),
    ("{Empty} != 1", True),                         # not a number: compared as text, so not equal
    ('"5" == 5', True),                             # text "5" and the number 5 written the same
    ("{Position} >= 3 and {EWTSec} > 120", True),
    ("{Position} > 3 and {EWTSec} > 120", False),
    ("{Position} > 3 or {EWTSec} > 120", True),
    ("not {EWTSec} > 120", False),
    ("({Position} > 3 or {AgentsAvailable} == 0) and not ({EWTSec} < 60)", True),
    ("{AgentsAvailable} == 0 AND {Position} == 3", True),
    ("1 == 1 or 1 == 2 and 1 == 2", True),           # and binds tighter than or
    ("{Injected} == 1", False),                     # a value is one operand, never syntax
])
def test_conditions_evaluate(text, expected):
    assert evaluate(text, VARS) is expected
    assert load_problem(text) is None


@pytest.mark.parametrize("text,reason", [
    ("", "empty condition"),
    ("EWTSec > 120", "'EWTSec' at character 1 is neither a number nor a {variable} (write {EWTSec} for a variable"),
    ("{A} = 1", "unexpected '=' at character 5 (compare with ==)"),
    ("{A} >> 1", "expected a number, a quoted text or a {variable} at character 6, found '>'"),
    ("5 >", "expected a number, a quoted text or a {variable} at the end"),
    ("1 < 2 3", "unexpected '3' at character 7 (join comparisons with and/or)"),
    ("(1 < 2", "missing ')'"),
    ("1 < 2)", "unexpected ')'"),
    ("'abc == 1", "a string needs its closing quote"),
    ("1 < 2 and", "expected a number, a quoted text or a {variable} at the end"),
    ("{A} > 1 {B}", "unexpected '{B}'"),
    ("__import__('os').system('x')", "'__import__' at character 1 is neither a number nor a {variable}"),
    ("1 < 2 and " * 200 + "1 < 2", "longer than 1000 characters"),
    ("not " * 40 + "1 < 2", "nested more than 30 deep"),
])
def test_malformed_literal_conditions_are_load_problems(text, reason):
    problem = load_problem(text)
    assert problem is not None and reason in problem, problem
    with pytest.raises(ConditionError):
        evaluate(text, VARS)


@pytest.mark.parametrize("text,variables,expected", [
    ("{Rule}", {"Rule": "3 > 2"}, True),
    ("{EWTSec} {Op} 120", {"EWTSec": "100", "Op": "<"}, True),
    ("{A} {Joiner} {B}", {"A": "1 == 1", "Joiner": "and", "B": "2 > 3"}, False),
])
def test_a_condition_shaped_by_its_variables_is_parsed_when_it_runs(text, variables, expected):
    assert load_problem(text) is None
    assert evaluate(text, variables) is expected


@pytest.mark.parametrize("text,variables,reason", [
    ("{Text} > 1", VARS, "{Text} is 'abc', not a number; > compares numbers only"),
    ('{EWTSec} < "9"', VARS, "\"9\" is '9', not a number"),
    ("{Missing} == 1", VARS, "unknown variable {Missing}"),
    ("{Rule}", {"Rule": "3 >"}, "'3 >' (from '{Rule}')"),
    ("{Rule}", {"Rule": "{EWTSec} > 1", "EWTSec": "5"}, "a variable's value cannot hold another variable"),
])
def test_run_time_problems(text, variables, reason):
    with pytest.raises(ConditionError) as e:
        evaluate(text, variables)
    assert reason in str(e.value)


def test_nothing_is_evaluated_as_python():
    assert condition.evaluate("{X} == 1", {"X": "__import__('os').getcwd()"}) is False
    assert [type(p).__name__ for p in (condition.parse("1 < 2"), condition.parse("1 < 2 or 2 < 3"))] == \
        ["Compare", "Logic"]


# -- the If action in a script -----------------------------------------------------------------
def script_with_if(condition_line: str = 'Condition: "{EWTSec} > 120"', branches: str = '"True": Long\n    '
                   "Default: Short", extra: str = "") -> str:
    return f"""
name: t
actions:
  - action: Begin
    Default: Status
  - action: Queuestatus
    Caption: Status
    Default: Check
  - action: If
    Caption: Check
    {condition_line}
    {branches}
  - action: Hangup
    Caption: Long
  - action: Hangup
    Caption: Short
{extra}"""


def problems(text: str) -> list[str]:
    with pytest.raises(scripts.ScriptInvalid) as e:
        scripts.parse(text, "if.yaml")
    return [str(p) for p in e.value.problems]


def test_an_if_script_is_valid():
    s = scripts.parse(script_with_if(), "if.yaml")
    assert s.actions["Check"].branches == {"True": "Long", "Default": "Short"} and s.warnings == []
    # YAML reads an unquoted True/False key as a boolean: it still names the branch.
    s = scripts.parse(script_with_if(branches="True: Long\n    False: Short\n    Default: Short"), "if.yaml")
    assert s.actions["Check"].branches == {"True": "Long", "False": "Short", "Default": "Short"}


@pytest.mark.parametrize("kwargs,expected", [
    (dict(condition_line=""), "action 'Check': error: missing property 'Condition'"),
    (dict(condition_line='Condition: "EWTSec > 120"'),
     "action 'Check': error: Condition 'EWTSec > 120' does not parse: 'EWTSec' at character 1 is neither"),
    (dict(condition_line='Condition: "{EWTSec} = 120"'), "does not parse: unexpected '=' at character 10"),
    (dict(branches="Default: Short"), "action 'Check': error: an If needs a True or a False branch"),
    (dict(branches='"True": Nowhere\n    Default: Short'), "action 'Check': error: branch True points at 'Nowhere'"),
    (dict(branches='"True": Long'), "action 'Check': error: missing Default branch"),
    (dict(branches='"True": Long\n    "Maybe": Short\n    Default: Short'), "error: unknown property 'Maybe' for If"),
    (dict(condition_line='Condition: "1 < 2"\n    Colour: red'), "error: unknown property 'Colour' for If"),
])
def test_if_problems_are_reported(kwargs, expected):
    got = problems(script_with_if(**kwargs))
    assert any(expected in p for p in got), got


def test_queuestatus_takes_no_properties_and_true_is_not_a_menu_branch():
    text = script_with_if().replace("Caption: Status", "Caption: Status\n    Skill: sales")
    assert any("unknown property 'Skill' for Queuestatus" in p for p in problems(text))
    text = script_with_if().replace("Default: Check", "Default: Check\n    \"True\": Check")
    assert any("unknown property 'True' for Queuestatus" in p for p in problems(text))


def test_a_condition_reading_a_variable_nothing_sets_is_a_warning():
    text = script_with_if('Condition: "{Wait} > 120 and {CallbackPending} == 0"')
    s = scripts.parse(text, "if.yaml")
    assert [str(w) for w in s.warnings] == [
        "if.yaml: action 'Check': warning: Condition reads {Wait}, which no action of this script sets; the If "
        "will take OnError"]
    without_status = text.replace("Default: Status", "Default: Check")
    without_status = without_status.replace("  - action: Queuestatus\n    Caption: Status\n    Default: Check\n", "")
    s = scripts.parse(without_status.replace("{Wait}", "{EWTSec}"), "if.yaml")
    assert "(a Queuestatus action sets it)" in str(s.warnings[0])
    assigned = text + "  - action: Assign\n    Variable: Wait\n    Value: 5\n    Default: Short\n"
    assigned = assigned.replace("Default: Status", "Default: Set").replace("  - action: Assign\n",
                                                                          "  - action: Assign\n    Caption: Set\n")
    assigned = assigned.replace("Value: 5\n    Default: Short", "Value: 5\n    Default: Status")
    assert scripts.parse(assigned, "if.yaml").warnings == []


# -- the If action running ----------------------------------------------------------------------
class NoCall:
    def hangup(self) -> None:
        pass


class FixedQueue:
    def __init__(self, status: dict) -> None:
        self._status = status

    def status(self) -> dict:
        return dict(self._status)


def run(text: str, status: dict, variables: dict | None = None):
    s = scripts.parse(text, "if.yaml")
    runner = ScriptRunner(s, NoCall(), FixedQueue(status), {"ANI": "1", "DNIS": "2", **(variables or {})})
    taken = []
    real = runner.execute

    def spy(action):
        taken.append(action.caption)
        return real(action)
    runner.execute = spy
    result = runner.run()
    return taken, result.variables


LONG = {"position": 5, "agents_staffed": 2, "agents_available": 0, "aht_sec": 60.0}


def test_if_takes_true_false_or_default():
    taken, _ = run(script_with_if(), LONG)                                   # 5 x 60 / 2 = 150 s
    assert taken == ["Begin", "Status", "Check", "Long"]
    taken, _ = run(script_with_if(), {**LONG, "position": 4})                # 120 s: not over 120
    assert taken == ["Begin", "Status", "Check", "Short"]
    taken, _ = run(script_with_if(branches='"False": Long\n    Default: Short'), {**LONG, "position": 4})
    assert taken == ["Begin", "Status", "Check", "Long"]                      # False taken when defined
    taken, _ = run(script_with_if(branches='"False": Long\n    Default: Short'), LONG)
    assert taken == ["Begin", "Status", "Check", "Short"]                       # True undefined: Default


def test_an_if_that_cannot_compare_takes_on_error_with_err():
    text = script_with_if('Condition: "{Mood} > 1"', '"True": Long\n    Default: Short\n    OnError: Err',
                          "  - action: Hangup\n    Caption: Err\n")
    taken, variables = run(text.replace("Default: Status", "Default: Set").replace(
        "  - action: Queuestatus", "  - action: Assign\n    Caption: Set\n    Variable: Mood\n    Value: grumpy\n"
        "    Default: Status\n  - action: Queuestatus"), LONG)
    assert taken[-2:] == ["Check", "Err"]
    assert variables["_ERR"] == "Condition: {Mood} > 1: {Mood} is 'grumpy', not a number; > compares numbers only"
