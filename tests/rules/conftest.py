"""Helpers for rule tests: build rule sets from YAML text and conversations from keywords."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from worker.api.models import Conversation
from worker.rules import LoadResult, RuleSet, load_texts

NOW = datetime(2026, 3, 4, 10, 0, tzinfo=UTC)  # a Wednesday, 11:00 in Berlin

CALENDARS = """
calendars:
  support:
    timezone: Europe/Berlin
    hours:
      mon: ["09:00-12:00", "13:00-18:00"]
      tue: ["09:00-12:00", "13:00-18:00"]
      wed: ["09:00-12:00", "13:00-18:00"]
      thu: ["09:00-12:00", "13:00-18:00"]
      fri: ["09:00-12:00", "13:00-18:00"]
    holidays: {country: DE, subdivision: BE}
agents:
  - {id: 1, name: Ann, capacity: 2, calendar: support}
  - {id: 2, name: Bob, capacity: 2}
pools:
  front: {members: [1, 2], strategy: round_robin, fallback: {ai_assistant: 9}}
"""


def load(text: str, *, with_calendars: bool = True) -> LoadResult:
    sources = [("rules.yaml", textwrap.dedent(text))]
    if with_calendars:
        sources.insert(0, ("calendars.yaml", CALENDARS))
    return load_texts(sources)


def ruleset(text: str) -> RuleSet:
    result = load(text)
    assert result.ok, [e.format() for e in result.errors]
    return result.ruleset


def conv(**fields: Any) -> Conversation:
    base: dict[str, Any] = {"id": 1, "channel": "whatsapp", "status": "open"}
    base.update(fields)
    return Conversation.model_validate(base)


@pytest.fixture
def now() -> datetime:
    return NOW


@pytest.fixture
def load_yaml() -> Callable[..., LoadResult]:
    return load


@pytest.fixture
def make_ruleset() -> Callable[[str], RuleSet]:
    return ruleset


@pytest.fixture
def make_conv() -> Callable[..., Conversation]:
    return conv
