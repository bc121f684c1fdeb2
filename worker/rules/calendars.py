"""Named business calendars and business-time arithmetic.

A calendar is a time zone, weekly opening hours (split shifts allowed) and
holidays (public ones from the `holidays` package by country and subdivision,
plus explicit dates). All functions take and return timezone-aware datetimes;
results are in UTC. Opening hours are wall-clock times in the calendar's zone,
so a DST change shortens or lengthens that day's intervals as a person expects.
A span that starts or ends inside a spring-forward gap is read the way
zoneinfo reads a nonexistent wall time (PEP 495, fold=0: 02:30 -> 03:30).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from itertools import pairwise
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
# How far to look for the next opening before giving up (a calendar that is
# closed for longer than this is treated as never open).
HORIZON_DAYS = 800
_SPAN = re.compile(r"^(\d{2}):(\d{2})-(\d{2}):(\d{2})$")
Span = tuple[time, time | None]  # end None means 24:00


class HolidaysConfig(BaseModel):
    """Public holidays by country (+ subdivision) and explicit closed dates."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    country: str | None = Field(default=None, description="ISO country code for public holidays, e.g. DE")
    subdivision: str | None = Field(default=None, description="State/province code, e.g. BY")
    dates: list[date] = Field(default_factory=list, description="Extra closed dates, YYYY-MM-DD")

    @model_validator(mode="after")
    def _known_country(self) -> HolidaysConfig:
        if self.subdivision and not self.country:
            raise ValueError("a subdivision needs its country")
        if self.country:
            try:
                holidays.country_holidays(self.country, subdiv=self.subdivision, years=2026)
            except NotImplementedError:
                raise ValueError(f"unknown holiday country {self.country!r} (an ISO code like DE)") from None
            except Exception as exc:
                raise ValueError(f"holiday country {self.country!r}: {exc}") from None
        return self


def _parse_span(text: str) -> Span:
    match = _SPAN.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a time span (HH:MM-HH:MM, e.g. 09:00-17:30)")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    if h1 > 23 or m1 > 59 or m2 > 59 or h2 > 24 or (h2 == 24 and m2):
        raise ValueError(f"{text!r} has an impossible time (00:00 to 24:00)")
    if (h2, m2) <= (h1, m1):
        raise ValueError(f"{text!r} ends before it starts (split an overnight shift in two days)")
    return time(h1, m1), None if h2 == 24 else time(h2, m2)


class CalendarConfig(BaseModel):
    """A calendar as written in YAML."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timezone: str = Field(description="IANA time zone, e.g. Europe/Berlin")
    hours: dict[str, list[Annotated[str, Field(pattern=r"^\d{2}:\d{2}-\d{2}:\d{2}$")]]] = Field(
        description="Weekly opening hours: mon..sun -> list of HH:MM-HH:MM spans"
    )
    holidays: HolidaysConfig = Field(default_factory=HolidaysConfig)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (an IANA name like Europe/Berlin)") from None
        return value

    @field_validator("hours")
    @classmethod
    def _hours(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for day, spans in value.items():
            if day not in WEEKDAYS:
                raise ValueError(f"unknown weekday {day!r} (allowed: {', '.join(WEEKDAYS)})")
            parsed = sorted(_parse_span(s) for s in spans)
            for (_, end), (start, _) in pairwise(parsed):
                if end is None or end > start:
                    raise ValueError(f"{day}: spans overlap")
        if not any(value.values()):
            raise ValueError("a calendar needs some opening hours")
        return value


@dataclass(frozen=True)
class Calendar:
    """A compiled calendar; hashable so business-time results can be cached."""

    name: str
    tz: ZoneInfo
    weekly: tuple[tuple[Span, ...], ...]
    country: str | None = None
    subdivision: str | None = None
    closed_dates: frozenset[date] = frozenset()

    @classmethod
    def from_config(cls, name: str, config: CalendarConfig) -> Calendar:
        weekly = tuple(tuple(sorted(_parse_span(s) for s in config.hours.get(day, []))) for day in WEEKDAYS)
        return cls(
            name=name,
            tz=ZoneInfo(config.timezone),
            weekly=weekly,
            country=config.holidays.country,
            subdivision=config.holidays.subdivision,
            closed_dates=frozenset(config.holidays.dates),
        )

    @classmethod
    def build(cls, name: str, raw: dict[str, Any]) -> Calendar:
        """Build from a plain mapping (tests and the CLI)."""
        return cls.from_config(name, CalendarConfig.model_validate(raw))


@lru_cache(maxsize=256)
def _public_holidays(country: str, subdivision: str | None, year: int) -> frozenset[date]:
    return frozenset(holidays.country_holidays(country, subdiv=subdivision, years=year).keys())


def is_holiday(cal: Calendar, day: date) -> bool:
    if day in cal.closed_dates:
        return True
    return bool(cal.country) and day in _public_holidays(str(cal.country), cal.subdivision, day.year)


@lru_cache(maxsize=65_536)
def _day_intervals(cal: Calendar, day: date) -> tuple[tuple[datetime, datetime], ...]:
    """The UTC open intervals of one local date."""
    if is_holiday(cal, day):
        return ()
    out = []
    for start, end in cal.weekly[day.weekday()]:
        s = datetime.combine(day, start, tzinfo=cal.tz).astimezone(UTC)
        e_local = (
            datetime.combine(day + timedelta(days=1), time(0), tzinfo=cal.tz)
            if end is None
            else datetime.combine(day, end, tzinfo=cal.tz)
        )
        e = e_local.astimezone(UTC)
        if e > s:  # a DST gap can swallow a short span
            out.append((s, e))
    return tuple(out)


def _aware(t: datetime) -> datetime:
    if t.tzinfo is None:
        raise ValueError("business-time functions need timezone-aware datetimes")
    return t.astimezone(UTC)


def open_intervals(
    cal: Calendar, start: datetime, until: datetime | None = None
) -> Iterator[tuple[datetime, datetime]]:
    """Open intervals (UTC) that end after `start`, in order, up to `until` or the horizon."""
    start = _aware(start)
    day = start.astimezone(cal.tz).date() - timedelta(days=1)
    days = HORIZON_DAYS if until is None else (_aware(until).astimezone(cal.tz).date() - day).days + 2
    for _ in range(days):
        for s, e in _day_intervals(cal, day):
            if e > start:
                yield s, e
        day += timedelta(days=1)


def is_open(cal: Calendar, t: datetime) -> bool:
    """Whether the calendar is open at instant `t`."""
    t = _aware(t)
    day = t.astimezone(cal.tz).date()
    return any(s <= t < e for d in (day - timedelta(days=1), day) for s, e in _day_intervals(cal, d))


def business_time_between(cal: Calendar, a: datetime, b: datetime) -> timedelta:
    """Open time in [a, b); zero when b <= a."""
    a, b = _aware(a), _aware(b)
    total = timedelta(0)
    if b <= a:
        return total
    for s, e in open_intervals(cal, a, until=b):
        if s >= b:
            break
        total += min(e, b) - max(s, a)
    return total


def business_seconds_between(cal: Calendar, a: datetime, b: datetime) -> float:
    return business_time_between(cal, a, b).total_seconds()


@lru_cache(maxsize=65_536)
def _add_cached(cal: Calendar, start: datetime, delta: timedelta) -> datetime | None:
    remaining = delta
    for s, e in open_intervals(cal, start):
        s = max(s, start)
        if remaining <= e - s:
            return s + remaining
        remaining -= e - s
    return None


def add_business_time(cal: Calendar, start: datetime, delta: timedelta) -> datetime:
    """The earliest instant t with business_time_between(start, t) == delta."""
    if delta < timedelta(0):
        raise ValueError("delta must not be negative")
    start = _aware(start)
    if not delta:
        return start
    result = _add_cached(cal, start, delta)
    if result is None:
        raise ValueError(f"calendar {cal.name!r} has no open time within {HORIZON_DAYS} days")
    return result


def next_open(cal: Calendar, t: datetime) -> datetime | None:
    """`t` when open, else the start of the next open interval (None: not within the horizon)."""
    t = _aware(t)
    for s, _ in open_intervals(cal, t):
        return max(s, t)
    return None


def next_close(cal: Calendar, t: datetime) -> datetime | None:
    """`t` when closed, else the end of the current run of open intervals."""
    t = _aware(t)
    end: datetime | None = None
    for s, e in open_intervals(cal, t):
        if end is None:
            if s > t:
                return t
        elif s > end:
            break
        end = e
    return end if end is not None else t
