"""The loaders of the top-level sections: calendars, agents, pools, rules."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from worker.rules.calendars import Calendar, CalendarConfig
from worker.rules.loading.documents import Doc, State, list_items, mapping_items
from worker.rules.loading.parser import load_rule
from worker.rules.loading.positions import Pos, locate, to_plain
from worker.rules.loading.report import Report, unknown
from worker.rules.model import Rule as Rule
from worker.rules.routing import AgentConfig, Pool, PoolConfig


def load_calendars(docs: Sequence[tuple[Doc, dict[str, tuple[Any, Pos]]]], state: State) -> None:
    seen: dict[str, str] = {}
    for doc, sections in docs:
        report = Report(state.errors, doc.file)
        node, pos = sections.get("calendars", (None, (1, 1)))
        for name, raw, item_pos in mapping_items(node, pos, "calendars", report):
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


def load_agents(docs: Sequence[tuple[Doc, dict[str, tuple[Any, Pos]]]], state: State) -> None:
    for doc, sections in docs:
        report = Report(state.errors, doc.file)
        node, pos = sections.get("agents", (None, (1, 1)))
        for i, raw, item_pos in list_items(node, pos, "agents", report):
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
                report.add(where, f"{path}.calendar", unknown("calendar", agent.calendar, state.calendars))
                continue
            state.agents[agent.id] = agent


def load_pools(docs: Sequence[tuple[Doc, dict[str, tuple[Any, Pos]]]], state: State) -> None:
    for doc, sections in docs:
        report = Report(state.errors, doc.file)
        node, pos = sections.get("pools", (None, (1, 1)))
        for name, raw, item_pos in mapping_items(node, pos, "pools", report):
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


def load_rule_list(docs: Sequence[tuple[Doc, dict[str, tuple[Any, Pos]]]], state: State) -> None:
    for doc, sections in docs:
        report = Report(state.errors, doc.file)
        node, pos = sections.get("rules", (None, (1, 1)))
        for i, raw, item_pos in list_items(node, pos, "rules", report):
            rule = load_rule(raw, i, item_pos, report, state)
            if rule is None:
                continue
            if rule.id in state.rule_sources:
                where = locate(raw, ("id",), item_pos)
                first = state.rule_sources[rule.id]
                report.for_rule(rule.id).add(where, "id", f"duplicate rule id (first defined at {first})")
                continue
            state.rule_sources[rule.id] = rule.source
            state.rules.append(rule)
