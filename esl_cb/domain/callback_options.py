"""What a Callback action may ask for beyond SPEC 2's four properties (issue 14): an expiry, a
confirmation by the customer, a whisper to the agent, a time not before which to call."""
from __future__ import annotations

import re
from dataclasses import dataclass

KEYS = "0123456789*#"


@dataclass(frozen=True)
class CallbackOptions:
    expire_after: float | None = None     # seconds from the request; None: the skill's default
    confirm_prompt: str = ""              # played to the customer on answer; empty: bridged at once
    confirm_key: str = "1"                # the key that confirms
    whisper_prompt: str = ""              # played to the agent during CallDelaySec, then the number
    not_before: str = ""                  # as written (ISO time, HH:MM or +SECONDS); the store reads it

    @property
    def confirms(self) -> bool:
        return bool(self.confirm_prompt)

    def to_json(self) -> dict:
        return {k: v for k, v in (("confirm_prompt", self.confirm_prompt), ("confirm_key", self.confirm_key),
                                  ("whisper_prompt", self.whisper_prompt)) if v}


def sound_path_problem(prompt: str) -> str:
    """Why `prompt` cannot be played (empty when it can): one sound path, no spaces or control bytes."""
    if not prompt:
        return ""
    if len(prompt) > 255 or re.search(r"[\s\x00-\x1f'\"{}]", prompt):
        return f"{prompt[:60]!r} is not a sound path"
    return ""
