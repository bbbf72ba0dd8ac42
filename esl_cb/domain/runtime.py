"""Running one script for one call.

The runner knows actions, branches and variables. What an action does to the
telephone (CallPort) or the queue (QueuePort) is behind an interface, so this
module never formats an ESL string and never touches the database.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from . import condition
from .callback_options import KEYS, CallbackOptions, sound_path_problem
from .ewt import DEFAULT_AHT_SEC, estimate_wait
from .numbers import InvalidNumber, normalize
from .queue import Priority
from .script import VOICE_ACTIONS, Action, Script, substitute
from .speech import minutes_sounds, number_sounds, wait_minutes

log = logging.getLogger(__name__)
MAX_STEPS = 10_000           # a script looping forever without waiting is a bug; stop it
MAX_SAID = 999_999_999       # the largest number the stock prompts say (domain/speech.py)


class CallerGone(Exception):
    """The caller hung up; raised into the script wherever it is."""


class ConnectedToAgent(Exception):
    """An agent took the live call; the script has nothing more to do."""


class ActionFailed(Exception):
    """The action could not be carried out; the script takes OnError with _ERR = str(self)."""


class CallPort(Protocol):
    def play(self, prompt: str, max_seconds: float | None) -> None: ...
    def menu(self, prompt: str, timeout: float, keys: str) -> str | None: ...
    def capture(self, prompt: str, min_digits: int, max_digits: int, timeout: float, terminator: str) -> str: ...
    def hangup(self) -> None: ...


class QueuePort(Protocol):
    def reqagent(self, skill: str, priority: Priority) -> None: ...

    def status(self) -> dict:
        """Where the contact stands (Queuestatus): {'position': 1 = next, 'agents_staffed',
        'agents_available', 'aht_sec': the recent average handle time or None}, 'being_served'
        (an agent has it: no wait) and 'in_hours' (bool) when opening hours are known (absent:
        open). ActionFailed when not queued."""
        ...

    def callback(self, number: str, caller_id: str, delay: int, ani: str, dnis: str,
                 options: CallbackOptions | None = None) -> None: ...

    def outbound_caller_id(self) -> str | None:
        """The contact's skill's outbound caller ID (E.164), None when it has none."""
        ...


@dataclass
class RunResult:
    ended_by: str                 # 'hangup', 'callback', 'caller', 'agent', 'end'
    in_callback: bool
    variables: dict[str, str]


class ScriptRunner:
    def __init__(self, script: Script, call: CallPort, queue: QueuePort, variables: dict[str, str],
                 default_region: str = "US", contact_label: str = "") -> None:
        self.script = script
        self.call = call
        self.queue = queue
        self.vars = dict(variables)
        self.vars.setdefault("_ERR", "")
        self.region = default_region
        self.in_callback = False
        self.label = contact_label

    def run(self) -> RunResult:
        caption: str | None = self.script.begin
        steps = 0
        try:
            while caption is not None:
                steps += 1
                if steps > MAX_STEPS:
                    log.error("%s script %s: more than %d actions without an end; stopping",
                              self.label, self.script.name, MAX_STEPS)
                    return RunResult("end", self.in_callback, self.vars)
                action = self.script.actions[caption]
                try:
                    branch = self.execute(action)
                except ActionFailed as e:
                    self.vars["_ERR"] = str(e)
                    log.warning("%s script %s action %r failed: %s", self.label, self.script.name, caption, e)
                    branch = "OnError"
                    if "OnError" not in action.branches:
                        branch = "Default"
                if branch == "end":
                    return RunResult("hangup", self.in_callback, self.vars)
                caption = action.branches.get(branch) or action.branches.get("Default")
            return RunResult("end", self.in_callback, self.vars)
        except CallerGone:
            return RunResult("caller", self.in_callback, self.vars)
        except ConnectedToAgent:
            return RunResult("agent", self.in_callback, self.vars)

    def text(self, action: Action, name: str) -> str:
        try:
            return substitute(action.prop(name), self.vars)
        except KeyError as e:
            raise ActionFailed(f"{name}: {e.args[0]}") from None

    def number(self, action: Action, name: str) -> float:
        value = self.text(action, name)
        try:
            return float(value)
        except ValueError:
            raise ActionFailed(f"{name} must be a number, got {value!r}") from None

    def execute(self, action: Action) -> str:
        """Run one action; returns the branch to take ('Default', a menu key, or 'end')."""
        kind = action.kind
        if kind in VOICE_ACTIONS and self.in_callback:
            raise ActionFailed(f"{kind} needs the caller's voice path, which is gone after Callback")
        if kind == "Begin":
            return "Default"
        if kind == "Assign":
            self.vars[str(action.prop("Variable"))] = self.text(action, "Value")
            return "Default"
        if kind == "Reqagent":
            priority = Priority(self.number(action, "PriorityInitial"), self.number(action, "PriorityAcceleration"),
                                self.number(action, "PriorityMax"))
            self.queue.reqagent(self.text(action, "Skill"), priority)
            return "Default"
        if kind == "Play":
            max_s = self.number(action, "MaxDurationSec") if action.prop("MaxDurationSec") is not None else None
            self.call.play(self.text(action, "Prompt"), max_s)
            return "Default"
        if kind == "Menu":
            keys = "".join(k for k in action.branches if len(k) == 1)
            digit = self.call.menu(self.text(action, "Prompt"), self.number(action, "TimeoutSec"), keys)
            return digit if digit and digit in action.branches else "Default"
        if kind == "Capture":
            digits = self.call.capture(self.text(action, "Prompt"), int(self.number(action, "MinDigits")),
                                       int(self.number(action, "MaxDigits")), self.number(action, "TimeoutSec"),
                                       self.text(action, "Terminator"))
            self.vars[str(action.prop("Variable"))] = digits
            return "Default"
        if kind == "Queuestatus":
            self.queue_status()
            return "Default"
        if kind == "If":
            try:
                return "True" if condition.evaluate(action.prop("Condition"), self.vars) else "False"
            except condition.ConditionError as e:
                raise ActionFailed(f"Condition: {e}") from None
        if kind == "Callback":
            return self.callback(action)
        if kind == "Hangup":
            if not self.in_callback:
                self.call.hangup()
            return "end"
        raise ActionFailed(f"unknown action {kind}")

    def queue_status(self) -> None:
        """Queuestatus: the contact's place, its estimated wait (domain/ewt.py) and the agents, as
        variables, with the sound files that say the numbers (domain/speech.py)."""
        status = self.queue.status()
        try:
            position = int(status["position"])
            staffed, available = int(status["agents_staffed"]), int(status["agents_available"])
            aht = float(status["aht_sec"]) if status.get("aht_sec") is not None else None
        except (KeyError, TypeError, ValueError) as e:
            raise ActionFailed(f"queue status incomplete: {e!r}") from None
        if position < 1:
            raise ActionFailed(f"queue status gave position {position}")
        # An agent already has the contact (ringing, or answered as the script stops): no wait.
        ewt = 0 if status.get("being_served") else estimate_wait(position, staffed, available, aht)
        in_hours = status.get("in_hours")          # opening hours of the skill: absent means open
        self.vars.update(
            Position=str(position), PositionSounds=number_sounds(min(position, MAX_SAID)), EWTSec=str(ewt),
            EWTMinutes=str(wait_minutes(ewt)), EWTMinutesSounds=minutes_sounds(ewt),
            AgentsAvailable=str(available), AgentsStaffed=str(staffed),
            AHTSec=str(round(aht if aht is not None else DEFAULT_AHT_SEC)),
            InHours="0" if in_hours is not None and not in_hours else "1")

    def callback(self, action: Action) -> str:
        """SPEC 2: validate, persist, then disconnect; the contact keeps its place."""
        if self.in_callback:
            raise ActionFailed("this contact is already a queued callback")
        try:
            number = normalize(self.text(action, "PhoneNumber"), self.region)
        except InvalidNumber as e:
            raise ActionFailed(f"PhoneNumber: {e}") from None
        try:
            caller_id = normalize(self.text(action, "CallerID"), self.region)
        except InvalidNumber as e:
            caller_id = self.skill_caller_id(e)
        delay_text = self.text(action, "CallDelaySec")
        try:
            delay = int(float(delay_text))
        except ValueError:
            raise ActionFailed(f"CallDelaySec must be a whole number of seconds, got {delay_text!r}") from None
        if delay < 0:
            raise ActionFailed(f"CallDelaySec cannot be negative ({delay})")
        options = self.callback_options(action)
        # ANI and DNIS now describe the outbound call (rule 5); the store keeps the originals.
        self.queue.callback(number, caller_id, delay, ani=caller_id, dnis=number, options=options)
        self.in_callback = True
        self.vars["ANI"], self.vars["DNIS"] = caller_id, number
        self.call.hangup()
        return "Default"

    def skill_caller_id(self, problem: InvalidNumber) -> str:
        """A CallerID that is no dialable number (the example's {DNIS} when the call came in on an
        extension such as 5000) gives way to the skill's outbound caller ID; without one the action
        fails as before."""
        lookup = getattr(self.queue, "outbound_caller_id", None)
        number = lookup() if lookup is not None else None
        if not number:
            raise ActionFailed(f"CallerID: {problem}, and the skill has no outbound caller ID "
                               "(esl-cb skill caller-id SKILL NUMBER)")
        log.info("%s CallerID: %s; the skill's outbound caller ID %s is shown instead", self.label, problem, number)
        return number

    def callback_options(self, action: Action) -> CallbackOptions:
        """ExpireAfterSec, ConfirmPrompt/ConfirmKey, WhisperPrompt and NotBefore (issue 14), checked."""
        expire = None
        if action.props.get("ExpireAfterSec") is not None:
            expire = self.number(action, "ExpireAfterSec")
            if expire <= 0:
                raise ActionFailed(f"ExpireAfterSec must be above 0, got {expire:g}")
        confirm = self.text(action, "ConfirmPrompt") if action.props.get("ConfirmPrompt") else ""
        key = self.text(action, "ConfirmKey") if action.props.get("ConfirmKey") is not None else "1"
        if len(key) != 1 or key not in KEYS:
            raise ActionFailed(f"ConfirmKey must be one key of {KEYS}, got {key!r}")
        whisper = self.text(action, "WhisperPrompt") if action.props.get("WhisperPrompt") else ""
        for name, prompt in (("ConfirmPrompt", confirm), ("WhisperPrompt", whisper)):
            problem = sound_path_problem(prompt)
            if problem:
                raise ActionFailed(f"{name}: {problem}")
        not_before = self.text(action, "NotBefore") if action.props.get("NotBefore") else ""
        return CallbackOptions(expire, confirm, key, whisper, not_before.strip())
