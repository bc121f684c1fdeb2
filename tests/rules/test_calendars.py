from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from worker.rules.calendars import (
    Calendar,
    add_business_time,
    business_time_between,
    is_open,
    next_close,
    next_open,
)

BERLIN = Calendar.build(
    "support",
    {
        "timezone": "Europe/Berlin",
        "hours": {d: ["09:00-12:00", "13:00-18:00"] for d in ("mon", "tue", "wed", "thu", "fri")}
        | {"sat": ["22:00-24:00"], "sun": ["00:00-02:00", "02:30-04:00"]},
        "holidays": {"country": "DE", "subdivision": "BE", "dates": [date(2026, 3, 11)]},
    },
)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_split_shift_and_zone() -> None:
    # Wed 4 March 2026: Berlin is UTC+1.
    assert is_open(BERLIN, utc(2026, 3, 4, 8, 0))  # 09:00 local
    assert not is_open(BERLIN, utc(2026, 3, 4, 7, 59))
    assert not is_open(BERLIN, utc(2026, 3, 4, 11, 30))  # lunch
    assert is_open(BERLIN, utc(2026, 3, 4, 12, 0))
    assert not is_open(BERLIN, utc(2026, 3, 4, 17, 0))  # 18:00 local: closed


def test_holidays_public_and_explicit() -> None:
    assert not is_open(BERLIN, utc(2026, 3, 11, 10, 0))  # explicit date
    assert not is_open(BERLIN, utc(2026, 4, 3, 10, 0))  # Good Friday
    assert not is_open(BERLIN, utc(2026, 5, 1, 10, 0))  # Labour Day, a Friday
    assert is_open(BERLIN, utc(2026, 3, 10, 10, 0))


def test_add_business_time_skips_lunch_nights_and_weekends() -> None:
    fri_1730 = utc(2026, 3, 6, 16, 30)  # 17:30 local
    # 30 min left on Friday, then Saturday 22:00 local opens.
    assert add_business_time(BERLIN, fri_1730, timedelta(minutes=45)) == utc(2026, 3, 7, 21, 15)
    assert add_business_time(BERLIN, utc(2026, 3, 4, 10, 30), timedelta(hours=1)) == utc(2026, 3, 4, 12, 30)


def test_dst_spring_forward_shortens_the_night_shift() -> None:
    # 29 March 2026: clocks go 02:00 -> 03:00 in Berlin. 02:30 does not exist;
    # zoneinfo (PEP 495, fold=0) reads it as 03:30 CEST, so 02:30-04:00 is 30 min.
    sat = utc(2026, 3, 28, 0, 0)
    sun_end = utc(2026, 3, 30, 0, 0)
    assert business_time_between(BERLIN, sat, sun_end) == timedelta(hours=2 + 2, minutes=30)
    # 22:00-24:00 and 00:00-02:00 are wall-clock hours on both sides of midnight.
    assert is_open(BERLIN, utc(2026, 3, 28, 23, 59))


def test_next_open_and_close() -> None:
    lunch = utc(2026, 3, 4, 11, 15)
    assert next_open(BERLIN, lunch) == utc(2026, 3, 4, 12, 0)
    assert next_close(BERLIN, lunch) == lunch
    assert next_close(BERLIN, utc(2026, 3, 4, 12, 5)) == utc(2026, 3, 4, 17, 0)
    # Saturday 22:00-24:00 and Sunday 00:00-02:00 are one run (not 8 March: a Berlin holiday).
    assert next_close(BERLIN, utc(2026, 3, 14, 21, 30)) == utc(2026, 3, 15, 1, 0)
    assert next_close(BERLIN, utc(2026, 3, 7, 21, 30)) == utc(2026, 3, 7, 23, 0)


@pytest.mark.parametrize(
    "raw",
    [
        {"timezone": "Mars/Olympus", "hours": {"mon": ["09:00-17:00"]}},
        {"timezone": "UTC", "hours": {"monday": ["09:00-17:00"]}},
        {"timezone": "UTC", "hours": {"mon": ["17:00-09:00"]}},
        {"timezone": "UTC", "hours": {"mon": ["09:00-12:00", "11:00-13:00"]}},
        {"timezone": "UTC", "hours": {"mon": []}},
        {"timezone": "UTC", "hours": {"mon": ["09:00-17:00"]}, "holidays": {"country": "XX"}},
    ],
)
def test_bad_calendars_are_rejected(raw: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Calendar.build("x", raw)


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        is_open(BERLIN, datetime(2026, 3, 4, 10))


instants = st.datetimes(
    min_value=datetime(2025, 1, 1), max_value=datetime(2027, 12, 1), timezones=st.just(UTC)
)
deltas = st.timedeltas(min_value=timedelta(seconds=1), max_value=timedelta(days=12))


@settings(max_examples=300, deadline=None)
@given(instants, deltas)
def test_add_then_measure_round_trips(start: datetime, delta: timedelta) -> None:
    end = add_business_time(BERLIN, start, delta)
    assert end > start
    assert business_time_between(BERLIN, start, end) == delta
    # The earliest such instant: a moment earlier is not enough.
    assert business_time_between(BERLIN, start, end - timedelta(microseconds=1)) < delta


@settings(max_examples=200, deadline=None)
@given(instants, deltas, deltas)
def test_monotonic_and_additive(start: datetime, a: timedelta, b: timedelta) -> None:
    small, big = sorted((a, b))
    assert add_business_time(BERLIN, start, small) <= add_business_time(BERLIN, start, big)
    mid = add_business_time(BERLIN, start, a)
    assert add_business_time(BERLIN, mid, b) == add_business_time(BERLIN, start, a + b)


@settings(max_examples=200, deadline=None)
@given(instants, instants, instants)
def test_measure_splits_at_any_point(a: datetime, b: datetime, c: datetime) -> None:
    a, b, c = sorted((a, b, c))
    total = business_time_between(BERLIN, a, c)
    assert total == business_time_between(BERLIN, a, b) + business_time_between(BERLIN, b, c)
    assert timedelta(0) <= total <= c - a


@settings(max_examples=200, deadline=None)
@given(instants)
def test_next_open_is_open_and_nothing_open_before(t: datetime) -> None:
    opened = next_open(BERLIN, t)
    assert opened is not None
    assert is_open(BERLIN, opened)
    assert business_time_between(BERLIN, t, opened) == timedelta(0)
