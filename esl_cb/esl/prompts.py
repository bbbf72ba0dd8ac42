"""Are a script's prompts on the switch? Resolve each one the way FreeSWITCH would play it.

What the real switch does (FreeSWITCH 1.11, measured; esl-captures section 12):

- A relative path (`ivr/ivr-thank_you.wav`) is played from under the `sound_prefix` variable
  (the core's `sounds_dir` when it is unset). mod_sndfile opens `<dir>/<rate>/<file>` for the
  channel's rate and the other rates a sound package ships (a prompt installed only under
  `16000/` or `48000/` plays too), then `<dir>/<file>` itself. Absolute paths resolve the same way.
- `api file_exists PATH` answers `true`/`false` for an absolute path only (a relative one always
  reads `false`), and streams are not files.
- A missing file makes `playback` end at once with FILE NOT FOUND and `play_and_get_digits`
  return after its invalid-input sound with no digit: a menu that silently never hears the caller.
- `file_string://a!b` plays the parts it finds and skips the others (FILE NOT FOUND only when
  none is there).
- `local_stream://NAME` needs a source NAME (`local_stream show NAME`; unknown:
  `-ERR Cannot locate local_stream NAME!`). An unknown source falls back to `default` when there
  is one, and is FILE NOT FOUND otherwise.
- `tone_stream://` and `silence_stream://` are generated, never missing.

A channel can carry its own `sound_prefix` (set in the dialplan); that is not visible from here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

RATES = ("8000", "16000", "32000", "48000")
ALWAYS_THERE = ("tone_stream://", "silence_stream://")
VARIABLES = "holds variables: it is checked when a call plays it"


@dataclass(frozen=True)
class PromptProblem:
    """A prompt the switch cannot play (missing=True), or one that cannot be checked from here."""

    caption: str
    prompt: str
    reason: str
    missing: bool = True

    @property
    def at_run_time(self) -> bool:
        """Only its {variables} leave it unchecked: the normal case of a Position or EWT prompt, no fault."""
        return not self.missing and all(clause.endswith(VARIABLES) for clause in self.reason.split("; "))

    def __str__(self) -> str:
        where = f"action {self.caption!r}: " if self.caption else ""
        return f"{where}prompt {self.prompt!r} {self.reason}"


def check_prompts(api: Callable[[str], str], prompts: Iterable[tuple[str, str]]) -> list[PromptProblem]:
    """Problems with the (caption, prompt) pairs, in their order; empty when the switch has them all.

    `api` runs one ESL api command and returns its body (e.g. InboundConnection.api). Asks the
    switch its sound prefix once, then `file_exists` / `local_stream show` per path (cached).
    ESL errors propagate to the caller.
    """
    return _Resolver(api).check(prompts)


class _Resolver:
    def __init__(self, api: Callable[[str], str]) -> None:
        self.api = api
        self._prefix: str | None = None
        self._exists: dict[str, bool | None] = {}
        self._streams: dict[str, str] = {}

    def check(self, prompts: Iterable[tuple[str, str]]) -> list[PromptProblem]:
        out = []
        for caption, prompt in prompts:
            reason, missing = self.problem(prompt)
            if reason:
                out.append(PromptProblem(caption, prompt, reason, missing))
        return out

    # -- one prompt ------------------------------------------------------
    def problem(self, prompt: str) -> tuple[str, bool]:
        """('', True) when the switch can play it; else (reason, missing)."""
        prompt = prompt.strip()
        if not prompt:
            return "is empty", True
        if prompt.startswith(ALWAYS_THERE):
            return "", True
        if prompt.startswith("file_string://"):
            # Its fixed parts are checked now; only the parts with {variables} wait for a call.
            return self._file_string(prompt[len("file_string://"):])
        if "{" in prompt:
            return VARIABLES, False
        if prompt.startswith("local_stream://"):
            return self._stream(prompt[len("local_stream://"):])
        scheme = _scheme(prompt)
        if scheme:
            return f"uses {scheme}:, which cannot be checked from here", False
        found = self._file(prompt)
        if found is None:
            return "cannot be checked: the switch does not answer file_exists", False
        if not found:
            return f"is not on the switch (looked for {self._describe(prompt)})", True
        return "", True

    def _file_string(self, rest: str) -> tuple[str, bool]:
        parts = [p for p in rest.split("!") if p.strip()]
        if not parts:
            return "is an empty file_string", True
        bad = [(p, self.problem(p)) for p in parts]
        missing = [p for p, (reason, is_missing) in bad if reason and is_missing]
        unsure = [(p, reason) for p, (reason, is_missing) in bad if reason and not is_missing]
        if missing:
            if len(missing) == len(parts):
                return f"has none of its parts on the switch ({', '.join(missing)}): FILE NOT FOUND", True
            return (f"lacks {', '.join(missing)} (the switch skips {'it' if len(missing) == 1 else 'them'} and plays "
                    "the rest)"), True
        if unsure:
            return "; ".join(f"part {p!r} {reason}" for p, reason in unsure), False
        return "", True

    def _stream(self, name: str) -> tuple[str, bool]:
        name = name.strip() or "default"
        reply = self._stream_reply(name)
        if reply.startswith("-ERR Cannot locate"):
            if name != "default" and not self._stream_reply("default").startswith("-"):
                return (f"names no local_stream source {name!r} on the switch (it plays 'default' instead)"), False
            return f"names no local_stream source {name!r} on the switch (local_stream.conf.xml)", True
        if reply.startswith("-"):
            return "cannot be checked: mod_local_stream is not loaded on the switch", True
        return "", True

    def _stream_reply(self, name: str) -> str:
        if name not in self._streams:
            self._streams[name] = self.api(f"local_stream show {name}")
        return self._streams[name]

    # -- files -----------------------------------------------------------
    def prefix(self) -> str:
        if self._prefix is None:
            prefix = _value(self.api("global_getvar sound_prefix"))
            if not prefix:
                prefix = _value(self.api("global_getvar sounds_dir"))
            self._prefix = prefix.rstrip("/")
        return self._prefix

    def _absolute(self, path: str) -> str:
        return path if path.startswith("/") else f"{self.prefix()}/{path}"

    def candidates(self, path: str) -> list[str]:
        full = self._absolute(path)
        head, _, name = full.rpartition("/")
        return [f"{head}/{rate}/{name}" for rate in RATES] + [full]

    def _file(self, path: str) -> bool | None:
        if not path.startswith("/") and not self.prefix():
            return False
        unknown = False
        for candidate in self.candidates(path):
            found = self._file_exists(candidate)
            if found:
                return True
            unknown = unknown or found is None
        return None if unknown else False

    def _file_exists(self, path: str) -> bool | None:
        if path not in self._exists:
            reply = self.api(f"file_exists {path}").strip()
            self._exists[path] = True if reply == "true" else False if reply == "false" else None
        return self._exists[path]

    def _describe(self, path: str) -> str:
        full = self._absolute(path)
        head, _, name = full.rpartition("/")
        return f"{full} and {head}/{{{','.join(RATES)}}}/{name}"


def _value(reply: str) -> str:
    """A global_getvar answer; unset variables read '-ERR no reply'."""
    reply = reply.strip()
    return "" if not reply or reply.startswith("-ERR") else reply


def _scheme(prompt: str) -> str:
    """'say' for 'say:...', 'shout' for 'shout://...'; '' for a path."""
    head, sep, _ = prompt.partition(":")
    if sep and head and "/" not in head and head.replace("_", "").isalnum():
        return head
    return ""
