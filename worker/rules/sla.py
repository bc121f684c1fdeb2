"""SLA policies: the `sla_policies:` section, its compilation into rules, and SLA clocks (pure).

A policy selects conversations (`applies_to`, any conditions), sets targets for
up to three metrics, counts them in business time (`calendar`) or wall time, and
names the stages that pause the clock. Each tier x metric compiles into
an ordinary rule, ``sla-<policy>-<metric>-<percent>``, whose `when` is
``applies_to`` + ``sla: {policy, metric, elapsed_share}``: the evaluator, due
timers, ledger, re-check and `explain` treat it like any other rule.

Cycles and firing keys (each tier fires once per cycle):

==================  =======================================  ===========================  ==================
metric              clock runs from                          stops when                   `once` (key)
==================  =======================================  ===========================  ==================
``first_response``  ``created_at``                           the team's first reply       per_conversation
``next_response``   the first customer message after the     the team's next reply        per_response_cycle
                    team's last reply (`cycles.py`)                                       (``cy:<start>``)
``time_to_close``   ``created_at``                           status ``closed``            per_conversation
==================  =======================================  ===========================  ==================

Pauses. The record shows only the current pause (stage + ``stage_entered_at``).
Earlier pauses come from a small per-conversation record the loop keeps in
Redis (`worker/state/sla_pauses.py`); the snapshot reader puts it in the
snapshot (`Snapshot.sla_pauses`, seen here as `EvalContext.pauses`) for the
loop, the re-check, `explain`, `sla` and `backtest` alike; `update_pauses` is
the one pure function the record and the clocks use. Without Redis only the
current pause is honoured, so a deadline can come early only by prior pause
time the worker never saw. Limits: a pause that starts and ends between two polls
is not seen; a pause ends at the new ``stage_entered_at`` (exact) or when the
worker sees it end. Pauses are by stage only: the API's status is only open or closed.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from worker.api.models import Conversation
from worker.rules.calendars import Calendar, add_business_time, business_time_between
from worker.rules.context import EvalContext, Interval, utc
from worker.rules.cycles import response_cycle_start
from worker.rules.durations import Duration, format_duration

if TYPE_CHECKING:  # the policy holds a compiled `when`; nodes import the conditions, which use this module
    from worker.rules.model import Once
    from worker.rules.nodes import Node

Metric = Literal["first_response", "next_response", "time_to_close"]
METRICS: tuple[Metric, ...] = ("first_response", "next_response", "time_to_close")
METRIC_ONCE: dict[Metric, Once] = {
    "first_response": "per_conversation",
    "next_response": "per_response_cycle",
    "time_to_close": "per_conversation",
}
POLICY_ID_PATTERN = r"^[a-z0-9](?:[a-z0-9_-]{0,30}[a-z0-9])?$"
# Shares above this (and below 1) count a clock as "at risk" when no tier says otherwise.
DEFAULT_AT_RISK = 0.8
_SHARE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


# --- configuration ---------------------------------------------------------------------------


def _share(value: Any) -> Any:
    if isinstance(value, str):
        match = _SHARE.match(value)
        if not match:
            raise ValueError(f"{value!r} is not a share (a percentage like 80% or a number like 0.8)")
        return float(match.group(1)) / 100
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


class PauseConfig(BaseModel):
    """Where the clock stops: the conversation waits on the customer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stages: list[int] = Field(default_factory=list, description="Pipeline stage ids that pause the clock")

    @model_validator(mode="before")
    @classmethod
    def _no_status_pause(cls, data: Any) -> Any:
        # The API's status is only open or closed: neither says "waiting on the customer".
        if isinstance(data, dict) and "statuses" in data:
            raise ValueError(
                "'statuses' cannot pause an SLA clock: the API's status is only 'open' or 'closed'; "
                "move waiting conversations to a stage and pause by stage (stages: [13])"
            )
        return data


class TierConfig(BaseModel):
    """One escalation step: at a share of the target, run actions (once per cycle)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    at: float = Field(gt=0, le=1, description="Share of the target: 80% or 0.8; 100% is the breach")
    metrics: list[Metric] | None = Field(default=None, min_length=1, description="Default: every metric")
    at_night: bool = Field(default=False, description="Also act while the hours calendar is closed")
    hours: str | None = Field(default=None, description="Calendar whose open hours gate this tier")
    priority: int | None = Field(default=None, description="Default: the policy's, plus 1 per 10%")
    then: Any = Field(description="Actions, as in a rule")

    _pct = field_validator("at", mode="before")(_share)


class PolicyConfig(BaseModel):
    """An SLA policy as written in YAML."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = ""
    enabled: bool = True
    applies_to: Any = Field(default=None, description="Conditions selecting conversations (channel, tags...)")
    calendar: str | None = Field(default=None, description="Count business time of this calendar")
    first_response: Duration | None = None
    next_response: Duration | None = None
    time_to_close: Duration | None = None
    pause: PauseConfig = Field(default_factory=PauseConfig)
    priority: int = Field(default=50, description="Base priority of the compiled rules")
    tiers: list[TierConfig] = Field(min_length=1)

    def targets(self) -> dict[Metric, timedelta]:
        found = {m: getattr(self, m) for m in METRICS}
        return {m: t for m, t in found.items() if t is not None}


# --- the compiled policy -----------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class SlaPolicy:
    """A validated policy: targets, clock calendar, pause set, and the rules it compiled to."""

    id: str
    targets: Mapping[Metric, timedelta]
    calendar: Calendar | None = None
    pause_stages: frozenset[int] = frozenset()
    applies: Node | None = None
    at_risk: float = DEFAULT_AT_RISK
    description: str = ""
    rule_ids: tuple[str, ...] = field(default=())

    @property
    def pauses(self) -> bool:
        return bool(self.pause_stages)

    @cached_property
    def _applies_test(self) -> Callable[[EvalContext], bool] | None:
        return None if self.applies is None else self.applies.compile()

    def applies_to(self, ctx: EvalContext) -> bool:
        test = self._applies_test
        return test is None or test(ctx)

    def measure(self, a: datetime, b: datetime) -> timedelta:
        """Clock time in [a, b): business time of the calendar, or wall time."""
        if b <= a:
            return timedelta(0)
        return b - a if self.calendar is None else business_time_between(self.calendar, a, b)

    def add(self, start: datetime, delta: timedelta) -> datetime:
        return start + delta if self.calendar is None else add_business_time(self.calendar, start, delta)


def paused_now(policy: SlaPolicy, conv: Conversation) -> bool:
    return conv.pipeline_stage_id in policy.pause_stages


def update_pauses(
    policy: SlaPolicy, conv: Conversation, prior: Sequence[Interval], now: datetime
) -> list[Interval]:
    """The pause intervals after seeing `conv` at `now` (opens or closes the current pause)."""
    out = list(prior)
    is_open = bool(out) and out[-1][1] is None
    if paused_now(policy, conv):
        if not is_open:
            out.append((_pause_start(policy, conv, now), None))
        return out
    if is_open:
        start = out[-1][0]
        entered = utc(conv.stage_entered_at)
        end = entered if entered is not None and entered > start and entered <= now else now
        out[-1] = (start, end)
    return out


def _pause_start(policy: SlaPolicy, conv: Conversation, now: datetime) -> datetime:
    entered = utc(conv.stage_entered_at)
    if conv.pipeline_stage_id in policy.pause_stages and entered is not None and entered <= now:
        return entered
    return now


def pauses_of(policy: SlaPolicy, ctx: EvalContext) -> list[Interval]:
    """The pauses the worker recorded (in the snapshot), brought up to `ctx.now`."""
    return update_pauses(policy, ctx.conv, ctx.pauses.get(policy.id, ()), ctx.now)


def cycle_start(metric: Metric, ctx: EvalContext) -> datetime | None:
    """When the metric's current cycle started, or None when its clock is not running."""
    conv = ctx.conv
    if conv.status == "closed":
        return None
    if metric == "first_response":
        return utc(conv.created_at) if conv.last_outbound_at is None else None
    if metric == "next_response":
        return response_cycle_start(ctx) if conv.last_outbound_at is not None else None
    return utc(conv.created_at)


def deadline(
    policy: SlaPolicy, start: datetime, budget: timedelta, pauses: Sequence[Interval]
) -> datetime | None:
    """When `budget` of clock time since `start` is used up, skipping pauses; None while paused."""
    t, remaining = start, budget
    for p_start, p_end in sorted(pauses, key=lambda p: p[0]):
        if p_end is not None and p_end <= t:
            continue
        p_start = max(p_start, t)
        run = policy.measure(t, p_start)
        if run >= remaining:
            return policy.add(t, remaining)
        remaining -= run
        if p_end is None:
            return None
        t = p_end
    return policy.add(t, remaining)


def elapsed(policy: SlaPolicy, start: datetime, now: datetime, pauses: Sequence[Interval]) -> timedelta:
    """Clock time used since `start`, pauses excluded."""
    used = policy.measure(start, now)
    for p_start, p_end in pauses:
        a, b = max(p_start, start), min(p_end or now, now)
        if b > a:
            used -= policy.measure(a, b)
    return max(used, timedelta(0))


# --- clocks (for `inboxpilot sla` and tests) -------------------------------------------------

ClockState = Literal["ok", "at_risk", "breached", "paused"]


@dataclass(frozen=True)
class SlaClock:
    """One running SLA clock of one conversation."""

    conversation_id: int
    policy: str
    metric: Metric
    start: datetime
    target: timedelta
    used: timedelta
    due: datetime | None  # None while paused
    state: ClockState

    @property
    def left(self) -> timedelta:
        return self.target - self.used

    def to_dict(self) -> dict[str, Any]:
        return {
            "conversation_id": self.conversation_id,
            "policy": self.policy,
            "metric": self.metric,
            "state": self.state,
            "start": self.start.isoformat(),
            "due": None if self.due is None else self.due.isoformat(),
            "target_s": self.target.total_seconds(),
            "used_s": self.used.total_seconds(),
            "left_s": self.left.total_seconds(),
        }


def clocks(policies: Sequence[SlaPolicy], ctx: EvalContext) -> list[SlaClock]:
    """Every running clock of the conversation in `ctx`, under every policy that applies."""
    out = []
    for policy in policies:
        if not policy.applies_to(ctx):
            continue
        pauses = pauses_of(policy, ctx)
        for metric, target in policy.targets.items():
            start = cycle_start(metric, ctx)
            if start is None:
                continue
            used = elapsed(policy, start, ctx.now, pauses)
            due = deadline(policy, start, target, pauses)
            out.append(SlaClock(ctx.conv.id, policy.id, metric, start, target, used, due,
                                _state(policy, used, target, paused_now(policy, ctx.conv))))  # fmt: skip
    return out


def _state(policy: SlaPolicy, used: timedelta, target: timedelta, paused: bool) -> ClockState:
    if used >= target:
        return "breached"
    if paused:
        return "paused"
    return "at_risk" if used >= target * policy.at_risk else "ok"


def describe(clock: SlaClock) -> str:
    left = format_duration(abs(clock.left))
    return f"{left} over" if clock.left < timedelta(0) else f"{left} left"


def unknown_policy(name: str, known: Mapping[str, SlaPolicy]) -> str:
    names = sorted(known)
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"no SLA policy named {name!r} ({hint}defined: {', '.join(names) or 'none'})"
