"""The condition tree: leaves wrap condition types; `all` / `any` / `not` combine them."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

from worker.rules.conditions.base import Condition
from worker.rules.context import EvalContext

Test = Callable[[EvalContext], bool]
# Rounds of "move to the latest child due time and ask again" for `all`; each
# round only moves forward, and periodic conditions (business hours) settle fast.
MAX_DUE_ROUNDS = 16


@dataclass(frozen=True, slots=True)
class Reason:
    """Why a rule matched or not: one condition, the value it saw, and its verdict."""

    path: str
    label: str
    value_seen: str
    result: bool


class Node:
    """A condition tree node."""

    path: str = ""

    def label(self) -> str:
        raise NotImplementedError

    def compile(self) -> Test:
        """A fast predicate for the hot path (no reasons, no allocation)."""
        raise NotImplementedError

    def explain(self, ctx: EvalContext, out: list[Reason]) -> bool:
        """Evaluate and append a reason for this node and every node below it."""
        raise NotImplementedError

    def due(self, ctx: EvalContext, at: datetime, want: bool) -> datetime | None:
        raise NotImplementedError

    def settled(self, ctx: EvalContext) -> bool | None:
        """This node's value from `ctx.now` on while the record stays as it is, whatever the
        messages and contact hold (three-valued: None when it depends on them or on time);
        see `Condition.settled`."""
        raise NotImplementedError

    def leaves(self) -> Iterator[Leaf]:
        raise NotImplementedError


class Leaf(Node):
    def __init__(self, cond: Condition, path: str) -> None:
        self.cond = cond
        self.path = path
        self._label = cond.label()  # labels are static: build them once
        self._static: Test | None = None  # the compiled test, for `due` of record-only conditions

    def label(self) -> str:
        return self._label

    def compile(self) -> Test:
        return self.cond.compile()

    def explain(self, ctx: EvalContext, out: list[Reason]) -> bool:
        seen, result = self.cond.check(ctx)
        out.append(Reason(self.path, self._label, seen, result))
        return result

    def due(self, ctx: EvalContext, at: datetime, want: bool) -> datetime | None:
        if self.cond.time_bound:
            return self.cond.due(ctx, at, want)
        # A record-only condition never changes on its own: now or never. The compiled
        # predicate answers it without a context copy or slow pydantic private attributes.
        if self._static is None:
            self._static = self.cond.compile()
        return at if self._static(ctx) == want else None

    def settled(self, ctx: EvalContext) -> bool | None:
        cond = self.cond
        if cond.time_bound or cond.uses_messages() or cond.uses_contact():
            return cond.settled(ctx)
        if self._static is None:
            self._static = cond.compile()
        return self._static(ctx)

    def leaves(self) -> Iterator[Leaf]:
        yield self


def _converge(nodes: Sequence[Node], ctx: EvalContext, at: datetime, want: bool) -> datetime | None:
    """Earliest t >= at where every node equals `want` (a lower bound after MAX_DUE_ROUNDS)."""
    t = at
    for _ in range(MAX_DUE_ROUNDS):
        latest = t
        for node in nodes:
            d = node.due(ctx, t, want)
            if d is None:
                return None
            latest = max(latest, d)
        if latest == t:
            return t
        t = latest
    return t


def _earliest(nodes: Sequence[Node], ctx: EvalContext, at: datetime, want: bool) -> datetime | None:
    dues = [d for d in (n.due(ctx, at, want) for n in nodes) if d is not None]
    return min(dues, default=None)


def _kleene(nodes: Sequence[Node], ctx: EvalContext, decisive: bool) -> bool | None:
    """Three-valued `all` (decisive=False) or `any` (decisive=True): one settled decisive
    child decides; otherwise settled only when every child is."""
    result: bool | None = not decisive
    for node in nodes:
        value = node.settled(ctx)
        if value is decisive:
            return decisive
        if value is None:
            result = None
    return result


class AllNode(Node):
    def __init__(self, children: Sequence[Node], path: str) -> None:
        self.children = tuple(children)
        self.path = path

    def label(self) -> str:
        return "all of"

    def compile(self) -> Test:
        tests = tuple(c.compile() for c in self.children)
        if len(tests) == 1:
            return tests[0]
        if len(tests) == 2:
            a, b = tests
            return lambda ctx: a(ctx) and b(ctx)

        def all_of(ctx: EvalContext) -> bool:
            for test in tests:  # noqa: SIM110 (a plain loop beats a generator on the hot path)
                if not test(ctx):
                    return False
            return True

        return all_of

    def explain(self, ctx: EvalContext, out: list[Reason]) -> bool:
        mine = len(out)
        out.append(Reason(self.path, self.label(), "", False))
        results = [c.explain(ctx, out) for c in self.children]
        result = all(results)
        out[mine] = Reason(self.path, self.label(), f"{sum(results)} of {len(results)} true", result)
        return result

    def due(self, ctx: EvalContext, at: datetime, want: bool) -> datetime | None:
        if want:
            return _converge(self.children, ctx, at, True)
        return _earliest(self.children, ctx, at, False)

    def settled(self, ctx: EvalContext) -> bool | None:
        return _kleene(self.children, ctx, decisive=False)

    def leaves(self) -> Iterator[Leaf]:
        for c in self.children:
            yield from c.leaves()


class AnyNode(AllNode):
    def label(self) -> str:
        return "any of"

    def compile(self) -> Test:
        tests = tuple(c.compile() for c in self.children)

        def any_of(ctx: EvalContext) -> bool:
            for test in tests:  # noqa: SIM110 (a plain loop beats a generator on the hot path)
                if test(ctx):
                    return True
            return False

        return any_of

    def explain(self, ctx: EvalContext, out: list[Reason]) -> bool:
        mine = len(out)
        out.append(Reason(self.path, self.label(), "", False))
        results = [c.explain(ctx, out) for c in self.children]
        result = any(results)
        out[mine] = Reason(self.path, self.label(), f"{sum(results)} of {len(results)} true", result)
        return result

    def due(self, ctx: EvalContext, at: datetime, want: bool) -> datetime | None:
        if want:
            return _earliest(self.children, ctx, at, True)
        return _converge(self.children, ctx, at, False)

    def settled(self, ctx: EvalContext) -> bool | None:
        return _kleene(self.children, ctx, decisive=True)


class NotNode(Node):
    def __init__(self, child: Node, path: str) -> None:
        self.child = child
        self.path = path

    def label(self) -> str:
        return "not"

    def compile(self) -> Test:
        test = self.child.compile()
        return lambda ctx: not test(ctx)

    def explain(self, ctx: EvalContext, out: list[Reason]) -> bool:
        mine = len(out)
        out.append(Reason(self.path, self.label(), "", False))
        inner = self.child.explain(ctx, out)
        out[mine] = Reason(self.path, self.label(), f"inner is {str(inner).lower()}", not inner)
        return not inner

    def due(self, ctx: EvalContext, at: datetime, want: bool) -> datetime | None:
        return self.child.due(ctx, at, not want)

    def settled(self, ctx: EvalContext) -> bool | None:
        inner = self.child.settled(ctx)
        return None if inner is None else not inner

    def leaves(self) -> Iterator[Leaf]:
        yield from self.child.leaves()
