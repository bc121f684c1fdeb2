"""Load rule files with positions: every problem becomes a located `RuleError`.

Stages, in order, across all files: YAML syntax, document shape, calendars,
agents, pools, SLA policies (compiled into rules, `worker/rules/sla.py`), then
rules one at a time. A broken rule is reported and the
others still load; `strict=True` raises `RulesInvalid` instead.

A folder loads its own `*.yaml`/`*.yml` files only (sorted by name); pass
`recursive=True` to include sub-folders (e.g. `rules/examples/`).
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

from worker.rules.actions import ACTIONS, Action
from worker.rules.calendars import Calendar, CalendarConfig
from worker.rules.conditions import CONDITIONS
from worker.rules.errors import RuleError, RulesInvalid
from worker.rules.model import Rule as Rule
from worker.rules.model import RuleHeader, RuleSet
from worker.rules.nodes import AllNode, AnyNode, Leaf, Node, NotNode
from worker.rules.routing import AgentConfig, Pool, PoolConfig, Roster

Pos = tuple[int, int]  # 1-based line, column
TOP_KEYS = ("rules", "calendars", "agents", "pools", "sla_policies")
COMBINATORS = ("all", "any", "not")


@dataclass(frozen=True)
class LoadResult:
    ruleset: RuleSet
    errors: tuple[RuleError, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.errors


# -- positions ---------------------------------------------------------------


def node_pos(node: Any, fallback: Pos = (1, 1)) -> Pos:
    lc = getattr(node, "lc", None)
    if lc is None or lc.line is None:
        return fallback
    return lc.line + 1, lc.col + 1


def child_pos(parent: Any, key: Any, fallback: Pos, *, at_key: bool = False) -> Pos:
    """Where a mapping value (or key) or a sequence item starts."""
    try:
        if isinstance(parent, CommentedMap):
            line, col = parent.lc.key(key) if at_key else parent.lc.value(key)
        elif isinstance(parent, CommentedSeq):
            line, col = parent.lc.item(key)
        else:
            return fallback
    except (KeyError, IndexError, TypeError, AttributeError):
        return fallback
    return line + 1, col + 1


def locate(node: Any, loc: Sequence[int | str], pos: Pos, *, at_key: bool = False) -> Pos:
    """Walk a pydantic error location down the YAML nodes as far as they go."""
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(node, CommentedMap) and part in node:
            pos = child_pos(node, part, pos, at_key=at_key and last)
            node = node[part]
        elif isinstance(node, CommentedSeq) and isinstance(part, int) and 0 <= part < len(node):
            pos = child_pos(node, part, pos)
            node = node[part]
        else:
            break
    return pos


def join(path: str, part: int | str) -> str:
    if isinstance(part, int):
        return f"{path}[{part}]"
    return f"{path}.{part}" if path else str(part)


def _plain_key(key: Any) -> Any:
    # YAML allows complex keys (`? [a, b]`); plain dicts need hashable ones.
    plain = to_plain(key)
    return plain if isinstance(plain, str | int | float | bool) or plain is None else str(plain)


def to_plain(node: Any) -> Any:
    """ruamel's round-trip types to plain Python for validation."""
    if isinstance(node, Mapping):
        return {_plain_key(k): to_plain(v) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [to_plain(v) for v in node]
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, str):
        return str(node)
    if isinstance(node, datetime | date):
        return node
    return str(node)


# -- error reporting ---------------------------------------------------------


class _Report:
    """Collects errors for one file and one rule (or top-level section)."""

    def __init__(self, errors: list[RuleError], file: str, rule_id: str | None = None) -> None:
        self.errors, self.file, self.rule_id = errors, file, rule_id
        self.count = 0

    def for_rule(self, rule_id: str | None) -> _Report:
        return _Report(self.errors, self.file, rule_id)

    def add(self, pos: Pos, path: str, message: str) -> None:
        self.count += 1
        self.errors.append(RuleError(self.file, pos[0], pos[1], self.rule_id, path, message))

    def validation(
        self, exc: ValidationError, model: type[BaseModel], node: Any, pos: Pos, path: str
    ) -> None:
        for err in exc.errors(include_url=False):
            loc = tuple(p for p in err["loc"] if isinstance(p, int | str))
            kind = err["type"]
            at_key = kind == "extra_forbidden"
            where = locate(node, loc, pos, at_key=at_key)
            field_path = path
            for part in loc[:-1] if kind in ("extra_forbidden", "missing") else loc:
                field_path = join(field_path, part)
            self.add(where, field_path, _message(err, model, loc))


def _allowed_keys(model: type[BaseModel], loc: Sequence[int | str]) -> list[str]:
    target: Any = model
    for part in loc[:-1]:
        info = getattr(target, "model_fields", {}).get(part) if isinstance(part, str) else None
        if info is None:
            by_alias = {f.alias: f for f in getattr(target, "model_fields", {}).values() if f.alias}
            info = by_alias.get(part) if isinstance(part, str) else None
        annotation = getattr(info, "annotation", None)
        candidates = [a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type)]
        target = next((a for a in candidates if issubclass(a, BaseModel)), None)
        if target is None:
            return []
    fields = getattr(target, "model_fields", {})
    return [f.alias or name for name, f in fields.items()]


def _message(err: Any, model: type[BaseModel], loc: Sequence[int | str]) -> str:
    kind, last = err["type"], (loc[-1] if loc else "")
    if kind == "extra_forbidden":
        allowed = _allowed_keys(model, loc)
        close = difflib.get_close_matches(str(last), allowed, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return f"unknown key {last!r} ({hint}allowed: {', '.join(allowed)})"
    if kind == "missing":
        fields = getattr(model, "model_fields", {}) if len(loc) == 1 else {}
        info = fields.get(last) or next((f for f in fields.values() if f.alias == last), None)
        about = f" ({info.description})" if info is not None and info.description else ""
        return f"missing required key {last!r}{about}"
    msg = str(err["msg"])
    if msg.startswith(("Value error, ", "Assertion failed, ")):
        return msg.split(", ", 1)[1]
    shown = repr(err.get("input"))
    return f"{msg} (got {shown[:60]})"


# -- stage 1: YAML -------------------------------------------------------------


@dataclass
class _Doc:
    file: str
    data: Any


def _parse_yaml(file: str, text: str, errors: list[RuleError]) -> _Doc | None:
    try:
        data = YAML(typ="rt", pure=True).load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        problem = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        errors.append(RuleError(file, line, col, None, "", f"YAML syntax error: {problem or exc}"))
        return None
    except Exception as exc:  # ruamel raises a few unmarked errors on odd input
        errors.append(RuleError(file, 1, 1, None, "", f"YAML error: {type(exc).__name__}: {exc}"))
        return None
    return _Doc(file, data)


# -- the load ------------------------------------------------------------------


@dataclass
class _State:
    errors: list[RuleError] = field(default_factory=list)
    calendars: dict[str, Calendar] = field(default_factory=dict)
    agents: dict[int, AgentConfig] = field(default_factory=dict)
    pools: dict[str, Pool] = field(default_factory=dict)
    rules: list[Rule] = field(default_factory=list)
    rule_sources: dict[str, str] = field(default_factory=dict)
    sla: dict[str, Any] = field(default_factory=dict)  # name -> worker.rules.sla.SlaPolicy


def _sections(doc: _Doc, report: _Report) -> dict[str, tuple[Any, Pos]]:
    """Split a document into its sections: a bare list is the rules."""
    data = doc.data
    if data is None:
        return {}
    if isinstance(data, CommentedSeq):
        return {"rules": (data, node_pos(data))}
    if not isinstance(data, CommentedMap):
        report.add(
            node_pos(data), "", f"a rule file holds a list of rules or a mapping with {', '.join(TOP_KEYS)}"
        )
        return {}
    out = {}
    for key in data:
        if key in TOP_KEYS:
            out[str(key)] = (data[key], child_pos(data, key, (1, 1)))
        else:
            close = difflib.get_close_matches(str(key), TOP_KEYS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            report.add(
                child_pos(data, key, (1, 1), at_key=True),
                "",
                f"unknown section {key!r} ({hint}allowed: {', '.join(TOP_KEYS)})",
            )
    return out


def _mapping_items(node: Any, pos: Pos, path: str, report: _Report) -> list[tuple[str, Any, Pos]]:
    if node is None:
        return []
    if not isinstance(node, CommentedMap):
        report.add(pos, path, "expected a mapping of name: settings")
        return []
    out = []
    for key in node:
        if not isinstance(key, str) or not key:
            report.add(child_pos(node, key, pos, at_key=True), path, f"{key!r} is not a name")
            continue
        out.append((key, node[key], child_pos(node, key, pos)))
    return out


def _list_items(node: Any, pos: Pos, path: str, report: _Report) -> list[tuple[int, Any, Pos]]:
    if node is None:
        return []
    if not isinstance(node, CommentedSeq):
        report.add(pos, path, "expected a list")
        return []
    return [(i, item, child_pos(node, i, pos)) for i, item in enumerate(node)]


def _load_calendars(docs: Sequence[tuple[_Doc, dict[str, tuple[Any, Pos]]]], state: _State) -> None:
    seen: dict[str, str] = {}
    for doc, sections in docs:
        report = _Report(state.errors, doc.file)
        node, pos = sections.get("calendars", (None, (1, 1)))
        for name, raw, item_pos in _mapping_items(node, pos, "calendars", report):
            path = f"calendars.{name}"
            if name in seen:
                report.add(item_pos, path, f"duplicate calendar name (first defined at {seen[name]})")
                continue
            seen[name] = f"{doc.file}:{item_pos[0]}"
            try:
                config = CalendarConfig.model_validate(to_plain(raw))
            except ValidationError as exc:
                report.validation(exc, CalendarConfig, raw, item_pos, path)
                continue
            state.calendars[name] = Calendar.from_config(name, config)


def _load_agents(docs: Sequence[tuple[_Doc, dict[str, tuple[Any, Pos]]]], state: _State) -> None:
    for doc, sections in docs:
        report = _Report(state.errors, doc.file)
        node, pos = sections.get("agents", (None, (1, 1)))
        for i, raw, item_pos in _list_items(node, pos, "agents", report):
            path = f"agents[{i}]"
            try:
                agent = AgentConfig.model_validate(to_plain(raw))
            except ValidationError as exc:
                report.validation(exc, AgentConfig, raw, item_pos, path)
                continue
            if agent.id in state.agents:
                report.add(item_pos, path, f"duplicate agent id {agent.id}")
                continue
            if agent.calendar and agent.calendar not in state.calendars:
                where = locate(raw, ("calendar",), item_pos)
                report.add(where, f"{path}.calendar", _unknown("calendar", agent.calendar, state.calendars))
                continue
            state.agents[agent.id] = agent


def _load_pools(docs: Sequence[tuple[_Doc, dict[str, tuple[Any, Pos]]]], state: _State) -> None:
    for doc, sections in docs:
        report = _Report(state.errors, doc.file)
        node, pos = sections.get("pools", (None, (1, 1)))
        for name, raw, item_pos in _mapping_items(node, pos, "pools", report):
            path = f"pools.{name}"
            if name in state.pools:
                report.add(item_pos, path, "duplicate pool name")
                continue
            try:
                config = PoolConfig.model_validate(to_plain(raw))
            except ValidationError as exc:
                report.validation(exc, PoolConfig, raw, item_pos, path)
                continue
            missing = [m for m in config.members if m not in state.agents]
            if missing:
                where = locate(raw, ("members",), item_pos)
                report.add(where, f"{path}.members", f"agents {missing} are not in the roster ('agents:')")
                continue
            state.pools[name] = Pool.from_config(name, config, state.agents)


def _unknown(kind: str, name: str, known: Iterable[str]) -> str:
    names = sorted(known)
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"no {kind} named {name!r} ({hint}defined: {', '.join(names) or 'none'})"


# -- rules -----------------------------------------------------------------------


class _RuleParser:
    """Parses one rule's `when` and `then`, reporting every problem it finds."""

    def __init__(self, report: _Report, state: _State) -> None:
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
                    where, join(here, field_name), _unknown("calendar", name, self.state.calendars)
                )
                return None
        cond.bind(self.state.calendars)
        state = self.state  # agents and pools load before rules
        agents, pools = MappingProxyType(state.agents), MappingProxyType(state.pools)
        cond.bind_roster(Roster(agents, pools, state.calendars))
        for field_name, name in cond.policies_used():
            if name not in self.state.sla:
                from worker.rules.sla import unknown_policy

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
                self.report.add(where, join(here, field_name), _unknown("pool", name, self.state.pools))
                return None
        return action, here, vpos


def _conjuncts(node: Node) -> list[Leaf]:
    """Leaves that must all hold for the rule to match (not those under any/not)."""
    if isinstance(node, Leaf):
        return [node]
    if isinstance(node, AllNode) and not isinstance(node, AnyNode):
        return [leaf for child in node.children for leaf in _conjuncts(child)]
    return []


def _check_loops(when: Node, actions: Sequence[tuple[Action, str, Pos]], report: _Report) -> bool:
    ok = True
    for action, path, pos in actions:
        for leaf in _conjuncts(when):
            if action.noop_given(leaf.cond):
                report.add(
                    pos,
                    path,
                    f"changes nothing while '{leaf.path}' ({leaf.label()}) holds, so the rule would match "
                    "again after firing (a loop): change the action or the condition",
                )
                ok = False
    return ok


def _rule_id(raw: Any, index: int) -> str:
    rid = raw.get("id") if isinstance(raw, CommentedMap) else None
    return rid if isinstance(rid, str) and rid else f"#{index + 1}"


def _load_rule(raw: Any, index: int, pos: Pos, report: _Report, state: _State) -> Rule | None:
    report = report.for_rule(_rule_id(raw, index))
    if not isinstance(raw, CommentedMap):
        report.add(pos, "", "a rule is a mapping with id, when, then")
        return None
    header_raw = {k: to_plain(v) for k, v in raw.items() if k not in ("when", "then")}
    header: RuleHeader | None = None
    try:
        header = RuleHeader.model_validate(header_raw)
    except ValidationError as exc:
        report.validation(exc, RuleHeader, raw, pos, "")
    parser = _RuleParser(report, state)
    when = then = None
    for key in ("when", "then"):
        if key not in raw:
            report.add(pos, "", f"missing required key {key!r}")
    if "when" in raw:
        when = parser.when(raw["when"], "when", child_pos(raw, "when", pos))
    if "then" in raw:
        then = parser.then(raw["then"], child_pos(raw, "then", pos))
    if header is None or when is None or then is None or not _check_loops(when, then, report):
        return None
    leaves = [leaf.cond for leaf in when.leaves()]
    actions = tuple(a for a, _, _ in then)
    return Rule(
        header=header,
        when=when,
        then=actions,
        source=f"{report.file}:{pos[0]}",
        test=when.compile(),
        time_bound=any(c.time_bound for c in leaves),
        needs_messages=any(c.needs_messages for c in leaves),
        needs_contact=any(c.needs_contact for c in leaves) or any(a.needs_contact() for a in actions),
    )


def _load_rules(docs: Sequence[tuple[_Doc, dict[str, tuple[Any, Pos]]]], state: _State) -> None:
    for doc, sections in docs:
        report = _Report(state.errors, doc.file)
        node, pos = sections.get("rules", (None, (1, 1)))
        for i, raw, item_pos in _list_items(node, pos, "rules", report):
            rule = _load_rule(raw, i, item_pos, report, state)
            if rule is None:
                continue
            if rule.id in state.rule_sources:
                where = locate(raw, ("id",), item_pos)
                first = state.rule_sources[rule.id]
                report.for_rule(rule.id).add(where, "id", f"duplicate rule id (first defined at {first})")
                continue
            state.rule_sources[rule.id] = rule.source
            state.rules.append(rule)


def _load_sla_policies(docs: Sequence[tuple[_Doc, dict[str, tuple[Any, Pos]]]], state: _State) -> None:
    from worker.rules.sla import load_sla_policies  # sla.py builds on this module's parser

    load_sla_policies(docs, state)


def _fingerprint(docs: Sequence[_Doc]) -> str:
    # Key order is the file's (mixed-type keys cannot be sorted); comments do not count.
    canon = json.dumps([to_plain(d.data) for d in docs], default=str)
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


def load_texts(sources: Sequence[tuple[str, str]], *, strict: bool = False) -> LoadResult:
    """Load (file name, YAML text) pairs as one rule set."""
    state = _State()
    docs = [d for d in (_parse_yaml(name, text, state.errors) for name, text in sources) if d]
    split = [(d, _sections(d, _Report(state.errors, d.file))) for d in docs]
    _load_calendars(split, state)
    _load_agents(split, state)
    _load_pools(split, state)
    _load_sla_policies(split, state)
    _load_rules(split, state)
    errors = tuple(state.errors)
    if strict and errors:
        raise RulesInvalid(errors)
    enabled = sorted((r for r in state.rules if r.enabled), key=lambda r: (-r.priority, r.id))
    ruleset = RuleSet(
        rules=tuple(enabled),
        all_rules=tuple(state.rules),
        calendars=MappingProxyType(dict(state.calendars)),
        roster=Roster(
            agents=MappingProxyType(dict(state.agents)),
            pools=MappingProxyType(dict(state.pools)),
            calendars=MappingProxyType(dict(state.calendars)),
        ),
        sla_policies=tuple(state.sla.values()),
        fingerprint=_fingerprint(docs),
        files=tuple(name for name, _ in sources),
    )
    return LoadResult(ruleset, errors)


def discover(paths: Iterable[str | Path], *, recursive: bool = False) -> tuple[list[Path], list[RuleError]]:
    """Rule files under `paths`: files as given, folders' *.yaml/*.yml sorted by name."""
    files: list[Path] = []
    errors: list[RuleError] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            found = sorted(p for ext in ("yaml", "yml") for p in path.glob(f"{pattern}.{ext}") if p.is_file())
            files.extend(p for p in found if p not in files)
        elif path.is_file():
            if path not in files:
                files.append(path)
        else:
            errors.append(RuleError(str(path), 1, 1, None, "", "no such file or folder"))
    return files, errors


def load_rules(paths: Iterable[str | Path], *, strict: bool = False, recursive: bool = False) -> LoadResult:
    """Load rule files and folders (folders non-recursively unless asked)."""
    files, errors = discover(paths, recursive=recursive)
    sources: list[tuple[str, str]] = []
    for path in files:
        try:
            sources.append((str(path), path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as exc:
            errors.append(RuleError(str(path), 1, 1, None, "", f"cannot read: {exc}"))
    result = load_texts(sources)
    all_errors = tuple(errors) + result.errors
    if strict and all_errors:
        raise RulesInvalid(all_errors)
    return LoadResult(result.ruleset, all_errors)
