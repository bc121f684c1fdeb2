"""Durations as rule authors write them: `90s`, `15m`, `2h`, `1d`, `1h30m`, `1w`."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, WithJsonSchema

_UNIT_S = {"w": 604_800, "d": 86_400, "h": 3_600, "m": 60, "s": 1}
_PART = re.compile(r"(\d+)([wdhms])")
DURATION_PATTERN = r"^(\d+[wdhms])+$"
_WHOLE = re.compile(DURATION_PATTERN)
# Far beyond any useful rule timer, and safely inside timedelta's range.
MAX_DURATION = timedelta(days=3650)
ALLOWED = "a number with a unit, like 90s, 15m, 2h, 1d, 1w or 1h30m"


class DurationError(ValueError):
    """A text that is not a duration; the message says what is allowed."""


def parse_duration(text: object) -> timedelta:
    """Parse `90s`, `15m`, `2h`, `1d`, `1w` and combinations like `1h30m` (largest unit first)."""
    if isinstance(text, timedelta):
        return text
    if isinstance(text, bool) or not isinstance(text, str):
        raise DurationError(f"{text!r} is not a duration ({ALLOWED})")
    compact = text.strip().lower().replace(" ", "")
    if not _WHOLE.match(compact):
        raise DurationError(f"{text!r} is not a duration ({ALLOWED})")
    parts = _PART.findall(compact)
    ranks = [list(_UNIT_S).index(unit) for _, unit in parts]
    if ranks != sorted(set(ranks)):
        raise DurationError(f"{text!r} is not a duration: each unit once, largest first ({ALLOWED})")
    seconds = sum(int(n) * _UNIT_S[unit] for n, unit in parts)
    if seconds == 0:
        raise DurationError(f"{text!r} is a zero duration: it must be positive")
    if seconds > MAX_DURATION.total_seconds():
        raise DurationError(f"{text!r}: a duration longer than {MAX_DURATION.days} days")
    return timedelta(seconds=seconds)


def format_duration(delta: timedelta) -> str:
    """The shortest text `parse_duration` reads back as `delta` (whole seconds)."""
    seconds = int(delta.total_seconds())
    if seconds <= 0:
        return "0s"
    out = []
    for unit, size in _UNIT_S.items():
        count, seconds = divmod(seconds, size)
        if count:
            out.append(f"{count}{unit}")
    return "".join(out)


def _validate(value: Any) -> timedelta:
    try:
        return parse_duration(value)
    except DurationError as exc:
        # pydantic turns ValueError into a validation error with this message.
        raise ValueError(str(exc)) from None


Duration = Annotated[
    timedelta,
    BeforeValidator(_validate),
    WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN, "examples": ["90s", "15m", "2h", "1d"]}),
]
