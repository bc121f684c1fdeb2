"""The evaluator: rules + one conversation snapshot + `now` -> matches, reasons, due times.

Pure and deterministic: no I/O, no clock, no randomness. The hot path runs each
rule's precompiled predicate; reasons are built only for matches (and for every
rule when `explain=True`).

Firing keys and the situations `once` names are defined in `worker/rules/firing.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from worker.api.models import Contact, Conversation, Message
from worker.rules.actions import Action
from worker.rules.context import EvalContext, Pauses
from worker.rules.firing import firing_key_for
from worker.rules.model import Rule, RuleSet
from worker.rules.nodes import Reason


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the worker read about one conversation, and the SLA pauses it recorded for it.

    Built by one reader (`worker/scheduling/snapshots.py`) for the loop, the
    executor's re-check, `plan`, `explain` and `sla`, so all of them evaluate
    a rule on the same inputs.
    """

    conversation: Conversation
    messages: Sequence[Message] | None = None
    contact: Contact | None = None
    sla_pauses: Pauses = field(default_factory=dict)


class EvaluationState(Protocol):
    """What the evaluator cannot see in the record: how often rules have fired (for caps)."""

    def fired_count(self, rule_id: str, conversation_id: int) -> int: ...

    def fired_last_hour(self, rule_id: str) -> int: ...


class NoFirings:
    """The trivial state: nothing has fired yet."""

    def fired_count(self, rule_id: str, conversation_id: int) -> int:
        return 0

    def fired_last_hour(self, rule_id: str) -> int:
        return 0


@dataclass
class InMemoryState:
    """Counts kept in dicts (tests, backtests, `explain`)."""

    per_conversation: dict[tuple[str, int], int] = field(default_factory=dict)
    last_hour: dict[str, int] = field(default_factory=dict)

    def record(self, rule_id: str, conversation_id: int) -> None:
        key = (rule_id, conversation_id)
        self.per_conversation[key] = self.per_conversation.get(key, 0) + 1
        self.last_hour[rule_id] = self.last_hour.get(rule_id, 0) + 1

    def fired_count(self, rule_id: str, conversation_id: int) -> int:
        return self.per_conversation.get((rule_id, conversation_id), 0)

    def fired_last_hour(self, rule_id: str) -> int:
        return self.last_hour.get(rule_id, 0)


@dataclass(frozen=True, slots=True)
class Match:
    rule_id: str
    priority: int
    actions: tuple[Action, ...]
    firing_key: str
    reasons: tuple[Reason, ...]


@dataclass(frozen=True, slots=True)
class RuleResult:
    """One rule's verdict for `explain`: matched or not, why, what it would do, when next."""

    rule_id: str
    description: str
    matched: bool
    reasons: tuple[Reason, ...]
    actions: tuple[str, ...]
    next_due: datetime | None = None
    blocked: str | None = None  # why a matching rule does not fire (cap, team-started, conflict)


@dataclass(frozen=True, slots=True)
class Conflict:
    """Two matches want different values for one slot; the higher priority won."""

    slot: str
    winner: str
    loser: str
    winner_value: str
    loser_value: str


@dataclass(frozen=True)
class Evaluation:
    conversation_id: int
    now: datetime
    matches: tuple[Match, ...]
    results: tuple[RuleResult, ...]  # every rule when explain=True, else empty
    next_due: dict[str, datetime]
    conflicts: tuple[Conflict, ...]

    @property
    def earliest_due(self) -> datetime | None:
        return min(self.next_due.values(), default=None)


def _blocked(rule: Rule, ctx: EvalContext, state: EvaluationState) -> str | None:
    header = rule.header
    if header.skip_team_started and ctx.conv.initiated_by == "team":
        return "conversation started by the team (skip_team_started)"
    cap = header.max_per_conversation
    if cap is not None and state.fired_count(rule.id, ctx.conv.id) >= cap:
        return f"fired {cap} times on this conversation (max_per_conversation)"
    hourly = header.max_per_hour
    if hourly is not None and state.fired_last_hour(rule.id) >= hourly:
        return f"fired {hourly} times in the last hour (max_per_hour)"
    return None


def _due(rule: Rule, ctx: EvalContext) -> datetime | None:
    if not rule.time_bound:
        return None
    due = rule.when.due(ctx, ctx.now, True)
    return due if due is not None and due > ctx.now else None


def evaluate(
    ruleset: RuleSet,
    snapshot: Snapshot,
    now: datetime,
    state: EvaluationState | None = None,
    *,
    explain: bool = False,
    with_reasons: bool = True,
) -> Evaluation:
    """Match every enabled rule against one conversation at `now` (timezone-aware).

    `with_reasons=False` leaves `Match.reasons` empty: the poll loop does not need
    them, and building them is a third of the cost of a matching evaluation.
    """
    if now.tzinfo is None:
        raise ValueError("evaluate() needs a timezone-aware `now`")
    state = state or NoFirings()
    ctx = EvalContext(snapshot.conversation, now, snapshot.messages, snapshot.contact, snapshot.sla_pauses)
    matches: list[Match] = []
    results: list[RuleResult] = []
    next_due: dict[str, datetime] = {}
    blocked_by: dict[str, str] = {}
    for rule in ruleset.rules:
        matched = rule.test(ctx)
        blocked = _blocked(rule, ctx, state) if matched else None
        due = None if matched else _due(rule, ctx)
        if due is not None:
            next_due[rule.id] = due
        reasons: tuple[Reason, ...] = ()
        if (matched and not blocked and with_reasons) or explain:
            out: list[Reason] = []
            rule.when.explain(ctx, out)
            reasons = tuple(out)
        if matched and not blocked:
            matches.append(
                Match(rule.id, rule.priority, rule.then, firing_key_for(rule.id, rule.once, ctx), reasons)
            )
        if blocked:
            blocked_by[rule.id] = blocked
        if explain:
            results.append(_result(rule, matched, reasons, due))
    winners, conflicts = resolve_conflicts(matches)
    if explain:
        results = _mark_blocked(results, blocked_by, conflicts)
    return Evaluation(
        snapshot.conversation.id, now, tuple(winners), tuple(results), next_due, tuple(conflicts)
    )


def _result(rule: Rule, matched: bool, reasons: tuple[Reason, ...], due: datetime | None) -> RuleResult:
    labels = tuple(a.label() for a in rule.then)
    return RuleResult(rule.id, rule.header.description, matched, reasons, labels, due)


def _mark_blocked(
    results: list[RuleResult], blocked_by: dict[str, str], conflicts: Sequence[Conflict]
) -> list[RuleResult]:
    lost = {c.loser: f"lost a conflict over {c.slot} to '{c.winner}'" for c in conflicts}
    out = []
    for r in results:
        why = blocked_by.get(r.rule_id) or lost.get(r.rule_id)
        out.append(
            r
            if why is None
            else RuleResult(r.rule_id, r.description, r.matched, r.reasons, r.actions, r.next_due, why)
        )
    return out


def resolve_conflicts(matches: Sequence[Match]) -> tuple[list[Match], list[Conflict]]:
    """Higher priority (then lower id) wins a slot; a match that loses any slot does not fire."""
    ordered = sorted(matches, key=lambda m: (-m.priority, m.rule_id))
    claimed: dict[str, tuple[str, object]] = {}
    winners: list[Match] = []
    conflicts: list[Conflict] = []
    for match in ordered:
        lost = [
            Conflict(a.conflict_slot, claimed[a.conflict_slot][0], match.rule_id,
                     str(claimed[a.conflict_slot][1]), str(a.conflict_value()))
            for a in match.actions
            if a.conflict_slot in claimed and claimed[a.conflict_slot][1] != a.conflict_value()
        ]  # fmt: skip
        if lost:
            conflicts.extend(lost)
            continue
        for a in match.actions:
            if a.conflict_slot is not None:
                claimed.setdefault(a.conflict_slot, (match.rule_id, a.conflict_value()))
        winners.append(match)
    return winners, conflicts
