"""Numbers spoken with the stock English sound files, the way FreeSWITCH's mod_say_en says them.

mod_say_en (`say en number pronounced N`) splits a number into groups of three digits (millions,
thousands, units) and says each group as: `digits/A.wav digits/hundred.wav` for the hundreds,
`digits/B0.wav` for tens from twenty, `digits/1C.wav` for ten to nineteen, `digits/C.wav` for the
units, then `digits/million.wav` or `digits/thousand.wav` after a group that is not zero; zero alone
is `digits/0.wav`. There is no "and" (123 is "one hundred twenty three"). The files are in the
stock English package (freeswitch-sounds-en-us-callie): digits/0.wav-19.wav, 20.wav, 30.wav ...
90.wav, hundred.wav, thousand.wav, million.wav.

We build the list ourselves rather than play `say:` so that a script puts the number inside one
`file_string://` prompt with the words around it, and needs no say module on the switch.
"""
from __future__ import annotations

import math

SEPARATOR = "!"                 # file_string://a.wav!b.wav
MAX_NUMBER = 999_999_999        # what mod_say_en says (nine digits)
MINUTE, MINUTES = "time/minute.wav", "time/minutes.wav"


def number_files(n: int) -> list[str]:
    """The sound files that say `n` (0 to 999,999,999) in English, in order."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"a whole number is needed, not {n!r}")
    if not 0 <= n <= MAX_NUMBER:
        raise ValueError(f"{n} is outside 0..{MAX_NUMBER}, which the stock prompts can say")
    if n == 0:
        return ["digits/0.wav"]
    out: list[str] = []
    for scale, word in ((1_000_000, "digits/million.wav"), (1_000, "digits/thousand.wav"), (1, None)):
        group = n // scale % 1000
        if group:
            out += _group(group)
            if word:
                out.append(word)
    return out


def _group(n: int) -> list[str]:
    hundreds, rest = divmod(n, 100)
    tens, units = divmod(rest, 10)
    out = [f"digits/{hundreds}.wav", "digits/hundred.wav"] if hundreds else []
    if tens == 1:
        return out + [f"digits/{rest}.wav"]           # ten to nineteen have their own files
    if tens:
        out.append(f"digits/{tens}0.wav")
    if units:
        out.append(f"digits/{units}.wav")
    return out


def number_sounds(n: int) -> str:
    """`n` as one file_string part list: "digits/2.wav!digits/3.wav" (no scheme)."""
    return SEPARATOR.join(number_files(n))


def wait_minutes(seconds: int) -> int:
    """A wait in whole minutes as a caller is told it: rounded up, at least 1 (nobody is told "zero
    minutes"; a caller about to be served hears "one minute")."""
    return max(1, math.ceil(max(seconds, 0) / 60))


def minutes_sounds(seconds: int) -> str:
    """"N minutes" for a wait in seconds (see wait_minutes): the number, then time/minute.wav or
    time/minutes.wav, the files mod_say_en uses for a time measurement."""
    minutes = min(wait_minutes(seconds), MAX_NUMBER)
    return SEPARATOR.join(number_files(minutes) + [MINUTE if minutes == 1 else MINUTES])


def all_number_files() -> list[str]:
    """Every file number_files can name (what a switch needs to say any number)."""
    return ([f"digits/{i}.wav" for i in range(20)] + [f"digits/{t}0.wav" for t in range(2, 10)] +
            ["digits/hundred.wav", "digits/thousand.wav", "digits/million.wav"])
