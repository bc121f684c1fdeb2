"""Action types: what a matching rule asks for. The evaluator returns them as data;
the planner resolves pools and predefined messages and the actors perform them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from worker.rules.conditions.base import Condition, as_list, listing
from worker.rules.conditions.record import (
    AiAssistantCondition,
    OwnerCondition,
    StageCondition,
    StatusCondition,
    TagsCondition,
)
from worker.rules.registry import Registry
from worker.rules.templates import check_template, uses_contact


class Action(BaseModel):
    """Base of every action type; subclasses are the config schema."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=True)

    key: ClassVar[str] = ""
    shorthand: ClassVar[str | None] = None
    # Actions that set the same slot to different values conflict (priority decides).
    conflict_slot: ClassVar[str | None] = None

    @classmethod
    def expand_shorthand(cls, raw: Any) -> Any:
        if raw is None:
            return {}
        if cls.shorthand is None or isinstance(raw, Mapping):
            return raw
        return {cls.shorthand: raw}

    def label(self) -> str:
        raise NotImplementedError

    def conflict_value(self) -> object:
        return None

    def pools_used(self) -> Iterable[tuple[str, str]]:
        return ()

    def needs_contact(self) -> bool:
        return False

    def files_used(self) -> Iterable[tuple[str, str]]:
        """(field, reference) of each attachment, checked against the rules folder at load."""
        return ()

    def noop_given(self, cond: Condition) -> bool:
        """True when `cond` holding means this action changes nothing, so the rule matches again."""
        return False


ACTIONS: Registry[type[Action]] = Registry("action")


@ACTIONS.register("assign")
class AssignAction(Action):
    """Assign to a user, or to a routing pool the planner resolves."""

    key = "assign"
    conflict_slot = "owner"
    user: int | None = Field(default=None, description="User id")
    pool: str | None = Field(default=None, min_length=1, description="Routing pool name")
    exclude_current: bool = Field(
        default=False, description="Hand on: pick anyone in the pool but the current owner"
    )

    @classmethod
    def expand_shorthand(cls, raw: Any) -> Any:
        if isinstance(raw, int) and not isinstance(raw, bool):
            return {"user": raw}
        return super().expand_shorthand(raw)

    @model_validator(mode="after")
    def _one(self) -> AssignAction:
        if (self.user is None) == (self.pool is None):
            raise ValueError("give exactly one of 'user' (an id) or 'pool' (a pool name)")
        if self.exclude_current and self.pool is None:
            raise ValueError("'exclude_current' needs 'pool' (the pool to hand on to)")
        return self

    def label(self) -> str:
        if self.user is not None:
            return f"assign to user {self.user}"
        tail = " (not the current owner)" if self.exclude_current else ""
        return f"assign from pool {self.pool}{tail}"

    def conflict_value(self) -> object:
        return ("user", self.user) if self.user is not None else ("pool", self.pool)

    def pools_used(self) -> Iterable[tuple[str, str]]:
        return [("pool", self.pool)] if self.pool else []

    def noop_given(self, cond: Condition) -> bool:
        return isinstance(cond, OwnerCondition) and self.user is not None and cond.in_ == [self.user]


@ACTIONS.register("unassign")
class UnassignAction(Action):
    key = "unassign"
    conflict_slot = "owner"

    def label(self) -> str:
        return "unassign the owner"

    def conflict_value(self) -> object:
        return ("user", None)

    def noop_given(self, cond: Condition) -> bool:
        return isinstance(cond, OwnerCondition) and cond.set is False


@ACTIONS.register("assign_ai_assistant")
class AssignAiAssistantAction(Action):
    key = "assign_ai_assistant"
    shorthand = "id"
    conflict_slot = "ai_assistant"
    id: int = Field(description="AI assistant id")

    def label(self) -> str:
        return f"hand to AI assistant {self.id}"

    def conflict_value(self) -> object:
        return self.id

    def noop_given(self, cond: Condition) -> bool:
        return isinstance(cond, AiAssistantCondition) and cond.in_ == [self.id]


@ACTIONS.register("unassign_ai_assistant")
class UnassignAiAssistantAction(Action):
    key = "unassign_ai_assistant"
    conflict_slot = "ai_assistant"

    def label(self) -> str:
        return "remove the AI assistant"

    def noop_given(self, cond: Condition) -> bool:
        return isinstance(cond, AiAssistantCondition) and cond.set is False


@ACTIONS.register("move")
class MoveAction(Action):
    """Move to a pipeline stage (the API needs both ids)."""

    key = "move"
    conflict_slot = "stage"
    pipeline: int = Field(description="a stage move needs its pipeline id")
    stage: int = Field(description="Pipeline stage id")

    def label(self) -> str:
        return f"move to pipeline {self.pipeline} stage {self.stage}"

    def conflict_value(self) -> object:
        return (self.pipeline, self.stage)

    def noop_given(self, cond: Condition) -> bool:
        return isinstance(cond, StageCondition) and cond.in_ == [self.stage]


@ACTIONS.register("set_status")
class SetStatusAction(Action):
    key = "set_status"
    shorthand = "status"
    conflict_slot = "status"
    status: Literal["open", "closed"]

    def label(self) -> str:
        return "close the conversation" if self.status == "closed" else "reopen the conversation"

    def conflict_value(self) -> object:
        return self.status

    def noop_given(self, cond: Condition) -> bool:
        return isinstance(cond, StatusCondition) and cond.in_ == [self.status]


class _TagsAction(Action):
    """A set change on the conversation's tags: a re-read then a `PATCH` (worker/execution/tags.py)."""

    shorthand = "tags"
    tags: list[str] = Field(min_length=1, description="Tag names (a single name is a one-item list)")

    _list = field_validator("tags", mode="before")(as_list)

    @field_validator("tags")
    @classmethod
    def _names(cls, tags: list[str]) -> list[str]:
        for tag in tags:
            if not tag.strip() or tag != tag.strip() or len(tag) > 64:
                raise ValueError(f"{tag!r} is not a tag name (1-64 characters, no outer spaces)")
        return list(dict.fromkeys(tags))

    def delta(self) -> dict[str, list[str]]:
        """The change as data: {"add": [...]} or {"remove": [...]}."""
        raise NotImplementedError


@ACTIONS.register("tag")
class TagAction(_TagsAction):
    key = "tag"

    def label(self) -> str:
        return f"tag {listing(self.tags, 'and')}"

    def delta(self) -> dict[str, list[str]]:
        return {"add": list(self.tags)}

    def noop_given(self, cond: Condition) -> bool:
        # Tags the rule requires present are already there: adding them changes nothing.
        if not isinstance(cond, TagsCondition):
            return False
        present = set(cond.all or []) | (set(cond.any) if cond.any and len(cond.any) == 1 else set())
        return set(self.tags) <= present


def tag_delta_words(delta: Mapping[str, Any]) -> str:
    """A tag change as data, in words: `tags +vip -spam`."""
    parts = [f"+{t}" for t in delta.get("add", ())] + [f"-{t}" for t in delta.get("remove", ())]
    return "tags " + " ".join(parts)


@ACTIONS.register("untag")
class UntagAction(_TagsAction):
    key = "untag"

    def label(self) -> str:
        return f"remove tag {listing(self.tags, 'and')}"

    def delta(self) -> dict[str, list[str]]:
        return {"remove": list(self.tags)}

    def noop_given(self, cond: Condition) -> bool:
        return isinstance(cond, TagsCondition) and set(self.tags) <= set(cond.none or [])


def _template_ok(value: str | None) -> str | None:
    if value is not None:
        problem = check_template(value)
        if problem:
            raise ValueError(problem)
    return value


@ACTIONS.register("reply")
class ReplyAction(Action):
    """A customer-facing message: a predefined one (id or title) or a text template."""

    key = "reply"
    shorthand = "text"
    predefined: int | str | None = Field(default=None, description="Predefined message id or title")
    text: str | None = Field(
        default=None, min_length=1, description="Text with {{ contact.name }} placeholders"
    )
    outside_window: Literal["skip", "note", "template"] = Field(
        default="skip", description="What to do outside a Meta channel's 24-hour window"
    )
    template: str | None = Field(default=None, min_length=1, description="WhatsApp template name")
    attachment: str | None = Field(
        default=None, min_length=1, description="A file in the rules folder, e.g. files/price-list.pdf"
    )
    if_unsupported: Literal["text", "skip"] = Field(
        default="text", description="A channel that cannot carry the file: send the text alone, or skip"
    )

    _text_ok = field_validator("text")(_template_ok)

    @model_validator(mode="after")
    def _consistent(self) -> ReplyAction:
        if (self.predefined is None) == (self.text is None):
            raise ValueError("give exactly one of 'predefined' (id or title) or 'text'")
        if self.outside_window == "template" and self.template is None:
            raise ValueError("outside_window: template needs 'template' (a WhatsApp template name)")
        if self.template is not None and self.outside_window != "template":
            raise ValueError("'template' is only used with outside_window: template")
        if self.if_unsupported != "text" and self.attachment is None:
            raise ValueError("'if_unsupported' is only used with 'attachment'")
        return self

    def label(self) -> str:
        what = f"predefined message {self.predefined!r}" if self.text is None else f"{self.text!r}"
        if self.attachment is not None:
            what += f" with {self.attachment}"
        tail = {"skip": "skip", "note": "post as a note", "template": f"send template {self.template}"}
        return f"reply {what} (outside the window: {tail[self.outside_window]})"

    def needs_contact(self) -> bool:
        return self.text is not None and uses_contact(self.text)

    def files_used(self) -> Iterable[tuple[str, str]]:
        return [("attachment", self.attachment)] if self.attachment else []


@ACTIONS.register("note")
class NoteAction(Action):
    """An internal note, visible to the team only."""

    key = "note"
    shorthand = "text"
    text: str = Field(min_length=1)

    _text_ok = field_validator("text")(_template_ok)

    def label(self) -> str:
        return f"add note {self.text!r}"

    def needs_contact(self) -> bool:
        return uses_contact(self.text)


@ACTIONS.register("run_automation")
class RunAutomationAction(Action):
    key = "run_automation"
    shorthand = "automation_id"
    automation_id: int

    def label(self) -> str:
        return f"run automation {self.automation_id}"
