"""Plain words for what the worker did or would do, shared by `demo`, `plan` and `firings`.

A ledger item (one action of one firing) is stored with the step it came from;
these helpers turn that step, the rule behind it and its outcome into short
text an operator can read: `assign → Ana (pool frontline)`, `note "Handed on…"`,
`assigned conversation 14 to Ana`, `first response overdue by 3m`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from datetime import timedelta
from typing import Any

from worker.rules.actions import Action, AssignAction, tag_delta_words
from worker.rules.conditions.sla import SlaCondition
from worker.rules.conditions.timing import ElapsedCondition
from worker.rules.context import EvalContext
from worker.rules.firing import Step, action_index
from worker.rules.model import Rule, RuleSet
from worker.rules.nodes import AllNode, AnyNode, Leaf, Node

TEXT_CHARS = 40
# Units for rough durations, largest first: "1d2h", "3m", "45s".
_UNITS = (("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1))


def clip(text: str, limit: int = TEXT_CHARS) -> str:
    """One line of at most `limit` characters, cut with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def roughly(delta: timedelta) -> str:
    """A duration in its two largest units: 90061 s -> "1d1h", 200 s -> "3m20s"."""
    seconds = max(int(delta.total_seconds()), 0)
    for index, (unit, size) in enumerate(_UNITS):
        if seconds >= size:
            big, rest = divmod(seconds, size)
            text = f"{big}{unit}"
            if index + 1 < len(_UNITS):
                small_unit, small_size = _UNITS[index + 1]
                small = rest // small_size
                text += f"{small}{small_unit}" if small else ""
            return text
    return "0s"


def agent_name(ruleset: RuleSet, user_id: Any) -> str:
    """The roster's name for a user id, else "user <id>"."""
    try:
        agent = ruleset.roster.agents.get(int(user_id))
    except (TypeError, ValueError):
        agent = None
    return agent.name if agent is not None and agent.name else f"user {user_id}"


def rule_action(ruleset: RuleSet, rule_id: str, item_key: str) -> Action | None:
    """The rule action an item key (`<firing key>#<index>`) stands for, when the rule still has it."""
    rule = ruleset.get(rule_id)
    index = action_index(item_key)
    if rule is None or index >= len(rule.then):
        return None
    return rule.then[index]


def pool_words(ruleset: RuleSet, action: Action | None) -> str | None:
    """The pool behind an assign, e.g. "pool frontline, round robin"."""
    if not isinstance(action, AssignAction) or action.pool is None:
        return None
    pool = ruleset.pools.get(action.pool)
    strategy = f", {pool.strategy.replace('_', ' ')}" if pool is not None else ""
    return f"pool {action.pool}{strategy}"


# --- the planned change: `assign → Ana (pool frontline)` ----------------------------------------

BULK_WORDS: Mapping[str, Callable[[Mapping[str, Any], RuleSet], str]] = {
    "assign": lambda f, rs: f"assign → {agent_name(rs, f.get('owner_id'))}",
    "unassign": lambda f, rs: "unassign the owner",
    "assign_ai_assistant": lambda f, rs: f"assign → AI assistant {f.get('ai_assistant_id')}",
    "unassign_ai_assistant": lambda f, rs: "remove the AI assistant",
    "move": lambda f, rs: f"move → pipeline {f.get('pipeline_id')} stage {f.get('pipeline_stage_id')}",
    "update_status": lambda f, rs: "close" if f.get("status") == "closed" else f"status → {f.get('status')}",
}


def step_words(
    step: Step, ruleset: RuleSet, item_key: str = "", rule_id: str = "", *, text_chars: int = TEXT_CHARS
) -> str:
    """What one item of a step does, with its target or text."""
    if step.bulk is not None:
        fields = step.bulk.as_fields()
        describe = BULK_WORDS.get(step.bulk.action)
        text = describe(fields, ruleset) if describe else f"{step.bulk.action} {fields}"
        pool = pool_words(ruleset, rule_action(ruleset, rule_id, item_key))
        return f"{text} ({pool.split(',')[0]})" if pool else text  # the pool's name only
    if step.kind == "tags":
        return tag_delta_words(step.action.get("changes", {}).get(item_key, {}))
    return action_data_words(step.action, text_chars)


def action_data_words(action: Mapping[str, Any], text_chars: int = TEXT_CHARS) -> str:
    """A reply / note / automation step's action data as `note "…"`, `reply "…"`."""
    kind = str(action.get("type", "?"))
    if kind == "run_automation":
        return f"run automation {action.get('automation_id')}"
    file = f" + {action['attachment']}" if action.get("attachment") else ""
    if action.get("text"):
        return f'{kind} "{clip(str(action["text"]), text_chars)}"{file}'
    if action.get("predefined") is not None:
        return f'{kind} "{action["predefined"]}"{file}'
    return kind


# --- why a rule fired: `first response overdue by 3m`, `customer silent 1d2h` ---------------------


def positive_leaves(node: Node) -> Iterator[Leaf]:
    """The leaves that must hold for the rule to match (not those under a `not`)."""
    if isinstance(node, Leaf):
        yield node
    elif isinstance(node, AllNode) and not isinstance(node, AnyNode):  # any_of: maybe not this one
        for child in node.children:
            yield from positive_leaves(child)


def why_words(rule: Rule, ctx: EvalContext) -> list[str]:
    """The timing conditions that made `rule` fire, with the times they saw at `ctx.now`."""
    out = []
    for leaf in positive_leaves(rule.when):
        cond = leaf.cond
        if isinstance(cond, SlaCondition):
            out.append(_sla_words(cond, ctx))
        elif isinstance(cond, ElapsedCondition):
            start = cond.start(ctx)
            if start is not None:
                out.append(f"{_short_what(cond.what())} {roughly(ctx.now - start)}")
    return [text for text in out if text]


def _sla_words(cond: SlaCondition, ctx: EvalContext) -> str:
    metric = cond.metric.replace("_", " ")
    due = cond.deadline(ctx)
    if due is None:
        return f"{metric} {'target missed' if cond.elapsed_share >= 1 else 'target near'}"
    if cond.elapsed_share >= 1:
        return f"{metric} overdue by {roughly(ctx.now - due)}"
    # A warning tier: how long is left until the whole target is used.
    target = cond.model_copy(update={"elapsed_share": 1.0}).deadline(ctx)
    left = f", {roughly(target - ctx.now)} left" if target is not None and target > ctx.now else ""
    return f"{metric} {round(cond.elapsed_share * 100)}% used{left}"


SHORT_WHAT = {
    "customer silent since the team's reply (follow-up anchor)": "customer silent",
    "customer silent after the team's reply": "customer silent",
    "customer waiting for a reply": "customer waiting",
    "owner has not answered": "owner silent",
}


def _short_what(what: str) -> str:
    return SHORT_WHAT.get(what, what)


def firing_verb(rule: Rule) -> str | None:
    """The verb for SLA tiers ("escalated", "warned on"); None: the actions speak for themselves."""
    leaves = positive_leaves(rule.when)
    shares = [leaf.cond.elapsed_share for leaf in leaves if isinstance(leaf.cond, SlaCondition)]
    if not shares:
        return None
    return "escalated" if max(shares) >= 1 else "warned on"


FOLLOWUP_CONDITIONS = frozenset({"silent_after_reply", "silent_for"})


def is_followup(rule: Rule) -> bool:
    """A rule that acts on customer silence after the team's reply (a follow-up step)."""
    return any(leaf.cond.key in FOLLOWUP_CONDITIONS for leaf in positive_leaves(rule.when))
