from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.rules.durations import MAX_DURATION, DurationError, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("15m", timedelta(minutes=15)),
        ("2h", timedelta(hours=2)),
        ("1d", timedelta(days=1)),
        ("1w", timedelta(weeks=1)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        (" 2H ", timedelta(hours=2)),
    ],
)
def test_parses(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "text", ["", "15", "m", "15 minutes", "1.5h", "-5m", "30m1h", "1h1h", "0s", 15, None, True]
)
def test_rejects_with_a_message_that_says_what_is_allowed(text: object) -> None:
    with pytest.raises(DurationError) as info:
        parse_duration(text)
    assert "duration" in str(info.value)


def test_rejects_absurdly_long() -> None:
    with pytest.raises(DurationError, match="longer than"):
        parse_duration(f"{MAX_DURATION.days + 1}d")


@given(st.integers(min_value=1, max_value=int(MAX_DURATION.total_seconds())))
def test_format_then_parse_round_trips(seconds: int) -> None:
    delta = timedelta(seconds=seconds)
    assert parse_duration(format_duration(delta)) == delta


@given(st.text(max_size=12))
def test_any_text_parses_or_raises_duration_error(text: str) -> None:
    try:
        result = parse_duration(text)
    except DurationError:
        return
    assert timedelta(0) < result <= MAX_DURATION
