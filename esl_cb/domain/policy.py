"""Where esl-cb may dial: the guard against toll fraud and against flooding someone's phone.

A callback system places calls, on the contact centre's bill, to numbers a caller supplied. The
frauds telephony operators fear are calls that earn the fraudster money (premium-rate, shared-cost
and personal numbers, far-away countries, the Caribbean "+1" ranges) and a victim's phone rung again
and again. So a destination is checked when a callback is requested and again before every dial:

1. an operator's override for that exact number allows it (they are audited);
2. a denied prefix refuses it; an allowed prefix allows it (for what types cannot express);
3. its country must be allowed (default: the --region country only, like Amazon Connect);
4. its type must not be refused (default: premium-rate, shared-cost, UAN, personal number, pager and
   unknown; toll-free, mobile and fixed lines are fine).

How often a number may be called back is counted in the database (several controllers share it),
not here: see `RateLimits`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import phonenumbers
from phonenumbers import PhoneNumberType as T

from .errors import InvalidInput

TYPE_NAMES = {
    T.FIXED_LINE: "fixed_line", T.MOBILE: "mobile", T.FIXED_LINE_OR_MOBILE: "fixed_line_or_mobile",
    T.TOLL_FREE: "toll_free", T.PREMIUM_RATE: "premium_rate", T.SHARED_COST: "shared_cost", T.VOIP: "voip",
    T.PERSONAL_NUMBER: "personal_number", T.PAGER: "pager", T.UAN: "uan", T.VOICEMAIL: "voicemail",
    T.UNKNOWN: "unknown",
}
DEFAULT_REFUSED_TYPES = ("premium_rate", "shared_cost", "uan", "personal_number", "pager", "unknown")
ANY_COUNTRY = "*"


class PolicyError(InvalidInput, ValueError):
    """A policy setting that cannot be used (the message says which and why)."""

    code = "invalid_policy"
    title = "a destination policy setting cannot be used"


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    number: str
    country: str                    # ISO 3166 code, '' when the number belongs to none
    number_type: str
    rule: str                       # what decided: override | deny_prefix | allow_prefix | country | type | ok
    reason: str

    def __str__(self) -> str:
        return f"{self.number}: {'allowed' if self.allowed else 'refused'} ({self.reason})"


@dataclass(frozen=True)
class RateLimits:
    """At most this many callbacks requested for one destination number per day, and by one calling
    number per hour (0: no limit). Counted by the store, across controllers."""

    per_number_per_day: int = 3
    per_caller_per_hour: int = 5


@dataclass(frozen=True)
class DestinationPolicy:
    allowed_countries: frozenset[str] = frozenset({"US"})
    refused_types: frozenset[str] = frozenset(DEFAULT_REFUSED_TYPES)
    allow_prefixes: tuple[str, ...] = ()
    deny_prefixes: tuple[str, ...] = ()
    limits: RateLimits = field(default_factory=RateLimits)

    @classmethod
    def from_settings(cls, region: str, countries: str, refused_types: str, allow_prefixes: str,
                      deny_prefixes: str, per_number_per_day: int, per_caller_per_hour: int) -> "DestinationPolicy":
        """From the comma-separated settings; an empty `countries` means the region's country only."""
        allowed = _words(countries, upper=True) or [region.upper()]
        for c in allowed:
            if c != ANY_COUNTRY and c not in phonenumbers.SUPPORTED_REGIONS:
                raise PolicyError(f"allowed_countries: {c!r} is not an ISO 3166 country code phonenumbers knows "
                                  "(e.g. US, GB, DE), or * for any")
        types = _words(refused_types)
        unknown = sorted(set(types) - set(TYPE_NAMES.values()))
        if unknown:
            raise PolicyError(f"refused_number_types: unknown type(s) {', '.join(unknown)}; known: "
                              f"{', '.join(sorted(TYPE_NAMES.values()))}")
        prefixes = {}
        for name, text in (("allow_prefixes", allow_prefixes), ("deny_prefixes", deny_prefixes)):
            words = _words(text)
            bad = [w for w in words if not (w.startswith("+") and w[1:].isdigit())]
            if bad:
                raise PolicyError(f"{name}: {', '.join(bad)} must be E.164 prefixes: + then digits, e.g. +1900")
            prefixes[name] = tuple(words)
        if per_number_per_day < 0 or per_caller_per_hour < 0:
            raise PolicyError("callback limits cannot be negative (0 means no limit)")
        return cls(frozenset(allowed), frozenset(types), prefixes["allow_prefixes"], prefixes["deny_prefixes"],
                   RateLimits(per_number_per_day, per_caller_per_hour))

    def check(self, number: str, override: bool = False) -> Verdict:
        """May `number` (E.164, already normalised) be dialled?"""
        country, kind = classify(number)

        def verdict(allowed: bool, rule: str, reason: str) -> Verdict:
            return Verdict(allowed, number, country, kind, rule, reason)
        if override:
            return verdict(True, "override", "an operator allowed this number")
        denied = _longest(number, self.deny_prefixes)
        allowed = _longest(number, self.allow_prefixes)
        if denied and len(denied) >= len(allowed or ""):
            return verdict(False, "deny_prefix", f"{number} starts with the denied prefix {denied}")
        if allowed:
            return verdict(True, "allow_prefix", f"{number} starts with the allowed prefix {allowed}")
        if ANY_COUNTRY not in self.allowed_countries and country not in self.allowed_countries:
            where = f"a number of {country}" if country else "a number of no country"
            countries = ", ".join(sorted(self.allowed_countries))
            return verdict(False, "country", f"{where}; callbacks may go to {countries} only")
        if kind in self.refused_types:
            refused = ", ".join(t.replace("_", "-") for t in sorted(self.refused_types))
            return verdict(False, "type", f"a {kind.replace('_', '-')} number; callbacks never go to {refused} numbers")
        return verdict(True, "ok", f"a {kind.replace('_', ' ')} number of {country}")

    def describe(self) -> list[str]:
        """The policy in words (`esl-cb callback policy check` prints it)."""
        return [f"countries allowed: {', '.join(sorted(self.allowed_countries))}",
                f"number types refused: {', '.join(sorted(self.refused_types)) or 'none'}",
                f"prefixes allowed: {', '.join(self.allow_prefixes) or 'none'}",
                f"prefixes denied: {', '.join(self.deny_prefixes) or 'none'}",
                f"at most {self.limits.per_number_per_day or 'any number of'} callbacks per destination number "
                f"per day, {self.limits.per_caller_per_hour or 'any number'} per calling number per hour"]


def classify(number: str) -> tuple[str, str]:
    """(ISO country, number type) of an E.164 number; ('', 'unknown') when phonenumbers cannot tell."""
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        return "", "unknown"
    country = phonenumbers.region_code_for_number(parsed) or ""
    if country == "001":                # non-geographic (satellite, international services)
        country = ""
    return country, TYPE_NAMES.get(phonenumbers.number_type(parsed), "unknown")


def _words(text: str, upper: bool = False) -> list[str]:
    words = [w.strip() for w in (text or "").replace(";", ",").split(",") if w.strip()]
    return [w.upper() for w in words] if upper else words


def _longest(number: str, prefixes: tuple[str, ...]) -> str:
    matches = [p for p in prefixes if number.startswith(p)]
    return max(matches, key=len) if matches else ""
