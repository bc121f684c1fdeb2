"""Placeholders in replies and notes: `{{ contact.name }}`, rendered in a bounded sandbox.

The known context is fixed and checked at load, so a typo is a located error,
not a message with a hole in it sent to a customer. The sandbox
(`worker/rules/sandbox.py`) bounds the work and the output of a render, and any
error while rendering is a `TemplateRenderError`: the firing fails at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateError, nodes
from jinja2.environment import Template

from worker.api.models import Contact, Conversation
from worker.rules.sandbox import (
    MAX_RANGE,
    MAX_TEMPLATE_CHARS,
    MAX_TEXT_CHARS,
    RENDER_BUDGET_S,
    BoundedSandbox,
    Budget,
    TemplateLimitError,
    constant_limit_error,
    current_budget,
    running,
)

__all__ = [
    "MAX_RANGE",
    "MAX_TEMPLATE_CHARS",
    "MAX_TEXT_CHARS",
    "RENDER_BUDGET_S",
    "Budget",
    "TemplateLimitError",
    "TemplateRenderError",
    "check_template",
    "current_budget",
    "render",
    "uses_contact",
]

CONTEXT_FIELDS: Mapping[str, frozenset[str]] = {
    "contact": frozenset({"id", "name", "first_name", "phone", "email", "timezone"}),
    "conversation": frozenset(Conversation.model_fields),
    "agent": frozenset({"id", "name"}),
}


class TemplateRenderError(ValueError):
    """A template could not be rendered (e.g. a value missing at run time)."""


def _finalize(value: Any) -> Any:
    # A missing name renders as nothing rather than the word "None".
    return "" if value is None else value


_ENV = BoundedSandbox(undefined=StrictUndefined, autoescape=False, finalize=_finalize)


def _parse(text: str) -> nodes.Template:
    if len(text) > MAX_TEMPLATE_CHARS:
        raise TemplateLimitError(f"template is longer than {MAX_TEMPLATE_CHARS} characters")
    try:
        return _ENV.parse(text)
    except TemplateError:
        raise
    except Exception as exc:  # e.g. RecursionError on `((((...` nested thousands deep
        raise TemplateError(f"{type(exc).__name__}: {exc}") from None


def check_template(text: str) -> str | None:
    """None when `text` is a valid template over the known context, else what is wrong."""
    try:
        tree = _parse(text)
    except TemplateLimitError as exc:
        return str(exc)
    except TemplateError as exc:
        return f"template does not parse: {exc}"
    too_large = constant_limit_error(tree)
    if too_large is not None:
        return too_large
    allowed = ", ".join(f"{root}.*" for root in CONTEXT_FIELDS)
    for name in sorted(_ENV.undeclared_names(tree)):
        if name not in CONTEXT_FIELDS:
            return f"unknown placeholder {name!r} (allowed: {allowed})"
    for node in tree.find_all(nodes.Getattr):
        if isinstance(node.node, nodes.Name) and node.node.name in CONTEXT_FIELDS:
            fields = CONTEXT_FIELDS[node.node.name]
            if node.attr not in fields:
                return (
                    f"unknown placeholder '{node.node.name}.{node.attr}' "
                    f"(allowed: {', '.join(f'{node.node.name}.{f}' for f in sorted(fields))})"
                )
    return None


@lru_cache(maxsize=1024)  # asked once per reply executed; a parse costs more than the lookup
def uses_contact(text: str) -> bool:
    return "contact" in _ENV.undeclared_names(_parse(text))


@lru_cache(maxsize=1024)
def _compiled(text: str) -> Template:
    return _ENV.from_string(_parse(text))


def render(
    text: str,
    conversation: Conversation,
    contact: Contact | None = None,
    agent: Mapping[str, Any] | None = None,
    *,
    budget: Budget | None = None,
) -> str:
    """Render a reply or note text; raises TemplateRenderError for anything that goes wrong."""
    context = {
        "contact": _contact_context(contact),
        "conversation": conversation.model_dump(),
        "agent": dict.fromkeys(CONTEXT_FIELDS["agent"]) | dict(agent or {}),
    }
    budget = budget or Budget()
    try:
        with running(budget):
            return _stream(_compiled(text), context, budget)
    except Exception as exc:  # whatever a template does wrong, retrying cannot fix it
        raise TemplateRenderError(f"cannot render template: {_describe(exc)}") from None


def _contact_context(contact: Contact | None) -> dict[str, Any]:
    context: dict[str, Any] = dict.fromkeys(CONTEXT_FIELDS["contact"])
    if contact is not None:
        context.update(contact.model_dump(include=set(CONTEXT_FIELDS["contact"])))
        name = contact.name or ""
        context["first_name"] = name.split()[0] if name.split() else ""
    return context


def _stream(template: Template, context: Mapping[str, Any], budget: Budget) -> str:
    """The rendered text, stopped as soon as it passes the message cap or the time budget."""
    pieces: list[str] = []
    size = 0
    for piece in template.generate(context):
        size += len(piece)
        if size > MAX_TEXT_CHARS:
            raise TemplateLimitError(
                f"rendered text is longer than {MAX_TEXT_CHARS} characters (the most a message may have)"
            )
        budget.check_time()
        pieces.append(piece)
    return "".join(pieces)


def _describe(exc: Exception) -> str:
    if isinstance(exc, TemplateError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"[:300]
