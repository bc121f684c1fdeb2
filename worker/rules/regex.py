"""Regexes written in rules, run on RE2: match time is linear in the text, whatever the pattern.

A rule's pattern meets customer text (messages, contact fields). On a
backtracking engine one pattern like `(a+)+$` and one 50 kB message hold the
GIL for ever and freeze every thread of the worker (issue 13). RE2 has no
backtracking, so it also has no backreferences and no lookaround: `validate`
rejects those with a located error instead of running them.
"""

from __future__ import annotations

from typing import Any

import re2

# What RE2 says about a feature it lacks (its messages are terse), and what to tell the author.
_HINTS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("(?=", "(?!", "(?<=", "(?<!"), "lookaround ((?=...), (?!...), (?<=...), (?<!...)) is not supported"),
    ((r"\1", r"\2", r"\3", r"\4", r"\5", r"\6", r"\7", r"\8", r"\9", r"\g", r"\k"),
     "a backreference is not supported"),
    ((r"\Z",), r"write \z for the end of the text"),
    (("(?>", "++", "*+", "?+"), "atomic groups and possessive quantifiers are not supported"),
)  # fmt: skip


class UserRegex:
    """A rule author's pattern, compiled by RE2; `search` answers whether it occurs in a text."""

    __slots__ = ("_compiled", "pattern")

    def __init__(self, pattern: str, *, case_sensitive: bool = True) -> None:
        """Raises ValueError, naming the unsupported feature, when RE2 cannot take `pattern`."""
        options = re2.Options()
        options.log_errors = False  # RE2 would print every rejected pattern to stderr
        options.case_sensitive = case_sensitive
        try:
            self._compiled: Any = re2.compile(pattern, options)
        except re2.error as exc:
            raise ValueError(_explain(exc)) from None
        self.pattern = pattern

    def search(self, text: str) -> bool:
        return self._compiled.search(text) is not None


def _explain(exc: Exception) -> str:
    raw = exc.args[0] if exc.args else exc
    detail = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    hint = next((h for needles, h in _HINTS if any(n in detail for n in needles)), "")
    why = f" ({hint})" if hint else ""
    return f"regex does not compile on RE2, the linear-time engine rules run on: {detail}{why}"


def regex_compiles(value: str | None) -> str | None:
    """Field validator: a pattern RE2 cannot run is a load-time error, never a run-time one."""
    if value is not None:
        UserRegex(value)
    return value
