"""A rule and a rule set, compiled: what the loader produces and the evaluator runs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from worker.rules.actions import Action
from worker.rules.calendars import Calendar
from worker.rules.nodes import Node, Test
from worker.rules.routing import Pool, Roster

Once = Literal[
    "per_conversation",
    "per_inbound_message",
    "per_stage_entry",
    "per_assignment",
    "per_response_cycle",
    "per_team_reply",
]
RULE_ID_PATTERN = r"^[a-z0-9](?:[a-z0-9_-]{0,62}[a-z0-9])?$"


class RuleHeader(BaseModel):
    """The scalar part of a rule; `when` and `then` are parsed by the loader's registries."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    id: str = Field(
        pattern=RULE_ID_PATTERN,
        description="Stable slug, unique across all files (lowercase letters, digits, - and _)",
    )
    description: str = ""
    enabled: bool = True
    priority: int = Field(default=0, description="Higher wins when two rules conflict")
    once: Once = Field(default="per_conversation", description="What counts as the same situation")
    max_per_conversation: int | None = Field(default=None, ge=1)
    max_per_hour: int | None = Field(default=None, ge=1, description="Across all conversations")
    skip_team_started: bool = Field(default=False, description="Ignore conversations the team started")


@dataclass(frozen=True, eq=False)
class Rule:
    """A validated, compiled rule."""

    header: RuleHeader
    when: Node
    then: tuple[Action, ...]
    source: str  # "file:line" of the rule, for messages
    test: Test = field(repr=False)
    time_bound: bool = False
    needs_messages: bool = False
    needs_contact: bool = False

    @property
    def id(self) -> str:
        return self.header.id

    @property
    def priority(self) -> int:
        return self.header.priority

    @property
    def enabled(self) -> bool:
        return self.header.enabled

    @property
    def once(self) -> Once:
        return self.header.once


def _empty() -> Mapping[str, Any]:
    return MappingProxyType({})


@dataclass(frozen=True, eq=False)
class RuleSet:
    """Immutable: enabled rules by priority (desc) then id, plus calendars and the roster."""

    rules: tuple[Rule, ...] = ()
    all_rules: tuple[Rule, ...] = ()
    calendars: Mapping[str, Calendar] = field(default_factory=_empty)
    roster: Roster = field(default_factory=Roster)
    sla_policies: tuple[Any, ...] = ()
    fingerprint: str = ""
    files: tuple[str, ...] = ()

    @property
    def pools(self) -> Mapping[str, Pool]:
        return self.roster.pools

    @property
    def needs_messages(self) -> bool:
        return any(r.needs_messages for r in self.rules)

    @property
    def needs_contact(self) -> bool:
        return any(r.needs_contact for r in self.rules)

    @property
    def reads_customer_text(self) -> bool:
        """True when a rule reads the text of the customer's last message (`message_text`)."""
        return any(leaf.cond.key == "message_text" for r in self.rules for leaf in r.when.leaves())

    def get(self, rule_id: str) -> Rule | None:
        return next((r for r in self.all_rules if r.id == rule_id), None)
