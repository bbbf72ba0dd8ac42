"""FreeSWITCH command strings: the only place that formats dial strings and originate commands."""
from __future__ import annotations

import re

from .wire import UnsafeValue, one_line

_VALUE_SAFE = re.compile(r"[^A-Za-z0-9 +._:@/-]")
DIAL_STRING = re.compile(r"^[A-Za-z0-9_./@:+\-\[\]=]+$")
_NAME = re.compile(r"[A-Za-z0-9_]+")


class UnsafeDialString(UnsafeValue):
    """A dial string, number, uuid or sound path that would let more than itself into a command."""


def channel_value(text: str) -> str:
    """A value for a {var=value} block: nothing that could end the block or start another variable.
    A value with spaces is single-quoted, as FreeSWITCH's originate expects."""
    value = _VALUE_SAFE.sub("", str(text))[:80]
    return f"'{value}'" if " " in value else value


def check_dial_string(dial: str) -> str:
    """An operator's dial string (agent phone, gateway template): one endpoint, no variables block.

    Commas and pipes would ring more endpoints; braces would inject channel variables.
    """
    if not DIAL_STRING.fullmatch(dial or ""):       # fullmatch: '$' would let a trailing newline in
        raise UnsafeDialString(f"dial string {dial!r} may hold letters, digits and . _ / @ : + - only "
                               "(no spaces, commas, pipes or braces), e.g. user/1001 or sofia/gateway/pstn/{number}")
    return dial


def dial_for(template: str, number: str) -> str:
    """Fill a dial template such as 'sofia/gateway/pstn/{number}' with a validated E.164 number."""
    if not re.fullmatch(r"\+?[0-9]{3,20}", number):
        raise UnsafeDialString(f"{number!r} is not a normalised phone number")
    dial = template.replace("{number}", number).replace("{digits}", number.lstrip("+"))
    return check_dial_string(dial)


def originate(leg_uuid: str, dial: str, variables: dict[str, str | int], app: str = "park", arg: str = "") -> str:
    """'originate {origination_uuid=...,...}DIAL &app(arg)' with every value made safe."""
    bad = [k for k in variables if not _NAME.fullmatch(k)] + ([app] if not _NAME.fullmatch(app) else [])
    if bad:
        raise UnsafeValue(f"originate: {bad!r} are not variable or application names (letters, digits, _)")
    if not re.fullmatch(r"[A-Za-z0-9-]+", leg_uuid or ""):
        raise UnsafeDialString(f"{leg_uuid!r} is not a leg uuid")
    one_line("originate application argument", arg)
    pairs = [f"origination_uuid={leg_uuid}"] + [f"{k}={channel_value(v)}" for k, v in variables.items()]
    return f"originate {{{','.join(pairs)}}}{check_dial_string(dial)} &{app}({arg})"


_SOUND = re.compile(r"^[A-Za-z0-9_./:%(),;=+\-]+$")


def broadcast(uuid: str, sounds: list[str]) -> str:
    """'uuid_broadcast UUID file_string://a!b aleg': play sounds to one leg (it may be parked or bridged).
    Sound paths come from scripts and from our own digit files; each is checked to be one path."""
    if not re.fullmatch(r"[0-9a-fA-F-]{36}", uuid or ""):
        raise UnsafeDialString(f"{uuid!r} is not a channel uuid")
    bad = [s for s in sounds if not _SOUND.fullmatch(s) or "!" in s]
    if bad or not sounds:
        raise UnsafeDialString(f"not sound paths: {bad or sounds!r}")
    path = sounds[0] if len(sounds) == 1 else "file_string://" + "!".join(sounds)
    return f"uuid_broadcast {uuid} {path} aleg"
