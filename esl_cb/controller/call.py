"""The script's view of one live call: CallPort over the outbound socket, QueuePort over the store."""
from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

from sqlalchemy.exc import SQLAlchemyError

from esl_cb.db.store import StoreError
from esl_cb.domain.queue import Priority
from esl_cb.domain.runtime import ActionFailed, CallerGone
from esl_cb.esl.outbound import CallChannel, CallGone

if TYPE_CHECKING:
    from .service import Controller

log = logging.getLogger(__name__)
DIGIT_VAR = "esl_cb_digit"
CAPTURE_VAR = "esl_cb_capture"


class LiveCall:
    """Book-keeping for one caller while their script runs."""

    def __init__(self, contact_id: int, channel: CallChannel) -> None:
        self.contact_id = contact_id
        self.channel = channel
        self.greenlet = None
        self.expect_hangup = False      # we hung up (Callback, Hangup): not the caller leaving
        self.connected = False          # bridged to an agent


class ChannelCall:
    """CallPort: what the script's voice actions do on FreeSWITCH."""

    def __init__(self, live: LiveCall) -> None:
        self.live = live
        self.channel = live.channel

    def _run(self, app: str, arg: str, timeout: float | None = None, on_timeout=None) -> dict:
        try:
            return self.channel.execute(app, arg, timeout=timeout, on_timeout=on_timeout)
        except CallGone:
            raise CallerGone() from None

    def play(self, prompt: str, max_seconds: float | None) -> None:
        self._check_prompt(prompt)
        self._run("playback", prompt, timeout=max_seconds, on_timeout=self._break)

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
        done = self._run("play_and_get_digits",
                         f"1 1 1 {int(timeout * 1000)} {terminator} {prompt} silence_stream://250 {DIGIT_VAR} {regex}")
        return done.get("variable_" + DIGIT_VAR) or None

    def capture(self, prompt: str, min_digits: int, max_digits: int, timeout: float, terminator: str) -> str:
        self._check_prompt(prompt)
        term = terminator if terminator and re.fullmatch(r"[0-9*#]+", terminator) else "none"
        done = self._run("play_and_get_digits",
                         f"{min_digits} {max_digits} 1 {int(timeout * 1000)} {term} {prompt} silence_stream://250 "
                         f"{CAPTURE_VAR} \\d+")
        return done.get("variable_" + CAPTURE_VAR, "")

    def hangup(self) -> None:
        self.live.expect_hangup = True
        self.channel.hangup()

    @staticmethod
    def _check_prompt(prompt: str) -> None:
        # Prompts come from the script (operator) but may hold {variables} from the caller.
        if not prompt or any(c in prompt for c in "\n\r ") and not prompt.startswith(("say:", "speak:")):
            raise ActionFailed(f"prompt {prompt[:60]!r} is not a sound path")


class StoreQueue:
    """QueuePort: Reqagent and Callback, durable before they take effect."""

    def __init__(self, controller: "Controller", contact_id: int) -> None:
        self.controller = controller
        self.contact_id = contact_id

    def reqagent(self, skill: str, priority: Priority) -> None:
        try:
            self.controller.store.queue_contact(self.contact_id, skill, priority)
        except StoreError as e:
            raise ActionFailed(str(e)) from None
        except SQLAlchemyError as e:
            raise ActionFailed(f"database unavailable, contact not queued: {type(e).__name__}") from None
        self.controller.wake_dispatcher()

    def callback(self, number: str, caller_id: str, delay: int, ani: str, dnis: str) -> None:
        try:
            self.controller.store.request_callback(self.contact_id, number, caller_id, delay, ani, dnis)
        except StoreError as e:
            raise ActionFailed(str(e)) from None
        except SQLAlchemyError as e:
            raise ActionFailed(f"database unavailable, callback not stored: {type(e).__name__}") from None
        log.info("contact %s callback stored: %s from %s after %ss", self.contact_id, number, caller_id, delay)
        self.controller.wake_dispatcher()
