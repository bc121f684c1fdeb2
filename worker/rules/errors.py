"""Located rule errors: `file:line:column: rule 'id': field: what is wrong (what is allowed)`."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

# Control (ANSI escapes, newlines), format (RTL overrides, zero-width), separators, surrogates.
_UNPRINTABLE = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def unprintable(text: str) -> bool:
    """Whether `text` holds a character that could rewrite or hide what a terminal shows."""
    return any(unicodedata.category(ch) in _UNPRINTABLE for ch in text)


def printable(text: str) -> str:
    """`text` with such characters escaped (`\\u202e`, `\\x1b`, `\\n`): safe to print, one line."""
    if not unprintable(text):
        return text
    return "".join(
        ch.encode("unicode_escape").decode("ascii") if unicodedata.category(ch) in _UNPRINTABLE else ch
        for ch in text
    )


@dataclass(frozen=True, slots=True)
class RuleError:
    """One problem in a rule file, with a 1-based line and column."""

    file: str
    line: int
    column: int
    rule_id: str | None
    field: str
    message: str

    def format(self) -> str:
        """One line, with anything taken from the files escaped (`printable`)."""
        where = f"{self.file}:{self.line}:{self.column}"
        who = f" rule '{self.rule_id}':" if self.rule_id else ""
        what = f" {self.field}:" if self.field else ""
        return printable(f"{where}:{who}{what} {self.message}")

    def __str__(self) -> str:
        return self.format()


class RulesInvalid(Exception):
    """Raised by a strict load: carries every located error."""

    def __init__(self, errors: Sequence[RuleError]) -> None:
        self.errors = tuple(errors)
        super().__init__("\n".join(e.format() for e in self.errors))
