"""Opening hours and scheduled times (issue 14): what a skill's calendar says."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from esl_cb.domain.hours import HoursError, OpeningHours, parse_when

AMS = ZoneInfo("Europe/Amsterdam")


def at(y, m, d, hh, mm, tz=AMS) -> datetime:
    return datetime(y, m, d, hh, mm, tzinfo=tz)


def test_weekly_hours_in_the_skills_time_zone():
    h = OpeningHours.parse("mon-fri 08:00-18:00; sat 09:00-13:00", "Europe/Amsterdam", "2026-12-25")
    assert h.is_open(at(2026, 11, 27, 8, 0))                 # a Friday, opening minute
    assert not h.is_open(at(2026, 11, 27, 18, 0))            # closing minute is closed
    assert h.is_open(at(2026, 11, 28, 12, 59)) and not h.is_open(at(2026, 11, 28, 13, 0))   # Saturday
    assert not h.is_open(at(2026, 11, 29, 12, 0))            # Sunday
    assert not h.is_open(at(2026, 12, 25, 10, 0))            # a Friday, but closed that day
    # 07:30 UTC is 08:30 in Amsterdam in winter: open.
    assert h.is_open(datetime(2026, 11, 27, 7, 30, tzinfo=timezone.utc))
    assert "mon 08:00-18:00" in h.describe() and "closed 2026-12-25" in h.describe()


def test_two_intervals_and_past_midnight():
    h = OpeningHours.parse("mon-fri 08:00-12:00 13:00-17:30; fri 22:00-02:00", "UTC")
    t = lambda d, hh, mm: datetime(2026, 11, d, hh, mm, tzinfo=timezone.utc)  # noqa: E731  (the 23rd is a Monday)
    assert h.is_open(t(23, 11, 59)) and not h.is_open(t(23, 12, 30)) and h.is_open(t(23, 13, 0))
    assert h.is_open(t(27, 23, 0)) and h.is_open(t(28, 1, 59)) and not h.is_open(t(28, 2, 0))


def test_always_open_and_next_opening():
    assert OpeningHours.parse("").is_open(datetime.now(timezone.utc))
    assert OpeningHours.parse("24/7", "UTC", "2026-12-25").is_open(datetime(2026, 12, 24, 23, 59, tzinfo=timezone.utc))
    h = OpeningHours.parse("mon-fri 08:00-18:00", "UTC")
    friday_evening = datetime(2026, 11, 27, 18, 30, tzinfo=timezone.utc)
    assert h.next_open(friday_evening) == datetime(2026, 11, 30, 8, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("week,tz,closed,words", [
    ("mon-fri 8-18", "UTC", "", "not an interval"),
    ("monday-friyay 08:00-18:00", "UTC", "", "not a day"),
    ("mon-fri", "UTC", "", "write days then times"),
    ("mon 08:00-25:00", "UTC", "", "not an interval"),
    ("mon 08:00-18:00", "Mars/Olympus", "", "time zone"),
    ("mon 08:00-18:00", "UTC", "25-12-2026", "YYYY-MM-DD"),
])
def test_bad_hours_say_which_part(week, tz, closed, words):
    with pytest.raises(HoursError, match=words):
        OpeningHours.parse(week, tz, closed)


def test_when_a_scheduled_callback_is_due():
    now = datetime(2026, 11, 26, 15, 0, tzinfo=timezone.utc)              # 16:00 in Amsterdam
    assert parse_when("+90", now) == now + timedelta(seconds=90)
    assert parse_when("17:30", now, "Europe/Amsterdam") == at(2026, 11, 26, 17, 30)
    assert parse_when("09:00", now, "Europe/Amsterdam") == at(2026, 11, 27, 9, 0)   # already past today
    assert parse_when("2026-12-01T14:30", now, "Europe/Amsterdam") == at(2026, 12, 1, 14, 30)
    assert parse_when("2026-12-01T14:30+00:00", now, "Europe/Amsterdam").utcoffset() == timedelta(0)
    with pytest.raises(ValueError, match="not a time"):
        parse_when("tomorrow", now)
