"""The sounds a simulated switch has, and how its playback finds them.

Measured on FreeSWITCH 1.11 (esl-captures section 12 and tests/test_real_learned.py):

- A relative path is played from under `sound_prefix`; mod_sndfile opens `<dir>/<rate>/<file>`
  (8000, 16000, 32000 or 48000: any rate folder will do) and then `<dir>/<file>`. Absolute paths
  resolve the same way. A stock sound package lays prompts out as `<prefix>/<dir>/<rate>/<file>`.
- A file that is not there: `playback` completes at once with FILE NOT FOUND.
- `file_string://a!b` plays the parts it finds, skipping the rest; FILE NOT FOUND when none is there.
- `local_stream://NAME` plays source NAME, else source `default` when there is one, else
  FILE NOT FOUND. A source plays until something stops it.
- `tone_stream://` and `silence_stream://` are generated; `say:` without a say module completes
  at once (FILE PLAYED); any other scheme is FILE NOT FOUND.
- `api file_exists PATH` is true for an existing file or folder given by its absolute path.
"""
from __future__ import annotations

import posixpath
import re

RATES = ("8000", "16000", "32000", "48000")
BASE_DIR = "/usr/local/freeswitch"
SOUNDS_DIR = BASE_DIR + "/share/freeswitch/sounds"
SOUND_PREFIX = SOUNDS_DIR + "/en/us/callie"
MUSIC_DIR = SOUNDS_DIR + "/music"

# The stock English (callie) prompts a callback queue uses (file names from FreeSWITCH's
# docs/phrase/phrase_en.xml), as the sound package installs them: at every rate.
STOCK_PROMPTS = tuple(f"ivr/ivr-{name}.wav" for name in (
    "if_you_would_like_us_to_call_back", "we_will_return_your_call_at_this_number", "thank_you",
    "you_are_number", "in_line", "estimated_hold_time", "to_accept_press_one",
    "please_enter_the_number_where_we_can_reach_you", "it_appears_that_your_phone_number_is",
    "would_you_like_to_receive_a_call_at_this_number", "to_wait_stay_on_the_line", "hold_connect_call",
    "thank_you_for_holding", "thank_you_for_calling", "one_moment_please", "please_try_again",
    "that_was_an_invalid_entry", "or_press", "to_repeat_these_options", "welcome",
    "you_are_now_logged_in", "you_are_now_logged_out",          # agents' feature codes (app/phones.py)
)) + tuple(f"digits/{d}.wav" for d in (
    # mod_say_en's numbers (Queuestatus says positions and waits with them): 0-19, the tens, hundred...
    *range(20), *range(20, 100, 10), "hundred", "thousand", "million", "star", "pound")) + (
    "time/minute.wav", "time/minutes.wav", "time/seconds.wav", "voicemail/vm-press.wav", "voicemail/vm-goodbye.wav",
    "voicemail/vm-enter_id.wav", "voicemail/vm-enter_pass.wav", "voicemail/vm-fail_auth.wav",
    "misc/error.wav")
STOCK_STREAMS = ("moh",)

FILE_SECONDS = 1.5          # how long a prompt file plays (seconds, before time_scale)
FOREVER = 10 ** 7
GENERATED = ("tone_stream://", "silence_stream://")
_SCHEME = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*):")


def media_seconds(path: str) -> float:
    """A realistic duration for what playback would play."""
    if path.startswith("local_stream://"):
        return FOREVER                      # music on hold loops until broken
    if path.startswith("silence_stream://"):
        ms = path[len("silence_stream://"):].split(",")[0]
        return int(ms) / 1000 if ms.lstrip("-").isdigit() and int(ms) > 0 else FOREVER
    if path.startswith("tone_stream://"):
        total = 0
        for on, off in re.findall(r"%\((\d+),(\d+)", path):
            total += int(on) + int(off)
        loops = re.search(r"loops=(-?\d+)", path)
        if loops and int(loops.group(1)) < 0:
            return FOREVER
        return max(total, 100) / 1000
    if path.startswith(("say:", "speak:")):
        return 0.0
    return FILE_SECONDS


class Sounds:
    """The switch's sound files (absolute paths) and local_stream sources."""

    def __init__(self, sound_prefix: str = SOUND_PREFIX, music_dir: str = MUSIC_DIR) -> None:
        self.prefix = sound_prefix.rstrip("/")
        self.music_dir = music_dir
        self.files: set[str] = set()
        self.dirs: set[str] = set()
        self.streams: dict[str, str] = {}
        for prompt in STOCK_PROMPTS:
            self.install(prompt, RATES)
        for name in STOCK_STREAMS:
            self.add_stream(name)

    # -- the catalogue ----------------------------------------------------
    def absolute(self, path: str) -> str:
        return path if path.startswith("/") else f"{self.prefix}/{path}"

    def install(self, path: str, rates: tuple[str, ...] = ("8000",)) -> list[str]:
        """Install a prompt: a relative path as a sound package would (<prefix>/<dir>/<rate>/<file>,
        8000 unless told), an absolute one where it says. Returns the files created."""
        if path.startswith("/"):
            made = [posixpath.normpath(path)]
        else:
            head, name = posixpath.split(self.absolute(path))
            made = [f"{head}/{rate}/{name}" for rate in rates]
        for f in made:
            self.files.add(f)
            d = posixpath.dirname(f)
            while d not in self.dirs and d not in ("", "/"):
                self.dirs.add(d)
                d = posixpath.dirname(d)
        return made

    def remove(self, path: str) -> int:
        """Remove a prompt wherever playback would find it; returns how many files went."""
        gone = [f for f in self.candidates(path) if f in self.files]
        self.files.difference_update(gone)
        return len(gone)

    def add_stream(self, name: str, location: str = "") -> None:
        self.streams[name] = location or f"{self.music_dir}/{name}"

    def remove_stream(self, name: str) -> bool:
        return self.streams.pop(name, None) is not None

    # -- what the switch answers --------------------------------------------
    def file_exists(self, path: str) -> bool:
        path = path.strip()
        if not path.startswith("/"):
            return False
        path = posixpath.normpath(path)
        return path in self.files or path in self.dirs

    def candidates(self, path: str) -> list[str]:
        full = posixpath.normpath(self.absolute(path.strip()))
        head, name = posixpath.split(full)
        return [f"{head}/{rate}/{name}" for rate in RATES] + [full]

    def find(self, path: str) -> str | None:
        """The file mod_sndfile would open for this path, or None."""
        return next((f for f in self.candidates(path) if f in self.files), None)

    def stream(self, name: str) -> str | None:
        """The local_stream source that plays for NAME (unknown names fall back to 'default')."""
        name = name or "default"
        if name in self.streams:
            return name
        return "default" if "default" in self.streams else None

    def playable(self, target: str) -> list[str] | None:
        """What playback of target would play (its parts), or None: FILE NOT FOUND."""
        target = target.strip()
        if target.startswith("file_string://"):
            parts = [p for p in target[len("file_string://"):].split("!") if p]
            found = [p for p in parts if self.playable(p)]
            return found or None
        if target.startswith(GENERATED) or target.startswith(("say:", "speak:")):
            return [target]
        if target.startswith("local_stream://"):
            source = self.stream(target[len("local_stream://"):])
            return [f"local_stream://{source}"] if source else None
        if _SCHEME.match(target) and "://" in target:
            return None                     # a format no module provides
        return [target] if self.find(target) else None
