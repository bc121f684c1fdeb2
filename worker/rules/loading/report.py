"""Located errors: one `Report` per file and rule turns problems into `RuleError`s."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from worker.rules.errors import RuleError
from worker.rules.loading.positions import Pos, join, locate
from worker.rules.model import Rule as Rule


class Report:
    """Collects errors for one file and one rule (or top-level section)."""

    def __init__(self, errors: list[RuleError], file: str, rule_id: str | None = None) -> None:
        self.errors, self.file, self.rule_id = errors, file, rule_id
        self.count = 0

    def for_rule(self, rule_id: str | None) -> Report:
        return Report(self.errors, self.file, rule_id)

    def add(self, pos: Pos, path: str, message: str) -> None:
        self.count += 1
        self.errors.append(RuleError(self.file, pos[0], pos[1], self.rule_id, path, message))

    def validation(
        self, exc: ValidationError, model: type[BaseModel], node: Any, pos: Pos, path: str
    ) -> None:
        for err in exc.errors(include_url=False):
            loc = tuple(p for p in err["loc"] if isinstance(p, int | str))
            kind = err["type"]
            at_key = kind == "extra_forbidden"
            where = locate(node, loc, pos, at_key=at_key)
            field_path = path
            for part in loc[:-1] if kind in ("extra_forbidden", "missing") else loc:
                field_path = join(field_path, part)
            self.add(where, field_path, validation_message(err, model, loc))


def allowed_keys(model: type[BaseModel], loc: Sequence[int | str]) -> list[str]:
    target: Any = model
    for part in loc[:-1]:
        info = getattr(target, "model_fields", {}).get(part) if isinstance(part, str) else None
        if info is None:
            by_alias = {f.alias: f for f in getattr(target, "model_fields", {}).values() if f.alias}
            info = by_alias.get(part) if isinstance(part, str) else None
        annotation = getattr(info, "annotation", None)
        candidates = [a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type)]
        target = next((a for a in candidates if issubclass(a, BaseModel)), None)
        if target is None:
            return []
    fields = getattr(target, "model_fields", {})
    return [f.alias or name for name, f in fields.items()]


def validation_message(err: Any, model: type[BaseModel], loc: Sequence[int | str]) -> str:
    kind, last = err["type"], (loc[-1] if loc else "")
    if kind == "extra_forbidden":
        allowed = allowed_keys(model, loc)
        close = difflib.get_close_matches(str(last), allowed, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return f"unknown key {last!r} ({hint}allowed: {', '.join(allowed)})"
    if kind == "missing":
        fields = getattr(model, "model_fields", {}) if len(loc) == 1 else {}
        info = fields.get(last) or next((f for f in fields.values() if f.alias == last), None)
        about = f" ({info.description})" if info is not None and info.description else ""
        return f"missing required key {last!r}{about}"
    msg = str(err["msg"])
    if msg.startswith(("Value error, ", "Assertion failed, ")):
        return msg.split(", ", 1)[1]
    shown = repr(err.get("input"))
    return f"{msg} (got {shown[:60]})"


def unknown(kind: str, name: str, known: Iterable[str]) -> str:
    names = sorted(known)
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"no {kind} named {name!r} ({hint}defined: {', '.join(names) or 'none'})"
