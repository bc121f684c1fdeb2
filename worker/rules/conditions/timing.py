"""Conditions over time: waiting, silence, age, time in stage, business hours.

Elapsed time is wall time, or business time when `business: <calendar>` is
given. Each knows when it will next change, so the loop can set a due-timer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta

from pydantic import Field, PrivateAttr, model_validator

from worker.rules.calendars import Calendar, add_business_time, is_open, next_close, next_open
from worker.rules.conditions.base import CONDITIONS, Condition
from worker.rules.context import EvalContext, utc
from worker.rules.durations import Duration, format_duration


class ElapsedCondition(Condition):
    """Time since a record's instant is longer and/or shorter than a duration."""

    shorthand = "longer_than"
    time_bound = True
    longer_than: Duration | None = None
    shorter_than: Duration | None = None
    business: str | None = Field(default=None, description="Count only open time of this calendar")
    _cal: Calendar | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _some(self) -> ElapsedCondition:
        if self.longer_than is None and self.shorter_than is None:
            raise ValueError("give 'longer_than' and/or 'shorter_than' (a duration like 15m)")
        if self.longer_than and self.shorter_than and self.shorter_than <= self.longer_than:
            raise ValueError("'shorter_than' must be longer than 'longer_than' or nothing ever matches")
        return self

    def calendars_used(self) -> Iterable[tuple[str, str]]:
        return [("business", self.business)] if self.business else []

    def bind(self, calendars: Mapping[str, Calendar]) -> None:
        if self.business:
            self._cal = calendars[self.business]

    def start(self, ctx: EvalContext) -> datetime | None:
        """The instant elapsed time counts from, or None when the condition does not apply."""
        raise NotImplementedError

    def what(self) -> str:
        raise NotImplementedError

    def label(self) -> str:
        bits = []
        if self.longer_than is not None:
            bits.append(f"longer than {format_duration(self.longer_than)}")
        if self.shorter_than is not None:
            bits.append(f"shorter than {format_duration(self.shorter_than)}")
        where = f" (business time, {self.business})" if self.business else ""
        return f"{self.what()} {' and '.join(bits)}{where}"

    def _after(self, start: datetime, delta: timedelta) -> datetime:
        if self._cal is None:
            return start + delta
        return add_business_time(self._cal, start, delta)

    def _window(self, start: datetime) -> tuple[datetime | None, datetime | None]:
        lo = self._after(start, self.longer_than) if self.longer_than is not None else None
        hi = self._after(start, self.shorter_than) if self.shorter_than is not None else None
        return lo, hi

    def seen(self, ctx: EvalContext) -> object:
        start = self.start(ctx)
        if start is None:
            return "does not apply"
        elapsed = ctx.now - start
        return f"{format_duration(elapsed)} since {start.isoformat()}"

    def test(self, ctx: EvalContext) -> bool:
        start = self.start(ctx)
        if start is None:
            return False
        if self._cal is None:  # the fast path: wall time
            elapsed = ctx.now - start
            return (self.longer_than is None or elapsed >= self.longer_than) and (
                self.shorter_than is None or elapsed < self.shorter_than
            )
        lo, hi = self._window(start)
        return (lo is None or ctx.now >= lo) and (hi is None or ctx.now < hi)

    def due(self, ctx: EvalContext, at: datetime, want: bool) -> datetime | None:
        start = self.start(ctx)
        if start is None:
            return None if want else at
        lo, hi = self._window(start)
        if want:
            if hi is not None and at >= hi:
                return None
            return at if lo is None or at >= lo else lo
        if (lo is not None and at < lo) or (hi is not None and at >= hi):
            return at
        return hi


@CONDITIONS.register("waiting_for_reply")
class WaitingForReplyCondition(ElapsedCondition):
    """The customer's last message is newer than the team's, and this old."""

    key = "waiting_for_reply"

    def what(self) -> str:
        return "customer waiting for a reply"

    def start(self, ctx: EvalContext) -> datetime | None:
        inbound, outbound = utc(ctx.conv.last_inbound_at), utc(ctx.conv.last_outbound_at)
        if inbound is None or (outbound is not None and outbound >= inbound):
            return None
        return inbound


@CONDITIONS.register("silent_for")
class SilentForCondition(ElapsedCondition):
    """The team replied last and the customer has been silent this long."""

    key = "silent_for"

    def what(self) -> str:
        return "customer silent after the team's reply"

    def start(self, ctx: EvalContext) -> datetime | None:
        inbound, outbound = utc(ctx.conv.last_inbound_at), utc(ctx.conv.last_outbound_at)
        if outbound is None or (inbound is not None and inbound > outbound):
            return None
        return outbound


@CONDITIONS.register("age")
class AgeCondition(ElapsedCondition):
    """Time since the conversation was created."""

    key = "age"

    def what(self) -> str:
        return "conversation age"

    def start(self, ctx: EvalContext) -> datetime | None:
        return utc(ctx.conv.created_at)


@CONDITIONS.register("in_stage_for")
class InStageForCondition(ElapsedCondition):
    """Time since the conversation entered its current stage."""

    key = "in_stage_for"

    def what(self) -> str:
        return "time in the current stage"

    def start(self, ctx: EvalContext) -> datetime | None:
        return utc(ctx.conv.stage_entered_at)


@CONDITIONS.register("in_business_hours")
class InBusinessHoursCondition(Condition):
    """`now` falls inside a calendar's open hours."""

    key = "in_business_hours"
    shorthand = "calendar"
    time_bound = True
    calendar: str = Field(min_length=1, description="Name of a calendar")
    _cal: Calendar | None = PrivateAttr(default=None)

    def calendars_used(self) -> Iterable[tuple[str, str]]:
        return [("calendar", self.calendar)]

    def bind(self, calendars: Mapping[str, Calendar]) -> None:
        self._cal = calendars[self.calendar]

    def label(self) -> str:
        return f"inside business hours ({self.calendar})"

    def seen(self, ctx: EvalContext) -> object:
        return "open" if self.test(ctx) else "closed"

    def test(self, ctx: EvalContext) -> bool:
        return self._cal is not None and is_open(self._cal, ctx.now)

    def due(self, ctx: EvalContext, at: datetime, want: bool) -> datetime | None:
        if self._cal is None:
            return None
        return next_open(self._cal, at) if want else next_close(self._cal, at)
