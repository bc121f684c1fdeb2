"""The static loop check beyond "an action that changes nothing" (that one is per action,
`Action.noop_given`): loops that only show across firings.

- **A rule that re-arms itself**: an assignment from a pool under `once: per_assignment`
  makes a new assignment, that is a new situation for the same rule; when its `when`
  still holds for the new owner (`owner: set`, or an owner list with pool members) the
  rule hands the conversation on again on every poll.
- **Two rules that undo each other**: A moves to stage 12 while `when` accepts stage 11,
  B moves back to 11 while `when` accepts 12, both under `once: per_stage_entry` (each
  move a new situation for the other); the same with assignments under `per_assignment`.

A rule is *paced*, so not reported, when it has `max_per_conversation` (the loop ends)
or a time condition among the conditions that must all hold (it waits between turns:
the return timer `owner_unresponsive`, `assigned_for`, ...). The run-time breaker
(`worker/state/breaker.py`) catches whatever this check cannot see.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from worker.rules.actions import Action, AssignAction, MoveAction
from worker.rules.conditions.record import OwnerCondition, StageCondition, _IdCondition
from worker.rules.model import Rule
from worker.rules.nodes import AllNode, AnyNode, Leaf, Node
from worker.rules.routing import Pool

# The slot an action changes -> the `once` whose situation that change renews.
RENEWED_BY = {"owner": "per_assignment", "stage": "per_stage_entry"}
SLOT_CONDITIONS: dict[str, type[_IdCondition]] = {"owner": OwnerCondition, "stage": StageCondition}


@dataclass(frozen=True)
class Loop:
    rule_id: str
    message: str


def conjuncts(node: Node) -> list[Leaf]:
    """Leaves that must all hold for the rule to match (not those under any/not)."""
    if isinstance(node, Leaf):
        return [node]
    if isinstance(node, AllNode) and not isinstance(node, AnyNode):
        return [leaf for child in node.children for leaf in conjuncts(child)]
    return []


def paced(rule: Rule) -> bool:
    return rule.header.max_per_conversation is not None or any(
        leaf.cond.time_bound for leaf in conjuncts(rule.when)
    )


def targets(action: Action, pools: Mapping[str, Pool]) -> tuple[str, frozenset[int]] | None:
    """The slot an action sets and the values it may set it to."""
    if isinstance(action, AssignAction):
        if action.user is not None:
            return "owner", frozenset({action.user})
        pool = pools.get(action.pool or "")
        return ("owner", frozenset(pool.members)) if pool is not None else None
    if isinstance(action, MoveAction):
        return "stage", frozenset({action.stage})
    return None


def accepts(rule: Rule, slot: str, values: Iterable[int]) -> frozenset[int]:
    """The values of `values` for which every condition of `rule` on `slot` holds."""
    kind = SLOT_CONDITIONS[slot]
    left = frozenset(values)
    for leaf in conjuncts(rule.when):
        cond = leaf.cond
        if not isinstance(cond, kind):
            continue
        if cond.set is False:
            return frozenset()
        if cond.set is None:
            left &= frozenset(cond.in_ or ())
    return left


def self_loops(rule: Rule, pools: Mapping[str, Pool]) -> list[str]:
    """Why `rule` would re-arm itself (one message per offending action)."""
    if rule.once != "per_assignment" or paced(rule):
        return []
    out = []
    for action in rule.then:
        if not isinstance(action, AssignAction) or action.pool is None:
            continue
        found = targets(action, pools)
        if found is not None and accepts(rule, "owner", found[1]):
            out.append(
                f"'{action.label()}' makes a new assignment, which is a new situation under "
                "'once: per_assignment', and 'when' still holds for the new owner: the rule would "
                "hand the conversation on at every poll (a loop). Add max_per_conversation, a time "
                "condition (owner_unresponsive, assigned_for) or an owner condition the pool's "
                "members do not meet"
            )
    return out


def pair_loops(rules: Sequence[Rule], pools: Mapping[str, Pool]) -> list[Loop]:
    """Pairs of rules whose changes re-arm each other (reported on both rules)."""
    sets: list[tuple[Rule, str, frozenset[int]]] = []
    for rule in rules:
        if not rule.enabled or paced(rule):
            continue
        for action in rule.then:
            found = targets(action, pools)
            if found is not None and RENEWED_BY[found[0]] == rule.once:
                sets.append((rule, *found))
    loops: list[Loop] = []
    for i, (a, slot, a_to) in enumerate(sets):
        for b, other_slot, b_to in sets[i + 1 :]:
            if a.id == b.id or slot != other_slot or a_to == b_to:
                continue
            if accepts(a, slot, b_to - a_to) and accepts(b, slot, a_to - b_to):
                what = "stage" if slot == "stage" else "owner"
                message = (
                    f"rules '{a.id}' and '{b.id}' undo each other's {what} changes: each one's change "
                    f"is a new situation under 'once: {a.once}' in which the other matches again (a "
                    "loop). Make their conditions exclusive, or add max_per_conversation or a time "
                    "condition to one of them"
                )
                loops.extend([Loop(a.id, message), Loop(b.id, message)])
    return loops
