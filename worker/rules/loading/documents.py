"""Rule documents: a parsed file, its sections, and the state a load builds up."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

from ruamel.yaml.comments import CommentedMap, CommentedSeq

from worker.rules.calendars import Calendar
from worker.rules.errors import RuleError, unprintable
from worker.rules.loading.positions import Pos, child_pos, node_pos
from worker.rules.loading.report import Report
from worker.rules.model import Rule as Rule
from worker.rules.routing import AgentConfig, Pool

TOP_KEYS = ("rules", "calendars", "agents", "pools", "sla_policies")


@dataclass
class Doc:
    file: str
    data: Any


@dataclass
class State:
    errors: list[RuleError] = field(default_factory=list)
    calendars: dict[str, Calendar] = field(default_factory=dict)
    agents: dict[int, AgentConfig] = field(default_factory=dict)
    pools: dict[str, Pool] = field(default_factory=dict)
    rules: list[Rule] = field(default_factory=list)
    rule_sources: dict[str, str] = field(default_factory=dict)
    sla: dict[str, Any] = field(default_factory=dict)  # name -> worker.rules.sla.SlaPolicy


def sections(doc: Doc, report: Report) -> dict[str, tuple[Any, Pos]]:
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


def mapping_items(node: Any, pos: Pos, path: str, report: Report) -> list[tuple[str, Any, Pos]]:
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
        if unprintable(key):  # names are printed (plan, explain, logs): nothing that rewrites a terminal
            where = child_pos(node, key, pos, at_key=True)
            report.add(where, path, f"{key!r} holds control or invisible formatting characters")
            continue
        out.append((key, node[key], child_pos(node, key, pos)))
    return out


def list_items(node: Any, pos: Pos, path: str, report: Report) -> list[tuple[int, Any, Pos]]:
    if node is None:
        return []
    if not isinstance(node, CommentedSeq):
        report.add(pos, path, "expected a list")
        return []
    return [(i, item, child_pos(node, i, pos)) for i, item in enumerate(node)]
