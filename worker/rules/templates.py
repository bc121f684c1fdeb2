"""Placeholders in replies and notes: `{{ contact.name }}`, rendered by Jinja's sandbox.

The known context is fixed and checked at load, so a typo is a located error,
not a message with a hole in it sent to a customer.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateError, meta, nodes
from jinja2.sandbox import SandboxedEnvironment

from worker.api.models import Contact, Conversation

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


_ENV = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, finalize=_finalize)


def check_template(text: str) -> str | None:
    """None when `text` is a valid template over the known context, else what is wrong."""
    try:
        tree = _ENV.parse(text)
    except TemplateError as exc:
        return f"template does not parse: {exc}"
    allowed = ", ".join(f"{root}.*" for root in CONTEXT_FIELDS)
    for name in sorted(meta.find_undeclared_variables(tree)):
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
    return "contact" in meta.find_undeclared_variables(_ENV.parse(text))


@lru_cache(maxsize=1024)
def _compiled(text: str) -> Any:
    return _ENV.from_string(text)


def render(
    text: str,
    conversation: Conversation,
    contact: Contact | None = None,
    agent: Mapping[str, Any] | None = None,
) -> str:
    """Render a reply or note text; raises TemplateRenderError when a value is missing."""
    contact_ctx: dict[str, Any] = dict.fromkeys(CONTEXT_FIELDS["contact"])
    if contact is not None:
        contact_ctx.update(contact.model_dump(include=set(CONTEXT_FIELDS["contact"])))
        name = contact.name or ""
        contact_ctx["first_name"] = name.split()[0] if name.split() else ""
    agent_ctx = dict.fromkeys(CONTEXT_FIELDS["agent"]) | dict(agent or {})
    try:
        return str(
            _compiled(text).render(
                contact=contact_ctx, conversation=conversation.model_dump(), agent=agent_ctx
            )
        )
    except TemplateError as exc:
        raise TemplateRenderError(f"cannot render template: {exc}") from None
