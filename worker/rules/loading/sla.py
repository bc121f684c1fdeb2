"""The `sla_policies:` section: each policy validated with located errors and compiled into rules."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from pydantic import ValidationError

from worker.rules.actions import Action
from worker.rules.conditions.sla import SlaCondition
from worker.rules.loading.documents import Doc, State, mapping_items
from worker.rules.loading.parser import RuleParser
from worker.rules.loading.positions import Pos, child_pos, locate, to_plain
from worker.rules.loading.report import Report, unknown
from worker.rules.model import Rule, RuleHeader
from worker.rules.nodes import AllNode, Leaf, Node
from worker.rules.sla import (
    DEFAULT_AT_RISK,
    METRIC_ONCE,
    POLICY_ID_PATTERN,
    Metric,
    PolicyConfig,
    SlaPolicy,
    TierConfig,
)


def load_sla_policies(docs: Sequence[tuple[Doc, dict[str, tuple[Any, Pos]]]], state: State) -> None:
    """Validate every policy with located errors; add its compiled rules to `state.rules`."""
    for doc, sections in docs:
        report = Report(state.errors, doc.file)
        node, pos = sections.get("sla_policies", (None, (1, 1)))
        for name, raw, item_pos in mapping_items(node, pos, "sla_policies", report):
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
    try:
        config = PolicyConfig.model_validate(to_plain(raw))
    except ValidationError as exc:
        report.validation(exc, PolicyConfig, raw, pos, path)
        return None
    if not _calendars_known(config, raw, pos, report, state, path):
        return None
    if not config.targets():
        report.add(pos, path, "give at least one target: first_response, next_response or time_to_close")
        return None
    parser = RuleParser(report, state)
    applies = None
    if config.applies_to is not None:
        applies = parser.when(raw["applies_to"], f"{path}.applies_to", child_pos(raw, "applies_to", pos))
        if applies is None:
            return None
    shares = sorted(t.at for t in config.tiers if t.at < 1)
    policy = SlaPolicy(
        id=name,
        targets=config.targets(),
        calendar=state.calendars[config.calendar] if config.calendar else None,
        pause_stages=frozenset(config.pause.stages),
        applies=applies,
        at_risk=shares[0] if shares else DEFAULT_AT_RISK,
        description=config.description,
    )
    rules = _tier_rules(policy, config, raw, pos, report, parser, state, path)
    if rules is None:
        return None
    return _with_rule_ids(policy, rules), rules


def _calendars_known(config: PolicyConfig, raw: Any, pos: Any, report: Any, state: Any, path: str) -> bool:
    wanted: list[tuple[tuple[str | int, ...], str | None]] = [(("calendar",), config.calendar)]
    wanted += [(("tiers", i, "hours"), t.hours) for i, t in enumerate(config.tiers)]
    for loc, cal in wanted:
        if cal is not None and cal not in state.calendars:
            where = locate(raw, loc, pos)
            field_path = path + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)
            report.add(where, field_path, unknown("calendar", cal, state.calendars))
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
    rules: list[Rule] = []
    ok = True
    for i, tier in enumerate(config.tiers):
        tier_raw = raw["tiers"][i]
        tier_pos = child_pos(raw["tiers"], i, pos)
        then = parser.then(tier_raw["then"], child_pos(tier_raw, "then", tier_pos))
        if then is None:
            ok = False
            continue
        actions = tuple(a for a, _, _ in then)
        for metric in tier.metrics or list(policy.targets):
            if metric not in policy.targets:
                where = locate(tier_raw, ("metrics",), tier_pos)
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
    return replace(policy, rule_ids=tuple(r.id for r in rules))
