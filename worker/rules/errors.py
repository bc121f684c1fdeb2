"""Located rule errors: `file:line:column: rule 'id': field: what is wrong (what is allowed)`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


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
        where = f"{self.file}:{self.line}:{self.column}"
        who = f" rule '{self.rule_id}':" if self.rule_id else ""
        what = f" {self.field}:" if self.field else ""
        return f"{where}:{who}{what} {self.message}"

    def __str__(self) -> str:
        return self.format()


class RulesInvalid(Exception):
    """Raised by a strict load: carries every located error."""

    def __init__(self, errors: Sequence[RuleError]) -> None:
        self.errors = tuple(errors)
        super().__init__("\n".join(e.format() for e in self.errors))
