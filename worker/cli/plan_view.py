"""What `inboxpilot plan` prints: planned firings grouped by rule, each action with its
target or text and what a send will really do, deferred actions grouped by reason.

Text fits a 120-column terminal; `--json` holds everything (every action with its
data, every deferred action with its reason).
"""

from __future__ import annotations

import re
import textwrap
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from worker.api.models import Conversation
from worker.cli.words import agent_name, clip, pool_words, rule_action, step_words
from worker.execution.messages import windowed
from worker.rules.actions import ReplyAction
from worker.rules.firing import Step, action_index, firing_of, situation_of, split_firing_key
from worker.rules.model import RuleSet

WIDTH = 120
TEXT_CHARS = 28  # a reply's or note's text, cut: the line must leave room for its target
SHOWN_IDS = 12
_ISO = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d):\d\d(?:\.\d+)?(?:\+00:00|Z)")
_AGENT = re.compile(r"agent (\d+)")
_DEFERRED = re.compile(r"^(.*#\d+): (.*)$", re.S)


@dataclass
class PlannedAction:
    key: str
    index: int
    do: str  # `assign → Ana (pool frontline)`, `reply "…" → template x (window closed)`
    send: str | None = None  # reply / note / template / skip, for message actions
    deferred: str | None = None  # why it is not planned now
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "index": self.index,
            "do": self.do,
            "send": self.send,
            "deferred": self.deferred,
            **self.data,
        }


@dataclass
class PlannedFiring:
    rule_id: str
    conversation_id: int
    firing_key: str
    actions: dict[int, PlannedAction] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule_id,
            "conversation": self.conversation_id,
            "firing_key": self.firing_key,
            "actions": [self.actions[i].to_dict() for i in sorted(self.actions)],
        }


def short_situation(firing_key: str) -> str:
    """The situation part of a firing key with minute-precision times: `as:101:2026-11-19T20:25Z`."""
    return _ISO.sub(r"\1Z", situation_of(firing_key))


def send_words(action: Mapping[str, Any], conversation: Conversation | None, now: datetime) -> str:
    """What a message action will really send now: reply, note, template <name> or skip (why)."""
    if action.get("type") != "reply":
        return str(action.get("type", "?"))
    reply = ReplyAction.model_validate({k: v for k, v in action.items() if k != "type"})
    if conversation is None:
        return "reply"
    plan = windowed(reply, conversation, "", now)
    if plan.skip is not None:
        return f"skip ({plan.skip.removeprefix('outside_window: ')})"
    if plan.message_type == "template":
        return f"template {reply.template} (window closed)"
    if plan.message_type == "note":
        return "note (window closed)"
    return "reply"


def collect(
    steps: Iterable[Step],
    deferred: Iterable[str],
    conversations: Mapping[int, Conversation],
    ruleset: RuleSet,
    now: datetime,
) -> list[PlannedFiring]:
    """The planned and deferred items, as firings (the actions of one firing together)."""
    firings: dict[str, PlannedFiring] = {}
    for step in steps:
        for item in step.items:
            action = _planned(
                step, item.key, item.rule_id, conversations.get(item.conversation_id), ruleset, now
            )
            _firing(firings, item.key, item.rule_id, item.conversation_id).actions[action.index] = action
    for line in deferred:
        match = _DEFERRED.match(line)
        if match is None:
            continue
        key, why = match.groups()
        rule_id, conversation_id = _parts(key)
        known = rule_action(ruleset, rule_id, key)
        pool = pool_words(ruleset, known)
        what = f"assign ({pool.split(',')[0]})" if pool else known.label() if known is not None else "action"
        action = PlannedAction(key, action_index(key), f"{what}: deferred", deferred=names(why, ruleset))
        _firing(firings, key, rule_id, conversation_id).actions[action.index] = action
    return sorted(firings.values(), key=lambda f: (f.rule_id, f.conversation_id, f.firing_key))


def _planned(
    step: Step, key: str, rule_id: str, conversation: Conversation | None, ruleset: RuleSet, now: datetime
) -> PlannedAction:
    do = step_words(step, ruleset, key, rule_id, text_chars=TEXT_CHARS)
    data: dict[str, Any] = {"kind": step.kind}
    send = None
    if step.bulk is not None:
        data["bulk"] = {"action": step.bulk.action, "fields": step.bulk.as_fields()}
    else:
        data["action"] = dict(step.action)
        if step.kind == "tags":  # a merged step holds every item's change: show this one's
            data["action"] = {"type": "tags", **step.action.get("changes", {}).get(key, {})}
        if step.kind == "message":
            send = send_words(step.action, conversation, now)
            if send.startswith(("template", "skip")):  # our text is not sent: say what happens
                do = f"{step.action.get('type')} → {send}"
            elif send != str(step.action.get("type")):
                do = f"{do} → {send}"
    return PlannedAction(key, action_index(key), do, send, None, data)


def _firing(firings: dict[str, PlannedFiring], key: str, rule_id: str, conversation_id: int) -> PlannedFiring:
    firing_key = firing_of(key)
    return firings.setdefault(firing_key, PlannedFiring(rule_id, conversation_id, firing_key))


def _parts(key: str) -> tuple[str, int]:
    rule_id, conversation_id = split_firing_key(key)
    return rule_id, int(conversation_id) if conversation_id.isdigit() else 0


def names(text: str, ruleset: RuleSet) -> str:
    """ "agent 101" -> "Ana" where the roster names the agent."""
    return _AGENT.sub(lambda m: agent_name(ruleset, m.group(1)).replace("user ", "agent "), text)


# --- text -------------------------------------------------------------------------------------


def render_text(headline: str, firings: Sequence[PlannedFiring]) -> list[str]:
    """Grouped by rule, one line per firing, then the deferred actions grouped by reason."""
    lines = [headline]
    by_rule: dict[str, list[PlannedFiring]] = defaultdict(list)
    for firing in firings:
        by_rule[firing.rule_id].append(firing)
    for rule_id, group in by_rule.items():
        lines.append("")
        lines.append(f"{rule_id} ({len(group)} firing{'s' if len(group) != 1 else ''})")
        lines.extend(_firing_line(firing) for firing in group)
    lines.extend(_deferred_lines(firings))
    return lines


def _firing_line(firing: PlannedFiring) -> str:
    prefix = f"  conversation {firing.conversation_id:<6} "
    key = f"  [{clip(short_situation(firing.firing_key), 34)}]"
    actions = "; ".join(firing.actions[i].do for i in sorted(firing.actions))
    return prefix + clip(actions, WIDTH - len(prefix) - len(key)) + key


def _deferred_lines(firings: Sequence[PlannedFiring]) -> list[str]:
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for firing in firings:
        for action in firing.actions.values():
            if action.deferred is not None:
                groups[(firing.rule_id, action.deferred)].append(firing.conversation_id)
    if not groups:
        return []
    lines = ["", "deferred (not planned now; retried on a later tick):"]
    for (rule_id, why), ids in groups.items():
        shown = ", ".join(str(i) for i in ids[:SHOWN_IDS])
        more = f" and {len(ids) - SHOWN_IDS} more" if len(ids) > SHOWN_IDS else ""
        lines.extend(textwrap.wrap(f"{rule_id}: {why}", WIDTH, initial_indent="  ", subsequent_indent="    "))
        lines.append(f"    conversation{'s' if len(ids) != 1 else ''} {shown}{more}")
    return lines
