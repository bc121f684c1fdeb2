"""Planning: rule matches -> steps the actors execute, each carrying its ledger keys.

A firing is an ordered list of actions on one conversation; each action gets its
own ledger key, `<firing key>#<action index>`. Action k + 1 runs only once action k
was applied (the ledger hands on, `worker/state/ledger.py`). The same bulk action
(same API action and fields) at the same position for many conversations becomes
one `/conversations-bulk-actions` call per 50 conversation ids; replies, notes and
automation runs are one step per conversation.

`plan` does no I/O: a pool's answer comes from the resolver, which works on what
was read before planning (`worker/scheduling/router.py`).

Turning an action type into a step is a registered function (`planner(key)`),
so a new action type is one function here, not an edit to an `if` chain. Step
kinds that can share one step across firings (tag changes: one re-read for up to
50 conversations, one `PATCH` per conversation) register a `merger(kind)`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from worker.api.models import Conversation
from worker.api.services import MAX_BULK_IDS
from worker.rules.actions import (
    Action,
    AssignAction,
    AssignAiAssistantAction,
    MoveAction,
    RunAutomationAction,
    SetStatusAction,
    TagAction,
    UntagAction,
)
from worker.rules.evaluator import Match
from worker.rules.firing import BulkChange, Item, Step, group_steps, item_key
from worker.rules.registry import Registry
from worker.rules.routing import Choice, waiting_order


class PoolResolver(Protocol):
    def choose(self, pool: str, conversation: Conversation, *, exclude: Collection[int] = ()) -> Choice: ...


@dataclass
class PlanContext:
    conversations: Mapping[int, Conversation]
    resolver: PoolResolver | None = None
    deferred: list[tuple[Item, str]] = field(default_factory=list)  # not planned now, and why


# A planner turns one action into a bulk change, a per-conversation step, or None (deferred).
Planned = BulkChange | Step | None
PlannerFn = Callable[[Action, Item, PlanContext], Planned]
PLANNERS: Registry[PlannerFn] = Registry("planner")  # keyed by the action's YAML key, like ACTIONS
planner = PLANNERS.register


def _change(action: str, **fields: Any) -> BulkChange:
    return BulkChange(action, tuple(sorted(fields.items())))


@planner("assign")
def _assign(action: Action, item: Item, ctx: PlanContext) -> Planned:
    assert isinstance(action, AssignAction)
    if action.user is not None:
        return _change("assign", owner_id=action.user)
    if ctx.resolver is None or action.pool is None:
        ctx.deferred.append((item, "no pool resolver"))
        return None
    conversation = ctx.conversations[item.conversation_id]
    current = conversation.owner_id
    exclude = (current,) if action.exclude_current and current is not None else ()
    choice = ctx.resolver.choose(action.pool, conversation, exclude=exclude)
    if choice.agent_id is not None:
        return _change("assign", owner_id=choice.agent_id)
    fallback = choice.fallback
    if fallback is not None and fallback.ai_assistant is not None:
        return _change("assign_ai_assistant", ai_assistant_id=fallback.ai_assistant)
    if fallback is not None and fallback.stage is not None:
        return _change("move", pipeline_id=fallback.stage.pipeline, pipeline_stage_id=fallback.stage.stage)
    # Nobody available and no fallback: leave it unclaimed so a later tick retries.
    ctx.deferred.append((item, f"pool {action.pool!r}: nobody available ({'; '.join(choice.skipped)})"))
    return None


@planner("unassign")
def _unassign(action: Action, item: Item, ctx: PlanContext) -> Planned:
    return _change("unassign")


@planner("assign_ai_assistant")
def _assign_ai(action: Action, item: Item, ctx: PlanContext) -> Planned:
    assert isinstance(action, AssignAiAssistantAction)
    return _change("assign_ai_assistant", ai_assistant_id=action.id)


@planner("unassign_ai_assistant")
def _unassign_ai(action: Action, item: Item, ctx: PlanContext) -> Planned:
    return _change("unassign_ai_assistant")


@planner("move")
def _move(action: Action, item: Item, ctx: PlanContext) -> Planned:
    assert isinstance(action, MoveAction)
    return _change("move", pipeline_id=action.pipeline, pipeline_stage_id=action.stage)


@planner("set_status")
def _set_status(action: Action, item: Item, ctx: PlanContext) -> Planned:
    assert isinstance(action, SetStatusAction)
    return _change("update_status", status=action.status)


@planner("reply")
@planner("note")
def _message(action: Action, item: Item, ctx: PlanContext) -> Planned:
    return Step("message", (item,), action=action_data(action))


@planner("run_automation")
def _automation(action: Action, item: Item, ctx: PlanContext) -> Planned:
    assert isinstance(action, RunAutomationAction)
    return Step("automation", (item,), action=action_data(action))


@planner("tag")
@planner("untag")
def _tags(action: Action, item: Item, ctx: PlanContext) -> Planned:
    assert isinstance(action, TagAction | UntagAction)
    return Step("tags", (item,), action={"type": "tags", "changes": {item.key: action.delta()}})


# A merger turns the steps of one kind planned in a tick into fewer, larger steps.
MergerFn = Callable[[list[Step]], list[Step]]
MERGERS: Registry[MergerFn] = Registry("step merger")  # keyed by step kind
merger = MERGERS.register


@merger("tags")
def _merge_tags(steps: list[Step]) -> list[Step]:
    """Tag changes of a tick: one step per 50 items, each item's change kept under its key."""
    items = [item for step in steps for item in step.items]
    changes = {key: delta for step in steps for key, delta in step.action["changes"].items()}
    return [
        Step("tags", tuple(chunk), action={"type": "tags", "changes": {i.key: changes[i.key] for i in chunk}})
        for chunk in chunks(items, MAX_BULK_IDS)
    ]


def merge(steps: list[Step]) -> list[Step]:
    """Steps with the kinds that have a merger merged; each merged group sits where its first step was."""
    out: list[Step] = []
    placed: set[str] = set()
    for step in steps:
        fn = MERGERS.find(step.kind)
        if fn is None:
            out.append(step)
        elif step.kind not in placed:
            placed.add(step.kind)
            out.extend(fn([s for s in steps if s.kind == step.kind]))
    return out


def action_data(action: Action) -> dict[str, Any]:
    """An action as JSON-able data with its type, for queue messages and the ledger."""
    return {"type": action.key, **action.model_dump(mode="json", exclude_none=True)}


@dataclass(frozen=True)
class PlannedFiring:
    """One firing as planned: one single-item step per action, in the rule's order."""

    rule_id: str
    conversation_id: int
    firing_key: str
    steps: tuple[Step, ...]
    pools: tuple[str | None, ...]  # the pool each action asked, for assignments from a pool


def plan(matches: Iterable[tuple[int, Match]], ctx: PlanContext) -> list[PlannedFiring]:
    """Turn (conversation id, match) pairs into firings, oldest waiting conversation first
    (pools hand their free places to those who waited longest).

    A firing one of whose actions must wait (nobody available) is not planned at all:
    its later actions must never run without it (`ctx.deferred` says why)."""
    firings: list[PlannedFiring] = []
    ordered = sorted(matches, key=lambda pair: waiting_order(ctx.conversations.get(pair[0])))
    for conversation_id, match in ordered:
        steps: list[Step] = []
        for index, action in enumerate(match.actions):
            item = Item(item_key(match.firing_key, index), match.rule_id, conversation_id)
            planned = PLANNERS.get(action.key)(action, item, ctx)
            if planned is None:
                break
            steps.append(Step("bulk", (item,), bulk=planned) if isinstance(planned, BulkChange) else planned)
        if len(steps) == len(match.actions):
            pools = tuple(a.pool if isinstance(a, AssignAction) else None for a in match.actions)
            firings.append(
                PlannedFiring(match.rule_id, conversation_id, match.firing_key, tuple(steps), pools)
            )
    return firings


def pools_asked(matches: Iterable[Match]) -> set[str]:
    """The pools the matches' assignments ask (what routing must read before planning)."""
    return {a.pool for m in matches for a in m.actions if isinstance(a, AssignAction) and a.pool}


def first_steps(firings: Iterable[PlannedFiring]) -> list[Step]:
    """What a tick queues: each firing's first action, bulk changes grouped per 50 ids."""
    return group_messages(merge(group_steps((f.steps[0] for f in firings if f.steps), MAX_BULK_IDS)))


def all_steps(firings: Sequence[PlannedFiring]) -> list[Step]:
    """Every action, position by position (what a dry run shows): position k of every
    firing, grouped, before position k + 1."""
    depth = max((len(f.steps) for f in firings), default=0)
    out: list[Step] = []
    for k in range(depth):
        position = group_steps((f.steps[k] for f in firings if len(f.steps) > k), MAX_BULK_IDS)
        out.extend(group_messages(merge(position)))
    return out


def group_messages(steps: Sequence[Step]) -> list[Step]:
    """Message steps with the same action joined, up to 50 items a step, where the first was.

    The executor reads a step's conversations and messages in batches of 50, so a
    step of k replies costs k sends plus about 2·ceil(k/50) reads instead of 3k calls.
    """
    slots: list[Step | str] = []
    groups: dict[str, list[Item]] = {}
    first: dict[str, Step] = {}
    for step in steps:
        if step.kind != "message":
            slots.append(step)
            continue
        key = json.dumps(step.action, sort_keys=True, default=str)
        if key not in groups:
            groups[key], first[key] = [], step
            slots.append(key)
        groups[key].extend(step.items)
    out: list[Step] = []
    for slot in slots:
        if isinstance(slot, Step):
            out.append(slot)
            continue
        out.extend(replace(first[slot], items=tuple(c)) for c in chunks(groups[slot], MAX_BULK_IDS))
    return out


def chunks(items: Sequence[Item], size: int) -> Iterable[Sequence[Item]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
