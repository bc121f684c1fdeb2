"""Condition types. Built-ins register themselves from the explicit import list below."""

from __future__ import annotations

from worker.rules.conditions import message, record, routing, sla, timing  # noqa: F401  (registers built-ins)
from worker.rules.conditions.base import CONDITIONS, Condition

__all__ = ["CONDITIONS", "Condition"]
