"""SLA policies: the `sla_policies:` section, its compilation into rules, and SLA clocks (pure).

A policy selects conversations (`applies_to`, any conditions), sets targets for
up to three metrics, counts them in business time (`calendar`) or wall time, and
names the stages/statuses that pause the clock. Each tier x metric compiles into
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
Redis (`worker/state/sla_pauses.py`) and attaches to the conversation as the extra
field ``inboxpilot_sla_pauses`` before evaluating; `update_pauses` is the one
pure function both use. Without it (``explain``, a backtest) only the current
pause is honoured, so a deadline can come early only by prior pause time the
worker never saw. Limits: a pause that starts and ends between two polls is not
seen; a pause by status starts when the worker first sees it (the record has no
status timestamp); a pause ends at the new ``stage_entered_at`` (exact) or, for
a status, at the time the worker sees it end.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from worker.api.models import Conversation
from worker.rules.actions import Action
from worker.rules.calendars import Calendar, add_business_time, business_time_between
from worker.rules.context import EvalContext, utc
from worker.rules.cycles import response_cycle_start
from worker.rules.durations import Duration, format_duration
from worker.rules.model import Once, Rule, RuleHeader
from worker.rules.nodes import AllNode, Leaf, Node

Metric = Literal["first_response", "next_response", "time_to_close"]
METRICS: tuple[Metric, ...] = ("first_response", "next_response", "time_to_close")
METRIC_ONCE: dict[Metric, Once] = {
    "first_response": "per_conversation",
    "next_response": "per_response_cycle",
    "time_to_close": "per_conversation",
}
POLICY_ID_PATTERN = r"^[a-z0-9](?:[a-z0-9_-]{0,30}[a-z0-9])?$"
PAUSES_FIELD = "inboxpilot_sla_pauses"
# Shares above this (and below 1) count a clock as "at risk" when no tier says otherwise.
DEFAULT_AT_RISK = 0.8
Interval = tuple[datetime, datetime | None]  # a pause: start, end (None: still paused)
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
    statuses: list[str] = Field(default_factory=list, description="Statuses that pause the clock")


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
    pause_statuses: frozenset[str] = frozenset()
    applies: Node | None = None
    at_risk: float = DEFAULT_AT_RISK
    description: str = ""
    rule_ids: tuple[str, ...] = field(default=())

    @property
    def pauses(self) -> bool:
        return bool(self.pause_stages or self.pause_statuses)

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
    return conv.pipeline_stage_id in policy.pause_stages or conv.status in policy.pause_statuses


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
    """The pauses the worker recorded (attached to the record), brought up to `ctx.now`."""
    recorded = getattr(ctx.conv, PAUSES_FIELD, None)
    prior = recorded.get(policy.id, []) if isinstance(recorded, Mapping) else []
    return update_pauses(policy, ctx.conv, prior, ctx.now)


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


# --- loading: the `sla_policies:` section --------------------------------------------------------


def load_sla_policies(docs: Sequence[tuple[Any, dict[str, tuple[Any, Any]]]], state: Any) -> None:
    """Validate every policy with located errors; add its compiled rules to `state.rules`."""
    from worker.rules import loader as ld

    for doc, sections in docs:
        report = ld._Report(state.errors, doc.file)
        node, pos = sections.get("sla_policies", (None, (1, 1)))
        for name, raw, item_pos in ld._mapping_items(node, pos, "sla_policies", report):
            here = report.for_rule(f"sla:{name}")
            path = f"sla_policies.{name}"
            if not re.match(POLICY_ID_PATTERN, name):
                here.add(item_pos, path, "a policy name is a slug of up to 32 characters (a-z, 0-9, - and _)")
                continue
            if name in state.sla:
                here.add(item_pos, path, "duplicate SLA policy name")
                continue
            compiled = _compile(name, raw, item_pos, here, state, path)
            if compiled is None:
                continue
            policy, rules = compiled
            clash = next((r for r in rules if r.id in state.rule_sources), None)
            if clash is not None:
                first = state.rule_sources[clash.id]
                here.add(item_pos, path, f"two tiers compile to rule {clash.id!r} (first at {first})")
                continue
            state.sla[name] = policy
            for rule in rules:
                state.rule_sources[rule.id] = rule.source
                state.rules.append(rule)


def _compile(
    name: str, raw: Any, pos: Any, report: Any, state: Any, path: str
) -> tuple[SlaPolicy, list[Rule]] | None:
    from worker.rules import loader as ld

    try:
        config = PolicyConfig.model_validate(ld.to_plain(raw))
    except ValidationError as exc:
        report.validation(exc, PolicyConfig, raw, pos, path)
        return None
    if not _calendars_known(config, raw, pos, report, state, path):
        return None
    if not config.targets():
        report.add(pos, path, "give at least one target: first_response, next_response or time_to_close")
        return None
    parser = ld._RuleParser(report, state)
    applies = None
    if config.applies_to is not None:
        applies = parser.when(raw["applies_to"], f"{path}.applies_to", ld.child_pos(raw, "applies_to", pos))
        if applies is None:
            return None
    shares = sorted(t.at for t in config.tiers if t.at < 1)
    policy = SlaPolicy(
        id=name,
        targets=config.targets(),
        calendar=state.calendars[config.calendar] if config.calendar else None,
        pause_stages=frozenset(config.pause.stages),
        pause_statuses=frozenset(config.pause.statuses),
        applies=applies,
        at_risk=shares[0] if shares else DEFAULT_AT_RISK,
        description=config.description,
    )
    rules = _tier_rules(policy, config, raw, pos, report, parser, state, path)
    if rules is None:
        return None
    return _with_rule_ids(policy, rules), rules


def _calendars_known(config: PolicyConfig, raw: Any, pos: Any, report: Any, state: Any, path: str) -> bool:
    from worker.rules import loader as ld

    wanted: list[tuple[tuple[str | int, ...], str | None]] = [(("calendar",), config.calendar)]
    wanted += [(("tiers", i, "hours"), t.hours) for i, t in enumerate(config.tiers)]
    for loc, cal in wanted:
        if cal is not None and cal not in state.calendars:
            where = ld.locate(raw, loc, pos)
            field_path = path + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)
            report.add(where, field_path, ld._unknown("calendar", cal, state.calendars))
            return False
    return True


def _tier_rules(
    policy: SlaPolicy,
    config: PolicyConfig,
    raw: Any,
    pos: Any,
    report: Any,
    parser: Any,
    state: Any,
    path: str,
) -> list[Rule] | None:
    from worker.rules import loader as ld
    from worker.rules.conditions.sla import SlaCondition

    rules: list[Rule] = []
    ok = True
    for i, tier in enumerate(config.tiers):
        tier_raw = raw["tiers"][i]
        tier_pos = ld.child_pos(raw["tiers"], i, pos)
        then = parser.then(tier_raw["then"], ld.child_pos(tier_raw, "then", tier_pos))
        if then is None:
            ok = False
            continue
        actions = tuple(a for a, _, _ in then)
        for metric in tier.metrics or list(policy.targets):
            if metric not in policy.targets:
                where = ld.locate(tier_raw, ("metrics",), tier_pos)
                report.add(where, f"{path}.tiers[{i}].metrics", f"the policy sets no {metric} target")
                ok = False
                continue
            hours = None if tier.at_night else (tier.hours or config.calendar)
            cond = SlaCondition.model_validate(
                {"policy": policy.id, "metric": metric, "elapsed_share": tier.at, "hours": hours}
            )
            cond.bind(state.calendars)
            cond.bind_policies({policy.id: policy})
            rules.append(
                _rule(policy, config, tier, metric, cond, actions, f"{report.file}:{tier_pos[0]}", path)
            )
    return rules if ok else None


def _rule(
    policy: SlaPolicy,
    config: PolicyConfig,
    tier: TierConfig,
    metric: Metric,
    cond: Any,
    actions: tuple[Action, ...],
    source: str,
    path: str,
) -> Rule:
    percent = round(tier.at * 100)
    rule_id = f"sla-{policy.id}-{metric.replace('_', '-')}-{percent}"
    leaves: list[Node] = [] if policy.applies is None else [policy.applies]
    leaves.append(Leaf(cond, f"{path}.{metric}"))
    when = leaves[0] if len(leaves) == 1 else AllNode(leaves, path)
    label = "breached" if tier.at >= 1 else f"{percent}% used"
    header = RuleHeader(
        id=rule_id,
        description=f"SLA {policy.id}: {metric.replace('_', ' ')} {label}",
        enabled=config.enabled,
        priority=tier.priority if tier.priority is not None else config.priority + percent // 10,
        once=METRIC_ONCE[metric],
    )
    conds = [leaf.cond for leaf in when.leaves()]
    return Rule(
        header=header,
        when=when,
        then=actions,
        source=source,
        test=when.compile(),
        time_bound=True,
        needs_messages=any(c.needs_messages for c in conds),
        needs_contact=any(c.needs_contact for c in conds) or any(a.needs_contact() for a in actions),
    )


def _with_rule_ids(policy: SlaPolicy, rules: Sequence[Rule]) -> SlaPolicy:
    from dataclasses import replace

    return replace(policy, rule_ids=tuple(r.id for r in rules))


def unknown_policy(name: str, known: Mapping[str, SlaPolicy]) -> str:
    names = sorted(known)
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"no SLA policy named {name!r} ({hint}defined: {', '.join(names) or 'none'})"
