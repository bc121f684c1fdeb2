"""One rule's `when` and `then`, and the rule itself, parsed with located errors."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pydantic import ValidationError
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from worker.rules.actions import ACTIONS, Action
from worker.rules.attachments import AttachmentError, resolve
from worker.rules.conditions import CONDITIONS
from worker.rules.errors import RuleError
from worker.rules.loading.documents import State
from worker.rules.loading.positions import Pos, child_pos, join, locate, to_plain
from worker.rules.loading.report import Report, unknown
from worker.rules.loops import conjuncts, pair_loops, self_loops
from worker.rules.model import Rule as Rule
from worker.rules.model import RuleHeader
from worker.rules.nodes import AllNode, AnyNode, Leaf, Node, NotNode
from worker.rules.routing import Roster
from worker.rules.sla import unknown_policy

COMBINATORS = ("all", "any", "not")


class RuleParser:
    """Parses one rule's `when` and `then`, reporting every problem it finds."""

    def __init__(self, report: Report, state: State) -> None:
        self.report, self.state = report, state

    def when(self, raw: Any, path: str, pos: Pos) -> Node | None:
        if isinstance(raw, CommentedSeq):
            if not raw:
                self.report.add(pos, path, "an empty condition list (give at least one condition)")
                return None
            items = [self.when(item, join(path, i), child_pos(raw, i, pos)) for i, item in enumerate(raw)]
            return AllNode([n for n in items if n], path) if all(items) else None
        if not isinstance(raw, CommentedMap) or not raw:
            self.report.add(pos, path, "expected conditions: a mapping like {status: open} or a list of them")
            return None
        nodes = [self.condition(raw, key, path, pos) for key in raw]
        if not all(nodes):
            return None
        return nodes[0] if len(nodes) == 1 else AllNode([n for n in nodes if n], path)

    def condition(self, parent: CommentedMap, key: Any, path: str, pos: Pos) -> Node | None:
        value, vpos, kpos = parent[key], child_pos(parent, key, pos), child_pos(parent, key, pos, at_key=True)
        here = join(path, str(key))
        if key in ("all", "any"):
            if not isinstance(value, CommentedSeq) or not value:
                self.report.add(vpos, here, f"'{key}' takes a non-empty list of conditions")
                return None
            kids = [self.when(item, join(here, i), child_pos(value, i, vpos)) for i, item in enumerate(value)]
            if not all(kids):
                return None
            return (AllNode if key == "all" else AnyNode)([k for k in kids if k], here)
        if key == "not":
            inner = self.when(value, here, vpos)
            return NotNode(inner, here) if inner else None
        if not isinstance(key, str) or key not in CONDITIONS:
            message = CONDITIONS.unknown_message(str(key))[:-1] + f"; or {', '.join(COMBINATORS)})"
            self.report.add(kpos, path, message)
            return None
        cls = CONDITIONS.get(key)
        try:
            cond = cls.model_validate(cls.expand_shorthand(to_plain(value)))
        except ValidationError as exc:
            self.report.validation(exc, cls, value, vpos, here)
            return None
        for field_name, name in cond.calendars_used():
            if name not in self.state.calendars:
                where = locate(value, (field_name,), vpos)
                self.report.add(
                    where, join(here, field_name), unknown("calendar", name, self.state.calendars)
                )
                return None
        cond.bind(self.state.calendars)
        state = self.state  # agents and pools load before rules
        agents, pools = MappingProxyType(state.agents), MappingProxyType(state.pools)
        cond.bind_roster(Roster(agents, pools, state.calendars))
        for field_name, name in cond.policies_used():
            if name not in self.state.sla:
                where = locate(value, (field_name,), vpos)
                self.report.add(where, join(here, field_name), unknown_policy(name, self.state.sla))
                return None
        cond.bind_policies(self.state.sla)
        return Leaf(cond, here)

    def then(self, raw: Any, pos: Pos) -> list[tuple[Action, str, Pos]] | None:
        if isinstance(raw, CommentedMap):
            raw_items: list[tuple[Any, Pos]] = [(raw, pos)]
        elif isinstance(raw, CommentedSeq) and raw:
            raw_items = [(item, child_pos(raw, i, pos)) for i, item in enumerate(raw)]
        else:
            self.report.add(pos, "then", "expected a non-empty list of actions like [{note: text}]")
            return None
        actions = [self.action(item, f"then[{i}]", ipos) for i, (item, ipos) in enumerate(raw_items)]
        if not all(actions):
            return None
        return [a for a in actions if a]

    def action(self, item: Any, path: str, pos: Pos) -> tuple[Action, str, Pos] | None:
        if isinstance(item, str):
            key, value, vpos, kpos = item, None, pos, pos
        elif isinstance(item, CommentedMap) and len(item) == 1:
            key = next(iter(item))
            value, vpos, kpos = item[key], child_pos(item, key, pos), child_pos(item, key, pos, at_key=True)
        else:
            self.report.add(
                pos, path, "each action is a one-key mapping like {note: text} or a name like unassign"
            )
            return None
        if not isinstance(key, str) or key not in ACTIONS:
            self.report.add(kpos, path, ACTIONS.unknown_message(str(key)))
            return None
        cls = ACTIONS.get(key)
        here = join(path, key)
        try:
            action = cls.model_validate(cls.expand_shorthand(to_plain(value)))
        except ValidationError as exc:
            self.report.validation(exc, cls, value, vpos, here)
            return None
        for field_name, name in action.pools_used():
            if name not in self.state.pools:
                where = locate(value, (field_name,), vpos)
                self.report.add(where, join(here, field_name), unknown("pool", name, self.state.pools))
                return None
        for field_name, ref in action.files_used():
            try:  # a file next to the rules: relative to the folder of the rule file
                resolve(Path(self.report.file).parent, ref)
            except AttachmentError as exc:
                self.report.add(locate(value, (field_name,), vpos), join(here, field_name), str(exc))
                return None
        return action, here, vpos


def check_loops(when: Node, actions: Sequence[tuple[Action, str, Pos]], report: Report) -> bool:
    ok = True
    for action, path, pos in actions:
        for leaf in conjuncts(when):
            if action.noop_given(leaf.cond):
                report.add(
                    pos,
                    path,
                    f"changes nothing while '{leaf.path}' ({leaf.label()}) holds, so the rule would match "
                    "again after firing (a loop): change the action or the condition",
                )
                ok = False
    return ok


def rule_id_of(raw: Any, index: int) -> str:
    rid = raw.get("id") if isinstance(raw, CommentedMap) else None
    return rid if isinstance(rid, str) and rid else f"#{index + 1}"


def load_rule(raw: Any, index: int, pos: Pos, report: Report, state: State) -> Rule | None:
    report = report.for_rule(rule_id_of(raw, index))
    if not isinstance(raw, CommentedMap):
        report.add(pos, "", "a rule is a mapping with id, when, then")
        return None
    header_raw = {k: to_plain(v) for k, v in raw.items() if k not in ("when", "then")}
    header: RuleHeader | None = None
    try:
        header = RuleHeader.model_validate(header_raw)
    except ValidationError as exc:
        report.validation(exc, RuleHeader, raw, pos, "")
    parser = RuleParser(report, state)
    when = then = None
    for key in ("when", "then"):
        if key not in raw:
            report.add(pos, "", f"missing required key {key!r}")
    if "when" in raw:
        when = parser.when(raw["when"], "when", child_pos(raw, "when", pos))
    if "then" in raw:
        then = parser.then(raw["then"], child_pos(raw, "then", pos))
    if header is None or when is None or then is None or not check_loops(when, then, report):
        return None
    leaves = [leaf.cond for leaf in when.leaves()]
    actions = tuple(a for a, _, _ in then)
    rule = Rule(
        header=header,
        when=when,
        then=actions,
        source=f"{report.file}:{pos[0]}",
        test=when.compile(),
        time_bound=any(c.time_bound for c in leaves),
        needs_messages=any(c.needs_messages for c in leaves),
        needs_contact=any(c.needs_contact for c in leaves) or any(a.needs_contact() for a in actions),
    )
    problems = self_loops(rule, state.pools)
    for problem in problems:
        report.add(child_pos(raw, "then", pos), "then", problem)
    return None if problems else rule


def check_pairs(state: State) -> None:
    """Rules that undo each other are load errors too (worker/rules/loops.py); both are dropped."""
    loops = pair_loops(state.rules, state.pools)
    for loop in loops:
        rule = next(r for r in state.rules if r.id == loop.rule_id)
        file, _, line = rule.source.rpartition(":")
        at = int(line) if line.isdigit() else 1
        state.errors.append(RuleError(file or rule.source, at, 1, rule.id, "then", loop.message))
    bad = {loop.rule_id for loop in loops}
    state.rules = [r for r in state.rules if r.id not in bad]
