"""`explain` output: per rule, whether it matches and why, what it would do, when next."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

from worker.rules.context import iso
from worker.rules.errors import printable
from worker.rules.evaluator import Evaluation, RuleResult

Format = Literal["text", "json"]


def _status(result: RuleResult, fired: set[str], before: Mapping[str, str]) -> str:
    if result.rule_id in before:
        return f"matches - already fired at {before[result.rule_id]}"
    if result.rule_id in fired:
        return "MATCH - fires"
    if result.matched:
        return f"MATCH - does not fire: {result.blocked}"
    if result.next_due is not None:
        return f"no match - due at {iso(result.next_due)}"
    return "no match"


def _text(evaluation: Evaluation, before: Mapping[str, str]) -> str:
    fired = {m.rule_id for m in evaluation.matches} - set(before)
    keys = {m.rule_id: m.firing_key for m in evaluation.matches}
    lines = [f"conversation {evaluation.conversation_id} at {iso(evaluation.now)}"]
    for r in evaluation.results:
        lines.append("")
        lines.append(f"rule '{r.rule_id}': {_status(r, fired, before)}")
        lines.extend(f"  {line}" for line in (r.description or "").splitlines())
        for reason in r.reasons:
            depth = reason.path.count(".") + reason.path.count("[")
            mark = "yes" if reason.result else "no "
            seen = f"  [seen: {reason.value_seen}]" if reason.value_seen else ""
            lines.append(f"  {'  ' * depth}{mark} {reason.label}{seen}")
        verb = "does" if r.rule_id in fired else "did" if r.rule_id in before else "would do"
        for label in r.actions:
            lines.append(f"  {verb}: {label}")
        if r.rule_id in keys:
            lines.append(f"  firing key: {keys[r.rule_id]}")
        if r.rule_id in before:
            lines.append("  it does not fire again for this situation")
    for c in evaluation.conflicts:
        lines.append("")
        lines.append(
            f"conflict over {c.slot}: '{c.winner}' ({c.winner_value}) beats '{c.loser}' ({c.loser_value})"
        )
    # Customer text (values seen) and rule text reach a terminal: no escape sequence gets through.
    return "\n".join(printable(line) for line in lines) + "\n"


def to_dict(evaluation: Evaluation, before: Mapping[str, str] | None = None) -> dict[str, Any]:
    before = before or {}
    fired = {m.rule_id: m.firing_key for m in evaluation.matches}
    return {
        "conversation_id": evaluation.conversation_id,
        "now": iso(evaluation.now),
        "rules": [
            {
                "id": r.rule_id,
                "description": r.description,
                "matched": r.matched,
                "fires": r.rule_id in fired and r.rule_id not in before,
                "firing_key": fired.get(r.rule_id),
                "already_fired_at": before.get(r.rule_id),
                "blocked": r.blocked,
                "next_due": iso(r.next_due) if r.next_due else None,
                "actions": list(r.actions),
                "reasons": [
                    {"path": x.path, "label": x.label, "value_seen": x.value_seen, "result": x.result}
                    for x in r.reasons
                ],
            }
            for r in evaluation.results
        ],
        "conflicts": [
            {
                "slot": c.slot,
                "winner": c.winner,
                "loser": c.loser,
                "winner_value": c.winner_value,
                "loser_value": c.loser_value,
            }
            for c in evaluation.conflicts
        ],
    }


def format_explanation(
    evaluation: Evaluation, fmt: Format = "text", already_fired: Mapping[str, str] | None = None
) -> str:
    """Render an `evaluate(..., explain=True)` result for people (text) or tools (json).

    `already_fired`: rule id -> when, for the matches whose firing the worker's ledger
    already holds (they match, but do not fire again).
    """
    before = already_fired or {}
    if fmt == "json":
        return json.dumps(to_dict(evaluation, before), indent=2) + "\n"
    if fmt == "text":
        return _text(evaluation, before)
    raise ValueError(f"unknown format {fmt!r} (text or json)")
