"""A skill's opening hours: callbacks are dialled only while it is open.

Written the way a contact centre writes them on its door:

    mon-fri 08:00-18:00; sat 09:00-13:00        (in the skill's time zone, e.g. Europe/Amsterdam)
    mon-fri 08:00-12:00 13:00-17:30             (two intervals a day)
    24/7                                        (or empty: always open)

plus closed dates (holidays: 2026-12-25, 2026-12-26). An interval may end at 24:00; one that ends
before it starts runs past midnight (22:00-02:00).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import InvalidInput

DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_INTERVAL = re.compile(r"^([01]?\d|2[0-4]):([0-5]\d)-([01]?\d|2[0-4]):([0-5]\d)$")


class HoursError(InvalidInput, ValueError):
    """Opening hours that cannot be read (the message says which part and why)."""

    code = "invalid_hours"
    title = "opening hours or a time zone cannot be read"


@dataclass(frozen=True)
class OpeningHours:
    tz: str = "UTC"
    # weekday (0 = Monday) -> intervals as (start minute, end minute) of the day; end may pass 1440
    week: dict[int, tuple[tuple[int, int], ...]] = field(default_factory=dict)
    closed: frozenset[date] = frozenset()
    always: bool = True

    @classmethod
    def parse(cls, week: str = "", tz: str = "UTC", closed: str = "") -> "OpeningHours":
        try:
            ZoneInfo(tz or "UTC")
        except (ZoneInfoNotFoundError, ValueError):
            raise HoursError(f"time zone {tz!r} is unknown; use an IANA name such as Europe/Amsterdam or "
                             "America/Chicago") from None
        days: set[date] = set()
        for word in _split(closed, ","):
            try:
                days.add(date.fromisoformat(word))
            except ValueError:
                raise HoursError(f"closed date {word!r} is not YYYY-MM-DD") from None
        text = (week or "").strip().lower()
        if text in ("", "24/7", "always"):
            return cls(tz or "UTC", {}, frozenset(days), True)
        out: dict[int, list[tuple[int, int]]] = {}
        for entry in _split(text, ";"):
            parts = entry.split()
            if len(parts) < 2:
                raise HoursError(f"{entry!r}: write days then times, e.g. 'mon-fri 08:00-18:00'")
            for d in _days(parts[0], entry):
                for span in parts[1:]:
                    out.setdefault(d, []).append(_interval(span, entry))
        return cls(tz or "UTC", {d: tuple(sorted(v)) for d, v in out.items()}, frozenset(days), False)

    def is_open(self, at: datetime) -> bool:
        if at.tzinfo is None:
            at = at.replace(tzinfo=timezone.utc)
        local = at.astimezone(ZoneInfo(self.tz))
        if local.date() in self.closed:
            return False
        if self.always:
            return True
        minute = local.hour * 60 + local.minute
        if any(start <= minute < end for start, end in self.week.get(local.weekday(), ())):
            return True
        # An interval of yesterday that runs past midnight.
        yesterday = (local.weekday() - 1) % 7
        return any(end > 1440 and minute < end - 1440 for _, end in self.week.get(yesterday, ()))

    def next_open(self, at: datetime, horizon_days: int = 14) -> datetime | None:
        """The first minute from `at` on when it is open (None if not within the horizon)."""
        t = at.replace(second=0, microsecond=0)
        if self.is_open(t):
            return t
        for _ in range(horizon_days * 24 * 4):          # quarter hours, then the exact minute
            t2 = t + timedelta(minutes=15)
            if self.is_open(t2):
                while not self.is_open(t + timedelta(minutes=1)):
                    t += timedelta(minutes=1)
                return t + timedelta(minutes=1)
            t = t2
        return None

    def describe(self) -> str:
        if self.always:
            text = "always open"
        else:
            text = "; ".join(f"{DAYS[d]} " + " ".join(f"{_hm(s)}-{_hm(e)}" for s, e in spans)
                             for d, spans in sorted(self.week.items()))
        if self.closed:
            text += f"; closed {', '.join(sorted(d.isoformat() for d in self.closed))}"
        return f"{text} ({self.tz})"


def _split(text: str, sep: str) -> list[str]:
    return [w.strip() for w in (text or "").split(sep) if w.strip()]


FULL_DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]


def _day(name: str) -> int:
    for names in (DAYS, FULL_DAYS):
        if name in names:
            return names.index(name)
    return -1


def _days(word: str, entry: str) -> list[int]:
    out = []
    for piece in word.split(","):
        a, _, b = piece.partition("-")
        if _day(a) < 0 or (b and _day(b) < 0):
            raise HoursError(f"{entry!r}: {piece!r} is not a day or a range of days (mon, tue, ... sun; mon-fri)")
        i, j = _day(a), _day(b or a)
        out += [(i + k) % 7 for k in range((j - i) % 7 + 1)]
    return out


def _interval(span: str, entry: str) -> tuple[int, int]:
    m = _INTERVAL.match(span)
    if not m:
        raise HoursError(f"{entry!r}: {span!r} is not an interval such as 08:00-18:00")
    start = int(m.group(1)) * 60 + int(m.group(2))
    end = int(m.group(3)) * 60 + int(m.group(4))
    if start >= 1440 or end > 1440:
        raise HoursError(f"{entry!r}: {span!r} goes past 24:00")
    if end <= start:
        end += 1440                                    # past midnight
    return start, end


def _hm(minute: int) -> str:
    if minute != 1440:
        minute %= 1440
    return f"{minute // 60:02d}:{minute % 60:02d}"


def parse_when(text: str, now: datetime, tz: str = "UTC") -> datetime:
    """When a scheduled callback is due: an ISO date-time (local to `tz` unless it says its zone),
    '+SECONDS' from now, or 'HH:MM' (the next such time in `tz`). ValueError says what is wrong."""
    value = (text or "").strip()
    zone = ZoneInfo(tz or "UTC")
    if re.fullmatch(r"\+\d+", value):
        return now + timedelta(seconds=int(value[1:]))
    m = re.fullmatch(r"([01]?\d|2[0-3]):([0-5]\d)", value)
    if m:
        local = now.astimezone(zone)
        at = datetime.combine(local.date(), time(int(m.group(1)), int(m.group(2))), zone)
        return at if at > local else at + timedelta(days=1)
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a time: write 2026-12-01T14:30, 14:30 or +3600") from None
    return at if at.tzinfo else at.replace(tzinfo=zone)
