"""The condition type contract: YAML key + strict config schema + human label + pure check.

A condition never does I/O and answers False on missing data. `test` is the
fast path used for every conversation; `check` adds the value seen, for
`explain`; `due` tells when the condition will next have a given value if the
record does not change (record-only conditions never change on their own).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from worker.rules.calendars import Calendar
from worker.rules.context import EvalContext, Outcome, iso
from worker.rules.registry import Registry

if TYPE_CHECKING:
    from worker.rules.routing import Roster


class Condition(BaseModel):
    """Base of every condition type; subclasses are the config schema."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=True)

    key: ClassVar[str] = ""
    # The field a scalar or list value fills: `channel: whatsapp` == `channel: {in: [whatsapp]}`.
    shorthand: ClassVar[str | None] = None
    needs_messages: ClassVar[bool] = False
    needs_contact: ClassVar[bool] = False
    time_bound: ClassVar[bool] = False

    @classmethod
    def expand_shorthand(cls, raw: Any) -> Any:
        if cls.shorthand is None or isinstance(raw, Mapping):
            return raw
        return {cls.shorthand: raw}

    def label(self) -> str:
        raise NotImplementedError

    def seen(self, ctx: EvalContext) -> object:
        """The value this condition looks at, for reasons."""
        raise NotImplementedError

    def test(self, ctx: EvalContext) -> bool:
        raise NotImplementedError

    def compile(self) -> Callable[[EvalContext], bool]:
        """The hot-path predicate; types override it with a closure over plain locals
        (pydantic private attributes are slow to read)."""
        return self.test

    def check(self, ctx: EvalContext) -> Outcome:
        return Outcome(show(self.seen(ctx)), self.test(ctx))

    def due(self, ctx: EvalContext, at: datetime, want: bool) -> datetime | None:
        """Earliest t >= at where the condition equals `want`, records unchanged; None: never."""
        return at if self.test(ctx.at(at)) == want else None

    def uses_messages(self) -> bool:
        """Whether this condition, as configured, reads the snapshot's messages."""
        return self.needs_messages

    def uses_contact(self) -> bool:
        """Whether this condition, as configured, reads the snapshot's contact."""
        return self.needs_contact

    def settled(self, ctx: EvalContext) -> bool | None:
        """The value this condition keeps from `ctx.now` on while the record stays as it is,
        whatever the messages and the contact hold; None when it depends on them or on time.

        The snapshot reader skips reads no rule can use (`worker/rules/needs.py`): a False
        here must mean that `test` is False and `due(want=True)` is None for every
        messages and contact the record allows, and a True the same the other way round.
        """
        if self.uses_messages() or self.uses_contact():
            return None
        value = self.test(ctx)
        if not self.time_bound:
            return value
        return value if self.due(ctx, ctx.now, not value) is None else None

    def calendars_used(self) -> Iterable[tuple[str, str]]:
        """(field, calendar name) pairs the loader must resolve."""
        return ()

    def bind(self, calendars: Mapping[str, Calendar]) -> None:
        """Attach resolved calendars (called once at load, after validation)."""

    def bind_roster(self, roster: Roster) -> None:
        """Attach the roster (agents, pools, calendars) for conditions about agents (at load)."""

    def policies_used(self) -> Iterable[tuple[str, str]]:
        """(field, SLA policy name) pairs the loader must resolve."""
        return ()

    def bind_policies(self, policies: Mapping[str, Any]) -> None:
        """Attach resolved SLA policies (called once at load, after `bind`)."""


def show(value: object) -> str:
    """A short human text for a value seen."""
    if value is None:
        return "unset"
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, list | tuple | set | frozenset):
        return "[" + ", ".join(show(v) for v in value) + "]"
    return str(value)


def listing(values: Iterable[object], joiner: str = "or") -> str:
    items = [str(v) for v in values]
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} {joiner} {items[-1]}"


def as_list(value: Any) -> Any:
    """Let a single value stand for a one-item list."""
    return value if isinstance(value, list) else [value]


CONDITIONS: Registry[type[Condition]] = Registry("condition")
