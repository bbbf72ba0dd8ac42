"""Phone numbers that may end up in a FreeSWITCH dial string.

A caller controls their ANI (the SIP From header) and the digits they key in,
so a number is checked character by character before phonenumbers parses it:
nothing but digits, a leading '+', and the usual separators gets through, and
what comes out is E.164 (digits and a leading '+'), never an extension.
"""
from __future__ import annotations

import re

import phonenumbers

from .errors import InvalidInput

_ALLOWED = re.compile(r"^\+?[0-9][0-9 ().\-]*$")
_EXTENSION = re.compile(r"^(?P<number>.+?)\s*(ext\.?|extension|x|#|;ext=)\s*[0-9]+$", re.IGNORECASE)


class InvalidNumber(InvalidInput, ValueError):
    """The value is not a dialable phone number; the message says why."""

    code = "invalid_number"
    title = "not a phone number a callback can dial"


def normalize(raw: str, default_region: str = "US") -> str:
    """Return the E.164 form (+13125550100) or raise InvalidNumber saying what is wrong."""
    value = (raw or "").strip()
    if not value:
        raise InvalidNumber("the number is empty")
    if len(value) > 32:
        raise InvalidNumber(f"{shown(value)} is too long for a phone number")
    if not _ALLOWED.match(value):
        m = _EXTENSION.match(value)
        if m and _ALLOWED.match(m.group("number")):
            raise InvalidNumber(f"{shown(value)} has an extension; a callback never dials an extension")
        raise InvalidNumber(f"{shown(value)} may hold only digits, a leading + and spaces, dots, dashes or brackets")
    try:
        parsed = phonenumbers.parse(value, default_region)
    except phonenumbers.NumberParseException as e:
        raise InvalidNumber(f"{shown(value)} is not a phone number ({e})") from None
    if parsed.extension:
        raise InvalidNumber(f"{shown(value)} has an extension; a callback never dials an extension")
    if not phonenumbers.is_possible_number(parsed):
        raise InvalidNumber(f"{shown(value)} has the wrong number of digits for a phone number")
    out = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    if not re.fullmatch(r"\+[0-9]{6,16}", out):
        raise InvalidNumber(f"{shown(value)} does not make a valid international number")
    return out


def shown(value: str) -> str:
    """A caller-supplied value made safe to print in a log line or an error."""
    safe = "".join(ch if ch.isprintable() else "?" for ch in value)
    return repr(safe[:40] + ("..." if len(safe) > 40 else ""))


def storable(raw: str) -> str:
    """What to keep of an unvalidated caller id for reporting (never dialled)."""
    return re.sub(r"[^0-9A-Za-z+*#]", "", raw or "")[:32]
