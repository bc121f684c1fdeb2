"""Conditions for SLA escalation and follow-ups: SLA clock shares, silence after a team
reply (follow-up sequences), and quiet hours in the customer's or the org's time zone."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, time, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, PrivateAttr, field_validator, model_validator

from worker.rules.calendars import Calendar, is_open, next_open
from worker.rules.conditions.base import CONDITIONS, Condition
from worker.rules.conditions.timing import ElapsedCondition
from worker.rules.context import EvalContext, utc
from worker.rules.cycles import followup_anchor
from worker.rules.durations import format_duration
from worker.rules.sla import cycle_start, deadline, pauses_of

# A tier gated by business hours may still act this long after a deadline that fell
# right at closing time (a due-timer pops a little late): on time, not "at night".
DEADLINE_GRACE = timedelta(minutes=1)
_EPSILON = timedelta(milliseconds=1)


@CONDITIONS.register("sla")
class SlaCondition(Condition):
    """An SLA clock of a policy has used at least a share of its target (pauses excluded)."""

    key = "sla"
    time_bound = True
    policy: str = Field(min_length=1, description="Name of an SLA policy (sla_policies)")
    metric: Literal["first_response", "next_response", "time_to_close"] = "first_response"
    elapsed_share: float = Field(default=1.0, gt=0, le=1, description="0.8: 80% of the target used")
    hours: str | None = Field(default=None, description="Act only while this calendar is open")
    # next_response reads the messages to find the customer message that opened the cycle.
    needs_messages = True
    _policy: Any = PrivateAttr(default=None)
    _cal: Calendar | None = PrivateAttr(default=None)

    def calendars_used(self) -> Iterable[tuple[str, str]]:
        return [("hours", self.hours)] if self.hours else []

    def bind(self, calendars: Mapping[str, Calendar]) -> None:
        if self.hours:
            self._cal = calendars[self.hours]

    def policies_used(self) -> Iterable[tuple[str, str]]:
        return [("policy", self.policy)]

    def bind_policies(self, policies: Mapping[str, Any]) -> None:
        self._policy = policies[self.policy]

    def uses_messages(self) -> bool:
        # Only the next-response cycle reads messages (its opener); a policy's own
        # `applies_to` conditions may read them too.
        return self.metric == "next_response" or self._applies_uses(lambda c: c.uses_messages())

    def uses_contact(self) -> bool:
        return self._applies_uses(lambda c: c.uses_contact())

    def _applies_uses(self, uses: Callable[[Condition], bool]) -> bool:
        applies = getattr(self._policy, "applies", None)
        return applies is not None and any(uses(leaf.cond) for leaf in applies.leaves())

    def settled(self, ctx: EvalContext) -> bool | None:
        if self.metric == "next_response" and not _cycle_can_run(ctx):
            return False  # no cycle: no clock and no deadline, whatever the messages hold
        return super().settled(ctx)

    def label(self) -> str:
        share = "breached" if self.elapsed_share >= 1 else f"{round(self.elapsed_share * 100)}% used"
        gate = f", acting in {self.hours} hours" if self.hours else ""
        return f"SLA {self.policy} {self.metric.replace('_', ' ')} {share}{gate}"

    def deadline(self, ctx: EvalContext) -> datetime | None:
        """When this share of the target is used up in the current cycle (None: not running/paused)."""
        policy = self._policy
        if policy is None or self.metric not in policy.targets or not policy.applies_to(ctx):
            return None
        start = cycle_start(self.metric, ctx)
        if start is None:
            return None
        budget = policy.targets[self.metric] * self.elapsed_share
        return deadline(policy, start, budget, pauses_of(policy, ctx))  # type: ignore[no-any-return]

    def seen(self, ctx: EvalContext) -> object:
        due = self.deadline(ctx)
        if due is None:
            return "clock not running (answered, paused, closed or not covered)"
        left = due - ctx.now
        return (
            f"due {due.isoformat()} ({format_duration(left)} left)"
            if left > timedelta(0)
            else (f"due {due.isoformat()} ({format_duration(-left)} ago)")
        )

    def _gate_open(self, t: datetime, due: datetime) -> bool:
        if self._cal is None or is_open(self._cal, t):
            return True
        return due <= t < due + DEADLINE_GRACE and is_open(self._cal, due - _EPSILON)

    def test(self, ctx: EvalContext) -> bool:
        due = self.deadline(ctx)
        return due is not None and ctx.now >= due and self._gate_open(ctx.now, due)

    def due(self, ctx: EvalContext, at: datetime, want: bool) -> datetime | None:
        due = self.deadline(ctx)
        if not want:
            return at if due is None or at < due or not self._gate_open(at, due) else None
        if due is None:
            return None
        t = max(at, due)
        if self._gate_open(t, due) or self._cal is None:
            return t
        return next_open(self._cal, t)


def _cycle_can_run(ctx: EvalContext) -> bool:
    """The record allows an open response cycle: open, and the customer wrote after a team reply
    (`worker.rules.sla.cycle_start`)."""
    conv = ctx.conv
    inbound, outbound = utc(conv.last_inbound_at), utc(conv.last_outbound_at)
    return conv.status != "closed" and inbound is not None and outbound is not None and outbound < inbound


@CONDITIONS.register("silent_after_reply")
class SilentAfterReplyCondition(ElapsedCondition):
    """The customer has been silent this long since the team's reply that anchors a follow-up
    sequence (the worker's own follow-ups never move the anchor; a person's reply does)."""

    key = "silent_after_reply"
    needs_messages = True

    def what(self) -> str:
        return "customer silent since the team's reply (follow-up anchor)"

    def start(self, ctx: EvalContext) -> datetime | None:
        return followup_anchor(ctx)

    def settled(self, ctx: EvalContext) -> bool | None:
        """False when the record rules out an anchor or its window, whatever the messages: the
        anchor is a team reply after the customer's last message, so it was created after
        `last_inbound_at` and at or before `last_outbound_at`."""
        inbound, outbound = utc(ctx.conv.last_inbound_at), utc(ctx.conv.last_outbound_at)
        if outbound is None or (inbound is not None and outbound <= inbound):
            return False
        if self.shorter_than is not None and ctx.now >= self._after(outbound, self.shorter_than):
            return False  # even the latest possible anchor's window has closed
        return None


def _clock(text: str) -> time:
    hours, _, minutes = text.partition(":")
    if not (hours.isdigit() and minutes.isdigit() and len(minutes) == 2):
        raise ValueError(f"{text!r} is not a time of day (HH:MM)")
    h, m = int(hours), int(minutes)
    if h > 23 or m > 59:
        raise ValueError(f"{text!r} is not a time of day (00:00 to 23:59)")
    return time(h, m)


def _zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (an IANA name like Europe/Berlin)") from None
    return name


@CONDITIONS.register("quiet_hours")
class QuietHoursCondition(Condition):
    """It is night for the customer: local time within [start, end) in the contact's time zone
    (`contact.timezone`), or in `timezone` (the org's) when the contact has none or it is off."""

    key = "quiet_hours"
    time_bound = True
    start: str = Field(default="21:00", description="Quiet from (HH:MM, local)")
    end: str = Field(default="08:00", description="Quiet until (HH:MM, local)")
    timezone: str = Field(description="The org's IANA time zone (used when the contact has none)")
    use_contact_timezone: bool = Field(default=True, description="Prefer the contact's time zone")

    needs_contact = True

    @field_validator("start", "end")
    @classmethod
    def _time_of_day(cls, value: str) -> str:
        _clock(value)
        return value

    _tz = field_validator("timezone")(_zone)

    @model_validator(mode="after")
    def _span(self) -> QuietHoursCondition:
        if self.start == self.end:
            raise ValueError("start and end are equal: quiet hours would be never or always")
        return self

    def label(self) -> str:
        zone = "the customer's time zone" if self.use_contact_timezone else self.timezone
        return f"quiet hours {self.start}-{self.end} in {zone}"

    def zone(self, ctx: EvalContext) -> ZoneInfo:
        if self.use_contact_timezone and ctx.contact is not None and ctx.contact.timezone:
            try:
                return ZoneInfo(ctx.contact.timezone)
            except (ZoneInfoNotFoundError, ValueError):
                pass  # an odd value on the contact: the org's zone
        return ZoneInfo(self.timezone)

    def seen(self, ctx: EvalContext) -> object:
        zone = self.zone(ctx)
        return f"{ctx.now.astimezone(zone):%H:%M} in {zone.key}"

    def _quiet(self, local: datetime) -> bool:
        t, a, b = local.time(), _clock(self.start), _clock(self.end)
        return a <= t < b if a < b else (t >= a or t < b)

    def test(self, ctx: EvalContext) -> bool:
        return self._quiet(ctx.now.astimezone(self.zone(ctx)))

    def due(self, ctx: EvalContext, at: datetime, want: bool) -> datetime | None:
        zone = self.zone(ctx)
        local = at.astimezone(zone)
        if self._quiet(local) == want:
            return at
        edge = _clock(self.start if want else self.end)
        for days in range(3):
            candidate = datetime.combine(local.date() + timedelta(days=days), edge, tzinfo=zone)
            if candidate > local:
                # A wall time in a DST gap reads forward (fold=0); normalise through UTC.
                return max(candidate.astimezone(at.tzinfo), at)
        return None
