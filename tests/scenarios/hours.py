"""An independent business-hours reference for the scenario checks.

Deliberately does not use `worker.rules.calendars`: the checks compute what
*should* happen from the YAML and the generator's history, so a bug in the
worker's calendar code shows up as a violation instead of agreeing with itself.
Only what the scenario calendars use: weekly spans, explicit holiday dates.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from ruamel.yaml import YAML

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class Hours:
    name: str
    zone: ZoneInfo
    weekly: dict[int, tuple[tuple[time, time | None], ...]]  # end None = midnight
    holidays: frozenset[date]

    def spans(self, day: date) -> list[tuple[datetime, datetime]]:
        """The open spans of a local day, as UTC datetimes."""
        if day in self.holidays:
            return []
        out = []
        for start, end in self.weekly.get(day.weekday(), ()):
            lo = datetime.combine(day, start, self.zone)
            hi = (
                datetime.combine(day + timedelta(days=1), time(0), self.zone)
                if end is None
                else datetime.combine(day, end, self.zone)
            )
            out.append((lo.astimezone(UTC), hi.astimezone(UTC)))
        return out

    def _spans_from(self, t: datetime, days: int = 30) -> list[tuple[datetime, datetime]]:
        first = t.astimezone(self.zone).date() - timedelta(days=1)
        return [s for i in range(days) for s in self.spans(first + timedelta(days=i)) if s[1] > t]

    def is_open(self, t: datetime) -> bool:
        return any(lo <= t < hi for lo, hi in self._spans_from(t, 3))

    def next_open(self, t: datetime) -> datetime:
        """`t` when open, else the start of the next span."""
        for lo, _hi in self._spans_from(t):
            return max(lo, t)
        raise ValueError(f"{self.name}: no open time within 30 days of {t}")

    def between(self, a: datetime, b: datetime) -> timedelta:
        """Open time in [a, b)."""
        total = timedelta(0)
        for lo, hi in self._spans_from(a, (b - a).days + 3):
            if lo >= b:
                break
            total += max(timedelta(0), min(hi, b) - max(lo, a))
        return total

    def add(self, t: datetime, seconds: float) -> datetime:
        """The instant when `seconds` of open time have passed since `t`."""
        left = timedelta(seconds=seconds)
        for lo, hi in self._spans_from(t):
            start = max(lo, t)
            if start + left <= hi:
                return start + left
            left -= hi - start
        raise ValueError(f"{self.name}: {seconds}s of open time not within 30 days of {t}")


def _time(text: str) -> time | None:
    return None if text == "24:00" else time.fromisoformat(text)


def load_hours(path: Path) -> dict[str, Hours]:
    """The `calendars` section of a rule file, parsed with plain YAML."""
    doc: Any = YAML(typ="safe").load(path.read_text())
    out: dict[str, Hours] = {}
    for name, raw in (doc.get("calendars") or {}).items():
        weekly: dict[int, tuple[tuple[time, time | None], ...]] = {}
        for day, spans in raw.get("hours", {}).items():
            parsed = []
            for span in spans:
                a, b = span.split("-")
                start = _time(a)
                assert start is not None
                parsed.append((start, _time(b)))
            weekly[DAYS.index(day)] = tuple(parsed)
        dates = frozenset(
            d if isinstance(d, date) else date.fromisoformat(str(d))
            for d in (raw.get("holidays") or {}).get("dates", [])
        )
        out[name] = Hours(name, ZoneInfo(raw["timezone"]), weekly, dates)
    return out
