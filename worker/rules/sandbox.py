"""A Jinja sandbox that cannot do unbounded work: what reply and note templates render in.

Jinja's own sandbox stops attribute escapes, not work: `{{ 9**(9**9) }}` froze
`validate` (Jinja folds constants while compiling), nested `range()` loops hung a
thread for good and a 10 MB note was sent (issue 13). Here:

- `**`, `*`, `+` and `%` are intercepted: numbers stay under `MAX_INT_BITS`,
  strings and lists under `MAX_TEXT_CHARS`, format widths under `MAX_TEXT_CHARS`;
- nothing is computed at compile time (no constant folding), so parsing and
  compiling a template is linear in its length;
- `range()` gives at most `MAX_RANGE` numbers; every loop iteration and every call
  is a step, at most `MAX_TEMPLATE_STEPS` per render, within `RENDER_BUDGET_S`;
- every `{{ }}` value and `~` result is at most `MAX_TEXT_CHARS` long, and so is
  the whole rendered text (`render` in `worker/rules/templates.py` streams it).

A template longer than `MAX_TEMPLATE_CHARS` is not compiled at all.
Every refusal raises `TemplateLimitError`; `render` turns any error into a
`TemplateRenderError`, which fails the firing at once (never retried).
"""

from __future__ import annotations

import functools
import operator
import re
import string
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.meta import TrackingCodeGenerator
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer

# No channel limit is given by the API contract: one cap for every reply and note,
# WhatsApp's limit for a text message (the largest of the messaging channels).
MAX_TEXT_CHARS = 4096
MAX_TEMPLATE_CHARS = 65_536  # a template's own text: compiling it costs before any output cap
MAX_INT_BITS = 256  # numbers a message could show; squaring in a loop stops here
MAX_RANGE = 1000  # numbers one range() may give
MAX_TEMPLATE_STEPS = 10_000  # loop iterations + calls in one render
RENDER_BUDGET_S = 1.0  # a placeholder text renders in microseconds; this is a backstop

_LOOP_GUARD = "_inboxpilot_loop_step"
_SIZE_GUARD = "_inboxpilot_size_cap"
# Filters whose integer arguments are a size (a width, a count of items).
_SIZED_FILTERS = ("center", "indent", "wordwrap", "truncate", "batch", "slice")
_SEQUENCES = (str, list, tuple)
_PRINTF_SPEC = re.compile(r"%%|%[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")


class TemplateLimitError(SecurityError):
    """A template asked for more work or output than a message may take."""


@dataclass
class Budget:
    """The work one render may do: steps (loop iterations + calls) and wall time."""

    clock: Callable[[], float] = time.monotonic
    seconds: float = RENDER_BUDGET_S
    steps: int = MAX_TEMPLATE_STEPS
    deadline: float = field(init=False, default=0.0)

    def start(self) -> None:
        self.deadline = self.clock() + self.seconds

    def step(self) -> None:
        self.steps -= 1
        if self.steps < 0:
            raise TemplateLimitError(f"more than {MAX_TEMPLATE_STEPS} loop iterations and calls")
        self.check_time()

    def check_time(self) -> None:
        if self.clock() > self.deadline:
            raise TemplateLimitError(f"rendering took longer than its time budget ({self.seconds:g} s)")


_BUDGET: ContextVar[Budget | None] = ContextVar("template_budget", default=None)


def current_budget() -> Budget | None:
    """The budget of the render running in this context (None outside a render)."""
    return _BUDGET.get()


@contextmanager
def running(budget: Budget) -> Iterator[None]:
    """Start `budget` and make it the one the guards charge, for the block."""
    token = _BUDGET.set(budget)
    try:
        budget.start()
        yield
    finally:
        _BUDGET.reset(token)


def _step() -> None:
    budget = _BUDGET.get()
    if budget is not None:
        budget.step()


# --- size checks -------------------------------------------------------------------------


def _too_long(value: object) -> bool:
    return isinstance(value, str | list | tuple | dict | set) and len(value) > MAX_TEXT_CHARS


def check_size(value: Any) -> Any:
    if _too_long(value):
        raise TemplateLimitError(f"a value longer than {MAX_TEXT_CHARS} characters or items")
    return value


def _int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_widths(values: Iterable[object], what: str) -> None:
    if any(_int(v) and abs(v) > MAX_TEXT_CHARS for v in values):  # type: ignore[arg-type]
        raise TemplateLimitError(f"{what} larger than {MAX_TEXT_CHARS}")


def _check_printf(fmt: str, values: object) -> None:
    widths = [int(w) for m in _PRINTF_SPEC.finditer(fmt) for w in m.groups() if w and w != "*"]
    if any(w == "*" for m in _PRINTF_SPEC.finditer(fmt) for w in m.groups()):
        raise TemplateLimitError("'*' widths are not allowed in templates")
    _check_widths(widths, "a format width")
    _check_widths(values if isinstance(values, tuple) else (values,), "a formatted number")


def _check_format_spec(fmt: str) -> None:
    specs = [spec for _, _, spec, _ in string.Formatter().parse(fmt) if spec]
    _check_widths([int(n) for spec in specs for n in re.findall(r"\d+", spec)], "a format width")


def _check_binop(op: str, left: Any, right: Any) -> None:
    """Refuse an intercepted operation whose result would be too large, before it runs."""
    if op == "%" and isinstance(left, str):
        _check_printf(left, right)
    elif _int(left) and _int(right):
        _check_int_result(op, left, right)
    elif op in ("*", "+"):
        _check_sequence_result(op, left, right)


def _check_int_result(op: str, left: int, right: int) -> None:
    if op == "**" and right > 0 and abs(left) > 1:
        bits = abs(left).bit_length() * right
    elif op == "*":
        bits = abs(left).bit_length() + abs(right).bit_length()
    else:
        return
    if bits > MAX_INT_BITS:
        raise TemplateLimitError(f"'{op}' result is too large (numbers are limited to {MAX_INT_BITS} bits)")


def _check_sequence_result(op: str, left: Any, right: Any) -> None:
    if op == "*" and (_int(left) or _int(right)):
        count, seq = (left, right) if _int(left) else (right, left)
        size = len(seq) * count if isinstance(seq, _SEQUENCES) else 0
    elif op == "+" and isinstance(left, _SEQUENCES) and isinstance(right, _SEQUENCES):
        size = len(left) + len(right)
    else:
        return
    if size > MAX_TEXT_CHARS:
        raise TemplateLimitError(f"'{op}' would give more than {MAX_TEXT_CHARS} characters or items")


# --- the environment ---------------------------------------------------------------------


def _bounded_range(*args: int) -> range:
    numbers = range(*args)
    if len(numbers) > MAX_RANGE:
        raise TemplateLimitError(f"range() of more than {MAX_RANGE} numbers")
    return numbers


def _loop_step(iterable: Iterable[Any]) -> Iterator[Any]:
    for item in iterable:
        _step()
        yield item


def _sized_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    skip = 2 if getattr(func, "jinja_pass_arg", None) is not None else 1  # context, then the value

    @functools.wraps(func)  # keeps Jinja's pass_context marker
    def guarded(*args: Any, **kwargs: Any) -> Any:
        if name in _SIZED_FILTERS:
            _check_widths([*args[skip:], *kwargs.values()], f"'{name}' argument")
        if name == "format" and len(args) >= skip and isinstance(args[skip - 1], str):
            _check_printf(args[skip - 1], tuple(args[skip:]))
        return check_size(func(*args, **kwargs))

    return guarded


class _Guards(NodeTransformer):
    """Rewrites a parsed template: every loop steps the budget, every output is size-capped."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = _filter(node.iter, _LOOP_GUARD)  # type: ignore[arg-type]  # For.iter is an Expr
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return _filter(node, _SIZE_GUARD)

    def visit_Output(self, node: nodes.Output) -> nodes.Node:
        self.generic_visit(node)
        node.nodes = [n if isinstance(n, nodes.TemplateData) else _filter(n, _SIZE_GUARD) for n in node.nodes]
        return node


def _filter(node: nodes.Expr, name: str) -> nodes.Filter:
    return nodes.Filter(node, name, [], [], None, None, lineno=node.lineno)


class _NoFolding(CodeGenerator):
    """Compiles without evaluating anything: Jinja folds constant `{{ }}` output at compile time."""

    def _output_child_to_const(self, node: nodes.Expr, frame: Frame, finalize: Any) -> str:
        raise nodes.Impossible()


class _NoFoldingTracker(TrackingCodeGenerator):
    """`jinja2.meta.find_undeclared_variables`' tracker, without constant folding either."""

    def _output_child_to_const(self, node: nodes.Expr, frame: Frame, finalize: Any) -> str:
        raise nodes.Impossible()


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """The sandbox with work limits; see the module docstring."""

    intercepted_binops = frozenset({"**", "*", "+", "%"})
    code_generator_class = _NoFolding

    def __init__(self, **options: Any) -> None:
        super().__init__(optimized=False, **options)
        self.globals["range"] = _bounded_range
        self.globals.pop("lipsum", None)  # generates text by the paragraph, unbounded
        self.filters = {name: _sized_filter(name, f) for name, f in self.filters.items()}
        self.filters[_LOOP_GUARD] = _loop_step
        self.filters[_SIZE_GUARD] = check_size

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        _Guards().visit(tree)
        return tree

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _check_binop(operator, left, right)
        return super().call_binop(context, operator, left, right)

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        _step()
        if isinstance(getattr(obj, "__self__", None), str | list | tuple):  # e.g. 'a'.ljust(10**9)
            _check_widths([*args, *kwargs.values()], "a method argument")
        return check_size(super().call(context, obj, *args, **kwargs))

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        _check_format_spec(value.__self__)
        return wrapped

    def undeclared_names(self, tree: nodes.Template) -> set[str]:
        """The names a template reads from its context (no evaluation)."""
        tracker = _NoFoldingTracker(self)
        tracker.visit(tree)
        return tracker.undeclared_identifiers


# --- constant arithmetic, judged at load ----------------------------------------------------

_BINOPS: dict[str, Callable[[Any, Any], Any]] = {
    "+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
    "//": operator.floordiv, "%": operator.mod, "**": operator.pow,
}  # fmt: skip


class _NotConstant(Exception):
    pass


def _fold(node: nodes.Node) -> Any:
    """The value of constant arithmetic, each operation checked before it runs."""
    if isinstance(node, nodes.Const):
        return node.value
    if isinstance(node, nodes.Neg | nodes.Pos):
        value = _fold(node.node)
        return -value if isinstance(node, nodes.Neg) else value
    if isinstance(node, nodes.BinExpr) and node.operator in _BINOPS:
        left, right = _fold(node.left), _fold(node.right)
        _check_binop(node.operator, left, right)
        try:
            return _BINOPS[node.operator](left, right)
        except Exception:  # e.g. 1/0: left for render to report with the firing
            raise _NotConstant from None
    raise _NotConstant


def constant_limit_error(tree: nodes.Template) -> str | None:
    """What is too large in the template's constant arithmetic (`{{ 9**(9**9) }}`), if anything."""
    for node in tree.find_all(nodes.BinExpr):
        try:
            _fold(node)
        except _NotConstant:
            continue
        except TemplateLimitError as exc:
            return f"constant arithmetic too large: {exc}"
    return None
