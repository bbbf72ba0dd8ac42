"""Call scripts (SPEC section 1): actions joined by branches, loaded from YAML and validated.

A script file looks like:

    name: callback-example
    actions:
      - action: Begin
        Default: Queue
      - action: Reqagent
        Caption: Queue
        Skill: support
        Default: Hold music
      ...

Every problem is reported with the file, the action's caption and the reason.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import condition
from .errors import InvalidInput
from .speech import MINUTE, MINUTES, all_number_files

VOICE_ACTIONS = {"Play", "Menu", "Capture"}
MENU_KEYS = set("0123456789*#")
BRANCHES = {"Default", "OnError"}
IF_BRANCHES = {"True", "False"}
# What every script has (SPEC 1, and the controller's {CallbackPending}/{PendingContactID}).
BUILTIN_VARIABLES = {"ANI", "DNIS", "ContactID", "_ERR", "CallbackPending", "PendingContactID"}
# What Queuestatus sets (domain/runtime.py:ScriptRunner.queue_status).
QUEUE_STATUS_VARIABLES = ("Position", "PositionSounds", "EWTSec", "EWTMinutes", "EWTMinutesSounds",
                          "AgentsAvailable", "AgentsStaffed", "AHTSec", "InHours")
SOUND_VARIABLES = ("{PositionSounds}", "{EWTMinutesSounds}")
VAR_REF = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")

# action -> (required properties, optional properties)
ACTIONS: dict[str, tuple[set[str], set[str]]] = {
    "Begin": (set(), set()),
    "Reqagent": ({"Skill"}, {"PriorityInitial", "PriorityAcceleration", "PriorityMax"}),
    "Play": ({"Prompt"}, {"MaxDurationSec"}),
    "Menu": ({"Prompt"}, {"TimeoutSec"}),
    "Capture": ({"Prompt", "Variable"}, {"MinDigits", "MaxDigits", "TimeoutSec", "Terminator"}),
    "Assign": ({"Variable", "Value"}, set()),
    "Queuestatus": (set(), set()),
    "If": ({"Condition"}, set()),
    "Callback": (set(), {"PhoneNumber", "CallerID", "CallDelaySec", "ExpireAfterSec", "ConfirmPrompt", "ConfirmKey",
                         "WhisperPrompt", "NotBefore"}),
    "Hangup": (set(), set()),
}
DEFAULTS: dict[str, dict[str, Any]] = {
    "Reqagent": {"PriorityInitial": 0, "PriorityAcceleration": 0, "PriorityMax": 0},
    "Menu": {"TimeoutSec": 5},
    "Capture": {"MinDigits": 1, "MaxDigits": 15, "TimeoutSec": 10, "Terminator": "#"},
    "Callback": {"PhoneNumber": "{ANI}", "CallerID": "{DNIS}", "CallDelaySec": 0},
}
NUMERIC = {"PriorityInitial", "PriorityAcceleration", "PriorityMax", "MaxDurationSec", "TimeoutSec", "MinDigits",
           "MaxDigits", "CallDelaySec", "ExpireAfterSec"}


@dataclass(frozen=True)
class Problem:
    file: str
    caption: str
    reason: str
    severity: str = "error"        # error | warning

    def __str__(self) -> str:
        where = f"{self.file}: action {self.caption!r}" if self.caption else self.file
        return f"{where}: {self.severity}: {self.reason}"


class ScriptInvalid(InvalidInput):
    """A script that cannot run: each problem names its file, its action and why."""

    code = "invalid_script"
    title = "the script cannot run"

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass
class Action:
    kind: str
    caption: str
    props: dict[str, Any]
    branches: dict[str, str]        # 'Default', 'OnError', or a menu key -> caption

    def prop(self, name: str) -> Any:
        return self.props.get(name, DEFAULTS.get(self.kind, {}).get(name))


@dataclass
class Script:
    name: str
    file: str
    actions: dict[str, Action]
    begin: str
    warnings: list[Problem] = field(default_factory=list)


def load(path: str | Path) -> Script:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ScriptInvalid([Problem(str(path), "", f"cannot read the file: {e.strerror}")]) from None
    return parse(text, str(path))


def parse(text: str, file: str = "<script>") -> Script:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ScriptInvalid([Problem(file, "", f"not valid YAML{where}: {getattr(e, 'problem', e)}")]) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("actions"), list):
        raise ScriptInvalid([Problem(file, "", "a script is a mapping with an 'actions' list")])
    problems: list[Problem] = []
    actions: dict[str, Action] = {}
    order: list[Action] = []
    for i, raw in enumerate(doc["actions"], 1):
        if not isinstance(raw, dict) or "action" not in raw:
            problems.append(Problem(file, f"#{i}", "each action needs an 'action:' name"))
            continue
        kind = str(raw["action"])
        caption = str(raw.get("Caption", kind))
        if kind not in ACTIONS:
            problems.append(Problem(file, caption, f"unknown action {kind!r}; known: {', '.join(ACTIONS)}"))
            continue
        required, optional = ACTIONS[kind]
        props, branches = {}, {}
        for key, value in raw.items():
            key = str(key)
            if key in ("action", "Caption"):
                continue
            if key in BRANCHES or (kind == "Menu" and key in MENU_KEYS) or (kind == "If" and key in IF_BRANCHES):
                branches[key] = str(value)
            elif key in required or key in optional:
                props[key] = value
            else:
                problems.append(Problem(file, caption, f"unknown property {key!r} for {kind}"))
        for key in required - props.keys():
            problems.append(Problem(file, caption, f"missing property {key!r}"))
        for key, value in props.items():
            if key in NUMERIC and not (isinstance(value, str) and VAR_REF.search(value)):
                try:
                    float(value)
                except (TypeError, ValueError):
                    problems.append(Problem(file, caption, f"{key} must be a number, not {value!r}"))
        if kind == "Callback" and "CallDelaySec" in props and not VAR_REF.search(str(props["CallDelaySec"])):
            try:
                delay = float(props["CallDelaySec"])
                if not (0 <= delay <= 59) or delay != int(delay):
                    problems.append(Problem(file, caption, f"CallDelaySec must be a whole number from 0 to 59, "
                                                           f"not {props['CallDelaySec']!r}"))
            except (TypeError, ValueError):
                pass
        if kind == "Callback":
            problems += [Problem(file, caption, reason) for reason in _callback_problems(props)]
        if kind == "If":
            problems += _if_problems(file, caption, props, branches)
        if caption in actions:
            problems.append(Problem(file, caption, "duplicate caption; captions must be unique in a script"))
            continue
        action = Action(kind, caption, props, branches)
        actions[caption] = action
        order.append(action)
    begins = [a for a in order if a.kind == "Begin"]
    if len(begins) != 1:
        problems.append(Problem(file, "", f"a script needs exactly one Begin action, found {len(begins)}"))
    for a in order:
        for key, target in a.branches.items():
            if target not in actions:
                problems.append(Problem(file, a.caption, f"branch {key} points at {target!r}, which no action has "
                                                         "as its caption"))
        if a.kind != "Hangup" and "Default" not in a.branches:
            problems.append(Problem(file, a.caption, "missing Default branch (only Hangup may end a script)"))
    script = Script(str(doc.get("name", Path(file).stem)), file, actions, begins[0].caption if begins else "")
    if begins:
        reachable = _reachable(actions, script.begin)
        for a in order:
            if a.caption not in reachable:
                problems.append(Problem(file, a.caption, "unreachable: no branch leads here from Begin"))
        script.warnings += _unset_variables(file, order)
        for caption in _after_callback(actions, script.begin):
            if actions[caption].kind in VOICE_ACTIONS:
                script.warnings.append(Problem(
                    file, caption, "voice action can run after Callback, when the caller is gone; it will take "
                                   "OnError", "warning"))
    if problems:
        raise ScriptInvalid(problems + script.warnings)
    return script


def _callback_problems(props: dict[str, Any]) -> list[str]:
    """The issue-14 properties of a Callback action, where they are literal."""
    from .callback_options import KEYS, sound_path_problem
    from .hours import parse_when

    out = []
    literal = {k: str(v) for k, v in props.items() if not VAR_REF.search(str(v))}
    if "ExpireAfterSec" in literal:
        try:
            if float(literal["ExpireAfterSec"]) <= 0:
                out.append("ExpireAfterSec must be above 0 (seconds from the request)")
        except ValueError:
            pass                                   # reported as not a number above
    if "ConfirmKey" in literal and (len(literal["ConfirmKey"]) != 1 or literal["ConfirmKey"] not in KEYS):
        out.append(f"ConfirmKey must be one key of {KEYS}, not {literal['ConfirmKey']!r}")
    if "ConfirmKey" in props and "ConfirmPrompt" not in props:
        out.append("ConfirmKey needs a ConfirmPrompt (what the customer hears before pressing it)")
    for name in ("ConfirmPrompt", "WhisperPrompt"):
        if name in literal and sound_path_problem(literal[name]):
            out.append(f"{name}: {sound_path_problem(literal[name])}")
    if "NotBefore" in literal:
        from datetime import datetime, timezone
        try:
            parse_when(literal["NotBefore"], datetime.now(timezone.utc))
        except ValueError as e:
            out.append(f"NotBefore: {e}")
    return out


def _if_problems(file: str, caption: str, props: dict[str, Any], branches: dict[str, str]) -> list[Problem]:
    out = []
    if "Condition" in props:
        reason = condition.load_problem(str(props["Condition"]))
        if reason:
            out.append(Problem(file, caption, f"Condition {str(props['Condition'])!r} does not parse: {reason}"))
    if not IF_BRANCHES & branches.keys():
        out.append(Problem(file, caption, "an If needs a True or a False branch (the other outcome takes Default)"))
    return out


def _unset_variables(file: str, order: list[Action]) -> list[Problem]:
    """An If whose Condition reads a variable nothing sets would always take OnError: a warning."""
    known = set(BUILTIN_VARIABLES)
    for a in order:
        if a.kind in ("Assign", "Capture") and a.props.get("Variable") is not None:
            known.add(str(a.props["Variable"]))
        if a.kind == "Queuestatus":
            known.update(QUEUE_STATUS_VARIABLES)
    out = []
    for a in order:
        if a.kind == "If":
            for name in dict.fromkeys(condition.variables_in(a.props.get("Condition", ""))):
                if name not in known:
                    hint = " (a Queuestatus action sets it)" if name in QUEUE_STATUS_VARIABLES else ""
                    out.append(Problem(file, a.caption, f"Condition reads {{{name}}}, which no action of this script "
                                                        f"sets{hint}; the If will take OnError", "warning"))
    return out


def _reachable(actions: dict[str, Action], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        c = todo.pop()
        if c in seen or c not in actions:
            continue
        seen.add(c)
        todo.extend(actions[c].branches.values())
    return seen


def _after_callback(actions: dict[str, Action], start: str) -> set[str]:
    """Captions that can run once a Callback action has succeeded (through its Default branch)."""
    out: set[str] = set()
    for a in actions.values():
        if a.kind == "Callback" and "Default" in a.branches and a.caption in _reachable(actions, start):
            out |= _reachable(actions, a.branches["Default"])
    return out


def substitute(value: Any, variables: dict[str, str]) -> str:
    """Replace {NAME} with the variable's value; an unknown name is an error naming it."""
    text = str(value)

    def repl(m: re.Match) -> str:
        name = m.group(1)
        if name not in variables:
            raise KeyError(f"unknown variable {{{name}}}")
        return str(variables[name])
    return VAR_REF.sub(repl, text)


DEFAULT_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "callback-example.yaml"


def script_prompts(script: Script) -> list[tuple[str, str]]:
    """(caption, prompt) of every voice action, in the file's order; prompts may hold {variables}.

    A `file_string://` holding {variables} is followed by what can be checked before a call plays
    it: its literal parts, and (once per script) every file that Queuestatus' sound variables
    ({PositionSounds}, {EWTMinutesSounds}) can name."""
    out: list[tuple[str, str]] = []
    numbers_listed = False
    for a in script.actions.values():
        if a.kind not in VOICE_ACTIONS or a.props.get("Prompt") is None:
            continue
        prompt = str(a.props["Prompt"])
        out.append((a.caption, prompt))
        if not prompt.startswith("file_string://") or not VAR_REF.search(prompt):
            continue
        parts = prompt[len("file_string://"):].split("!")
        literal = [p for p in parts if p and not VAR_REF.search(p)]
        if literal:
            out.append((a.caption, "file_string://" + "!".join(literal)))
        if not numbers_listed and any(p.strip() in SOUND_VARIABLES for p in parts):
            numbers_listed = True
            out.append((a.caption, "file_string://" + "!".join(all_number_files() + [MINUTE, MINUTES])))
    return out
