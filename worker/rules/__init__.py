"""The rule language: schema, loader with positions, registries, evaluator, explain.

Pure: no HTTP, Redis or dramatiq here. Records and a time in, decisions out.
"""

from __future__ import annotations

from worker.rules.actions import ACTIONS, Action, AssignAction
from worker.rules.calendars import (
    Calendar,
    add_business_time,
    business_seconds_between,
    business_time_between,
    is_open,
)
from worker.rules.conditions import CONDITIONS, Condition
from worker.rules.errors import RuleError, RulesInvalid
from worker.rules.evaluator import (
    Conflict,
    Evaluation,
    EvaluationState,
    InMemoryState,
    Match,
    RuleResult,
    Snapshot,
    evaluate,
)
from worker.rules.explain import format_explanation
from worker.rules.loader import LoadResult, load_rules, load_texts
from worker.rules.model import Rule, RuleSet
from worker.rules.nodes import Reason
from worker.rules.routing import Choice, Pool, Roster, choose_agent
from worker.rules.templates import render

__all__ = [
    "ACTIONS",
    "CONDITIONS",
    "Action",
    "AssignAction",
    "Calendar",
    "Choice",
    "Condition",
    "Conflict",
    "Evaluation",
    "EvaluationState",
    "InMemoryState",
    "LoadResult",
    "Match",
    "Pool",
    "Reason",
    "Roster",
    "Rule",
    "RuleError",
    "RuleResult",
    "RuleSet",
    "RulesInvalid",
    "Snapshot",
    "add_business_time",
    "business_seconds_between",
    "business_time_between",
    "choose_agent",
    "evaluate",
    "format_explanation",
    "is_open",
    "load_rules",
    "load_texts",
    "render",
]
