"""What a rule needs beyond the documented conversation record, said at `validate` time.

The contract (/work/shared/api-contract.md) has no `assigned_at`, `stage_entered_at` or
`initiated_by`. The worker derives the first two from its own observations
(`worker/state/observed.py`); the third it cannot know, so a rule testing it is told.
"""

from __future__ import annotations

from worker.rules.model import Rule

DERIVED = (
    "the documented API has no {field}: the worker derives it from when it saw the {what} "
    "change (one already in place when first seen counts from that record's updated_at), "
    "so it may act up to one poll late, never early"
)
MISSING = "the documented API has no initiated_by: {use} holds only where the API sends the field"

CONDITION_NOTES = {
    "assigned_for": DERIVED.format(field="assigned_at", what="owner"),
    "in_stage_for": DERIVED.format(field="stage_entered_at", what="stage"),
    "initiated_by": MISSING.format(use="this condition"),
}
ONCE_NOTES = {
    "per_assignment": DERIVED.format(field="assigned_at", what="owner"),
    "per_stage_entry": DERIVED.format(field="stage_entered_at", what="stage"),
}


def record_notes(rule: Rule) -> list[str]:
    """One line per field the rule relies on that the documented record lacks."""
    notes: dict[str, str] = {}
    for leaf in rule.when.leaves():
        key = str(getattr(leaf.cond, "key", ""))
        if key in CONDITION_NOTES:
            notes[key] = CONDITION_NOTES[key]
    if rule.once in ONCE_NOTES:
        notes[f"once: {rule.once}"] = ONCE_NOTES[rule.once]
    if rule.header.skip_team_started:
        notes["skip_team_started"] = MISSING.format(use="skip_team_started")
    return [f"{rule.source}: rule {rule.id!r} uses {what}: {why}" for what, why in notes.items()]
