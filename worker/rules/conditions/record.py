"""Conditions over the conversation and contact records."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from worker.api.models import Channel
from worker.rules.conditions.base import CONDITIONS, Condition, as_list, listing
from worker.rules.context import EvalContext
from worker.rules.regex import UserRegex, regex_compiles


class _OneOfCondition(Condition):
    """A record field whose value is one of a list (`field_name`, said as `noun` in labels)."""

    field_name: ClassVar[str] = ""
    noun: ClassVar[str] = ""
    shorthand = "in"
    in_: list[str]
    _set: frozenset[str] = PrivateAttr(default=frozenset())

    _as_list = field_validator("in_", mode="before")(as_list)

    def model_post_init(self, _: Any) -> None:
        self._set = frozenset(self.in_)

    def label(self) -> str:
        return f"{self.noun} {listing(self.in_)}"

    def seen(self, ctx: EvalContext) -> object:
        return getattr(ctx.conv, self.field_name)

    def test(self, ctx: EvalContext) -> bool:
        return getattr(ctx.conv, self.field_name) in self._set

    def compile(self) -> Callable[[EvalContext], bool]:
        allowed, name = frozenset(self.in_), self.field_name
        return lambda ctx: getattr(ctx.conv, name) in allowed


@CONDITIONS.register("channel")
class ChannelCondition(_OneOfCondition):
    """The conversation's channel is one of a list."""

    key = "channel"
    field_name = "channel"
    noun = "channel is"
    in_: list[Channel] = Field(alias="in", min_length=1, description="Channels that match")  # type: ignore[assignment]


@CONDITIONS.register("status")
class StatusCondition(_OneOfCondition):
    """The conversation's status."""

    key = "status"
    field_name = "status"
    noun = "status is"
    in_: list[Literal["open", "closed"]] = Field(alias="in", min_length=1)  # type: ignore[assignment]


@CONDITIONS.register("initiated_by")
class InitiatedByCondition(_OneOfCondition):
    """Who started the conversation (a simulator extension; unknown never matches)."""

    key = "initiated_by"
    field_name = "initiated_by"
    noun = "started by the"
    in_: list[Literal["customer", "team"]] = Field(alias="in", min_length=1)  # type: ignore[assignment]


class _IdCondition(Condition):
    """An optional id field: `set`, `unset`, an id or a list of ids."""

    field_name: ClassVar[str] = ""
    noun: ClassVar[str] = ""
    set: bool | None = Field(default=None, description="true: any value; false: no value")
    in_: list[int] | None = Field(default=None, alias="in", min_length=1, description="Ids that match")
    _ids: frozenset[int] = PrivateAttr(default=frozenset())

    _as_list = field_validator("in_", mode="before")(as_list)

    @classmethod
    def expand_shorthand(cls, raw: Any) -> Any:
        if raw in ("set", "unset"):
            return {"set": raw == "set"}
        return raw if isinstance(raw, dict) else {"in": raw}

    @model_validator(mode="after")
    def _one(self) -> _IdCondition:
        if (self.set is None) == (self.in_ is None):
            raise ValueError("give exactly one of 'set' or 'in' (or write set, unset, an id or a list)")
        return self

    def model_post_init(self, _: Any) -> None:
        self._ids = frozenset(self.in_ or ())

    def label(self) -> str:
        if self.set is not None:
            return f"{self.noun} is {'set' if self.set else 'unset'}"
        return f"{self.noun} is {listing(self.in_ or ())}"

    def seen(self, ctx: EvalContext) -> object:
        return getattr(ctx.conv, self.field_name)

    def test(self, ctx: EvalContext) -> bool:
        value = getattr(ctx.conv, self.field_name)
        if self.set is not None:
            return (value is not None) == self.set
        return value in self._ids

    def compile(self) -> Callable[[EvalContext], bool]:
        name, ids, want = self.field_name, frozenset(self.in_ or ()), self.set
        if want is True:
            return lambda ctx: getattr(ctx.conv, name) is not None
        if want is False:
            return lambda ctx: getattr(ctx.conv, name) is None
        return lambda ctx: getattr(ctx.conv, name) in ids


@CONDITIONS.register("owner")
class OwnerCondition(_IdCondition):
    key = "owner"
    field_name = "owner_id"
    noun = "owner"


@CONDITIONS.register("ai_assistant")
class AiAssistantCondition(_IdCondition):
    key = "ai_assistant"
    field_name = "ai_assistant_id"
    noun = "AI assistant"


@CONDITIONS.register("pipeline")
class PipelineCondition(_IdCondition):
    key = "pipeline"
    field_name = "pipeline_id"
    noun = "pipeline"


@CONDITIONS.register("stage")
class StageCondition(_IdCondition):
    key = "stage"
    field_name = "pipeline_stage_id"
    noun = "stage"


@CONDITIONS.register("tags")
class TagsCondition(Condition):
    """Tags: any of / all of / none of."""

    key = "tags"
    shorthand = "any"
    any: list[str] | None = Field(default=None, min_length=1)
    all: list[str] | None = Field(default=None, min_length=1)
    none: list[str] | None = Field(default=None, min_length=1)

    _lists = field_validator("any", "all", "none", mode="before")(as_list)

    @model_validator(mode="after")
    def _some(self) -> TagsCondition:
        if self.any is None and self.all is None and self.none is None:
            raise ValueError("give at least one of 'any', 'all', 'none'")
        return self

    def label(self) -> str:
        parts = []
        if self.any:
            parts.append(f"tagged {listing(self.any)}")
        if self.all:
            parts.append(f"tagged {listing(self.all, 'and')}")
        if self.none:
            parts.append(f"not tagged {listing(self.none)}")
        return " and ".join(parts)

    def seen(self, ctx: EvalContext) -> object:
        return ctx.conv.tags

    def test(self, ctx: EvalContext) -> bool:
        tags = ctx.conv.tags
        if self.any and not any(t in tags for t in self.any):
            return False
        if self.all and not all(t in tags for t in self.all):
            return False
        return not (self.none and any(t in tags for t in self.none))


@CONDITIONS.register("unread_count")
class UnreadCountCondition(Condition):
    """Compare the unread count: gt / gte / lt / lte / eq."""

    key = "unread_count"
    gt: int | None = Field(default=None, ge=0)
    gte: int | None = Field(default=None, ge=0)
    lt: int | None = Field(default=None, ge=0)
    lte: int | None = Field(default=None, ge=0)
    eq: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _some(self) -> UnreadCountCondition:
        if all(v is None for v in (self.gt, self.gte, self.lt, self.lte, self.eq)):
            raise ValueError("give at least one of gt, gte, lt, lte, eq")
        return self

    def label(self) -> str:
        ops = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<=", "eq": "=="}
        return " and ".join(
            f"unread count {sym} {getattr(self, name)}"
            for name, sym in ops.items()
            if getattr(self, name) is not None
        )

    def seen(self, ctx: EvalContext) -> object:
        return ctx.conv.unread_count

    def test(self, ctx: EvalContext) -> bool:
        n = ctx.conv.unread_count
        return (
            (self.gt is None or n > self.gt)
            and (self.gte is None or n >= self.gte)
            and (self.lt is None or n < self.lt)
            and (self.lte is None or n <= self.lte)
            and (self.eq is None or n == self.eq)
        )


@CONDITIONS.register("contact")
class ContactCondition(Condition):
    """A contact field equals a value, matches a regex, or is set."""

    key = "contact"
    needs_contact = True
    field: str = Field(min_length=1, description="Contact field, e.g. name, email, phone, or a custom one")
    equals: str | int | bool | None = None
    regex: str | None = None
    set: bool | None = None
    _pattern: UserRegex | None = PrivateAttr(default=None)

    _regex_ok = field_validator("regex")(regex_compiles)

    @model_validator(mode="after")
    def _one(self) -> ContactCondition:
        if sum(v is not None for v in (self.equals, self.regex, self.set)) != 1:
            raise ValueError("give exactly one of 'equals', 'regex', 'set'")
        return self

    def model_post_init(self, _: Any) -> None:
        self._pattern = UserRegex(self.regex) if self.regex is not None else None

    def label(self) -> str:
        if self.regex is not None:
            return f"contact {self.field} matches /{self.regex}/"
        if self.set is not None:
            return f"contact {self.field} is {'set' if self.set else 'unset'}"
        return f"contact {self.field} is {self.equals!r}"

    def seen(self, ctx: EvalContext) -> object:
        if ctx.contact is None:
            return "contact not loaded"
        return getattr(ctx.contact, self.field, None)

    def test(self, ctx: EvalContext) -> bool:
        if ctx.contact is None:
            return False
        value = getattr(ctx.contact, self.field, None)
        if self.set is not None:
            return (value not in (None, "")) == self.set
        if value is None:
            return False
        if self._pattern is not None:
            return self._pattern.search(str(value))
        return bool(value == self.equals)


@CONDITIONS.register("team_replied")
class TeamRepliedCondition(Condition):
    """Whether the team has sent any customer-facing message (notes do not count)."""

    key = "team_replied"
    shorthand = "value"
    value: bool

    def label(self) -> str:
        return "the team has replied" if self.value else "the team has not replied yet"

    def seen(self, ctx: EvalContext) -> object:
        return ctx.conv.last_outbound_at

    def test(self, ctx: EvalContext) -> bool:
        return (ctx.conv.last_outbound_at is not None) == self.value
