"""What a caller's script acts on: CallPort (the voice actions, over the call's outbound socket) and
QueuePort (Reqagent and Callback, over the store). The domain's ScriptRunner sees only these.

("Ports" as in ports and adapters: the domain's interfaces and these implementations of them, not
the switch's voice ports that `Dialler.take_port` counts.)"""
from __future__ import annotations

import logging
import re
import time
from typing import Callable

from sqlalchemy.exc import SQLAlchemyError

from esl_cb.db.callback_changes import contact_outbound_caller_id
from esl_cb.db.store import Store, StoreError
from esl_cb.domain.callback_options import CallbackOptions
from esl_cb.domain.queue import Priority
from esl_cb.domain.runtime import ActionFailed, CallerGone
from esl_cb.esl.outbound import CallChannel, CallGone
from esl_cb.esl.wire import UnsafeValue

from .guard import CallbackGuard

log = logging.getLogger(__name__)
DIGIT_VAR = "esl_cb_digit"
CAPTURE_VAR = "esl_cb_capture"
# What a caller hears instead of a Play whose prompt the switch lacks (hold music with no music
# source, a file no sound package installed): a soft beep every 5 s, so the line is not dead air.
HOLD_TONE = "tone_stream://%(250,4750,440);loops=-1"
# The prompt of a Menu or Capture whose own prompt is missing: keys are still collected.
SILENT_PROMPT = "silence_stream://100"


class MissingPrompts:
    """Prompts the switch could not play, learned at start-up and from failures: each is named in
    the log once, and later calls skip straight to the fallback (a missing prompt costs 0.3 s)."""

    def __init__(self) -> None:
        self.missing: set[str] = set()

    def __contains__(self, prompt: str) -> bool:
        return prompt in self.missing

    def add(self, prompt: str, how: str, contact_id: int | None = None) -> None:
        if prompt in self.missing:
            return
        self.missing.add(prompt)
        log.error("contact %s: the switch cannot play %r (%s); until it is installed or the script is changed, "
                  "callers hear %s", contact_id, prompt, how,
                  "a hold tone instead" if how.startswith("Play") else "silence while their key is awaited")


class LiveCall:
    """Book-keeping for one caller while their script runs."""

    def __init__(self, contact_id: int, channel: CallChannel) -> None:
        self.contact_id = contact_id
        self.channel = channel
        self.greenlet = None
        self.expect_hangup = False      # we hung up (Callback, Hangup): not the caller leaving
        self.connected = False          # bridged to an agent


class CallerVoice:
    """CallPort: what the script's voice actions (Play, Menu, Capture, Hangup) do on the caller's channel.

    A prompt the switch lacks must never make the script spin: FreeSWITCH ends a playback of a
    missing file at once (FILE NOT FOUND) and a play_and_get_digits after 0.28 s with no digit
    (esl-captures 12). A Play with a duration fills it with a hold tone; a Menu or Capture still
    waits its TimeoutSec for keys."""

    def __init__(self, live: LiveCall, prompts: MissingPrompts | None = None) -> None:
        self.live = live
        self.channel = live.channel
        self.prompts = prompts if prompts is not None else MissingPrompts()

    def _run(self, app: str, arg: str, timeout: float | None = None, on_timeout=None) -> dict:
        try:
            return self.channel.execute(app, arg, timeout=timeout, on_timeout=on_timeout)
        except CallGone:
            raise CallerGone() from None
        except UnsafeValue as e:          # refused before anything was sent: the caller is still there
            raise ActionFailed(f"{app}: {e}") from None

    def play(self, prompt: str, max_seconds: float | None) -> None:
        self._check_prompt(prompt)
        started = time.monotonic()
        if prompt not in self.prompts:
            done = self._run("playback", prompt, timeout=max_seconds, on_timeout=self._break)
            if done.get("Application-Response") != "FILE NOT FOUND":
                return
            self.prompts.add(prompt, "Play: FILE NOT FOUND", self.live.contact_id)
        if not max_seconds:
            raise ActionFailed(f"prompt {prompt!r} is not on the switch")
        left = max_seconds - (time.monotonic() - started)
        if left > 0.05:
            self._run("playback", HOLD_TONE, timeout=left, on_timeout=self._break)

    def _break(self) -> None:
        try:
            self.channel.break_media()
        except CallGone:
            raise CallerGone() from None

    def menu(self, prompt: str, timeout: float, keys: str) -> str | None:
        self._check_prompt(prompt)
        allowed = "".join(k for k in keys if k in "0123456789*#") or "0123456789"
        terminator = "none" if "#" in allowed else "#"
        regex = "[" + re.escape(allowed).replace("\\#", "#") + "]"
        return self._collect(prompt, timeout, DIGIT_VAR, lambda p, ms: f"1 1 1 {ms} {terminator} {p} "
                             f"silence_stream://250 {DIGIT_VAR} {regex}") or None

    def capture(self, prompt: str, min_digits: int, max_digits: int, timeout: float, terminator: str) -> str:
        self._check_prompt(prompt)
        term = terminator if terminator and re.fullmatch(r"[0-9*#]+", terminator) else "none"
        return self._collect(prompt, timeout, CAPTURE_VAR, lambda p, ms: f"{min_digits} {max_digits} 1 {ms} {term} "
                             f"{p} silence_stream://250 {CAPTURE_VAR} \\d+")

    def _collect(self, prompt: str, timeout: float, var: str, args) -> str:
        """play_and_get_digits, waiting the whole timeout even when the prompt cannot be played.

        A read that ran sets read_result (success or failure); a prompt that failed returns before
        reading and leaves it unset. Both variables outlive the application, so they are cleared
        first."""
        started = time.monotonic()
        if prompt not in self.prompts:
            self._clear("read_result", var)
            done = self._run("play_and_get_digits", args(prompt, int(timeout * 1000)))
            if done.get("variable_read_result"):
                return done.get("variable_" + var, "")
            if self.live.connected:
                # The caller's bridge to their agent ended the menu (FreeSWITCH ends it with no
                # read_result, as for a missing prompt): not the prompt's fault, and no key.
                return ""
            self.prompts.add(prompt, "Menu/Capture: no prompt played", self.live.contact_id)
        left = timeout - (time.monotonic() - started)
        if left <= 0.05:
            return ""
        self._clear(var)
        return self._run("play_and_get_digits", args(SILENT_PROMPT, int(left * 1000))).get("variable_" + var, "")

    def _clear(self, *names: str) -> None:
        try:
            self.channel.api(f"uuid_setvar_multi {self.channel.uuid} " + ";".join(f"{n}=" for n in names))
        except CallGone:
            raise CallerGone() from None

    def hangup(self) -> None:
        self.live.expect_hangup = True
        self.channel.hangup()

    @staticmethod
    def _check_prompt(prompt: str) -> None:
        # Prompts come from the script (operator) but may hold {variables} from the caller (ANI, DNIS,
        # keyed digits). A line break would end the sendmsg header that carries the prompt and start
        # another (the ESL layer refuses it too); only say: and speak: texts may hold spaces.
        if any(c in prompt for c in "\r\n\x00"):
            raise ActionFailed(f"prompt {prompt[:60]!r} holds a line break or NUL (from a variable?); not sent")
        if not prompt or (" " in prompt and not prompt.startswith(("say:", "speak:"))):
            raise ActionFailed(f"prompt {prompt[:60]!r} is not a sound path")


class StoreQueue:
    """QueuePort: Reqagent and Callback, durable before they take effect. A callback is checked by the
    destination policy first (CallbackGuard): a refused one takes the action's OnError."""

    def __init__(self, store: Store, contact_id: int, wake: Callable[[], None], guard: CallbackGuard | None = None,
                 calling_number: str = "") -> None:
        self.store = store
        self.contact_id = contact_id
        self.wake = wake                  # the dispatcher: there is a contact to offer
        self.guard = guard
        self.calling_number = calling_number

    def reqagent(self, skill: str, priority: Priority) -> None:
        try:
            self.store.queue_contact(self.contact_id, skill, priority)
        except StoreError as e:
            raise ActionFailed(str(e)) from None
        except SQLAlchemyError as e:
            raise ActionFailed(f"database unavailable, contact not queued: {type(e).__name__}") from None
        self.wake()

    def callback(self, number: str, caller_id: str, delay: int, ani: str, dnis: str,
                 options: CallbackOptions | None = None) -> None:
        def store_it(limits, override: bool) -> int:
            return self.store.request_callback(self.contact_id, number, caller_id, delay, ani, dnis, limits=limits,
                                               override=override, options=options)
        try:
            if self.guard is not None:
                self.guard.request(self.contact_id, number, self.calling_number, store_it)
            else:
                store_it(None, False)
        except StoreError as e:
            raise ActionFailed(str(e)) from None
        except SQLAlchemyError as e:
            raise ActionFailed(f"database unavailable, callback not stored: {type(e).__name__}") from None
        log.info("contact %s callback stored: %s from %s after %ss", self.contact_id, number, caller_id, delay)
        self.wake()

    def outbound_caller_id(self) -> str | None:
        """The caller ID of the contact's skill, for a script's CallerID that is no dialable number."""
        try:
            return contact_outbound_caller_id(self.store, self.contact_id)
        except SQLAlchemyError as e:
            raise ActionFailed(f"database unavailable, the skill's caller ID unknown: {type(e).__name__}") from None

    def status(self) -> dict:
        """Queuestatus: where the contact stands (esl_cb/db/queue_status.py); the domain estimates the wait."""
        try:
            return self.store.queue_status(self.contact_id)
        except StoreError as e:
            raise ActionFailed(str(e)) from None
        except SQLAlchemyError as e:
            raise ActionFailed(f"database unavailable, queue status unknown: {type(e).__name__}") from None
