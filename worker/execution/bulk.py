"""Bulk steps: one `/conversations-bulk-actions` call for every item that still needs it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from dramatiq.errors import Retry

from worker.api.models import Conversation
from worker.execution.recheck import (
    MAX_RECHECKS,
    Fresh,
    changed_since,
    moot_reason,
    observe_staleness,
    out_of_redrives,
    prefetch,
    read_many,
)
from worker.execution.registry import executor
from worker.execution.runs import Result, Run, StepError, finish_all, finish_each, idempotency_key
from worker.metrics import RECONCILIATIONS
from worker.rules.firing import BulkChange, Step
from worker.runtime import Runtime
from worker.state.locks import BUSY_RETRY_MS

# Bulk actions that clear a field send no field of their own.
CLEARED_FIELDS: dict[str, str] = {"unassign": "owner_id", "unassign_ai_assistant": "ai_assistant_id"}


def target_fields(change: BulkChange) -> dict[str, Any]:
    """The conversation fields a bulk change sets (their names match the record's)."""
    target = change.as_fields()
    if change.action in CLEARED_FIELDS:
        target[CLEARED_FIELDS[change.action]] = None
    return target


def at_target(conversation: Conversation, target: Mapping[str, Any]) -> bool:
    return all(getattr(conversation, name, None) == value for name, value in target.items())


@executor("bulk")
def execute_bulk(runtime: Runtime, step: Step, runs: list[Run]) -> None:
    """One bulk call for every item that still needs it; the rest are done, gone or moot.

    A conversation that changed between its re-check and the call is checked again
    (a customer who just wrote may have made the rule false); one that keeps
    changing is left out of this call and retried.
    """
    if step.bulk is None:
        raise StepError("bulk step without a change")
    change = step.bulk
    target = target_fields(change)
    records, read_at = read_many(runtime, [run.item.conversation_id for run in runs])
    to_check, ready = runs, []
    for _ in range(MAX_RECHECKS):
        # What the runs' rules read (messages, contacts, SLA pauses), in batches of 50.
        states = prefetch(runtime, records, read_at, to_check)
        verdicts = [(run, _bulk_verdict(runtime, run, records, states, target)) for run in to_check]
        # The items that need no call end together: one ledger round trip, one line per outcome.
        finish_each(runtime, [(run, *verdict) for run, verdict in verdicts if verdict is not None])
        ready += [run for run, verdict in verdicts if verdict is None and not out_of_redrives(runtime, run)]
        checked = {run.item.conversation_id: records[run.item.conversation_id] for run in ready}
        moved, records, read_at = changed_since(runtime, checked, read_at)
        to_check = [run for run in ready if run.item.conversation_id in moved]
        ready = [run for run in ready if run.item.conversation_id not in moved]
        if not to_check:
            break
    if ready:
        _call(runtime, change, ready, read_at)
    if to_check:
        raise Retry("conversations kept changing right before the bulk call", delay=BUSY_RETRY_MS)


def _call(runtime: Runtime, change: BulkChange, remaining: list[Run], read_at: datetime) -> None:
    ids = sorted({run.item.conversation_id for run in remaining})
    key = idempotency_key(
        *sorted(run.item.key for run in remaining),
        change.action,
        json.dumps(change.as_fields(), sort_keys=True, default=str),
    )
    count = runtime.api.bulk.bulk_action(
        change.action, conversation_ids=ids, idempotency_key=key, **change.as_fields()
    )
    staleness_ms = observe_staleness(runtime, change.action, read_at)
    runtime.observed.wrote(ids, target_fields(change))
    # Every item of the call at once: one Redis round trip (worker/state/ledger.py finish_items).
    finish_all(runtime, remaining, "done", processed_count=count, batch=len(ids), staleness_ms=staleness_ms)


def _bulk_verdict(
    runtime: Runtime,
    run: Run,
    records: Mapping[int, Conversation],
    states: Mapping[int, Fresh],
    target: Mapping[str, Any],
) -> tuple[Result, dict[str, Any]] | None:
    """The item's outcome when it needs no call (gone, already applied, moot), else None."""
    conversation = records.get(run.item.conversation_id)
    if conversation is None:
        return "skipped", {"reason": "gone: the conversation no longer exists"}
    if at_target(conversation, target):
        # Fields already there: our earlier attempt (or a person) applied it.
        if run.attempt > 1:
            RECONCILIATIONS.labels(result="already_applied").inc()
        return "done", {"already": True}
    if run.attempt > 1:
        RECONCILIATIONS.labels(result="not_applied").inc()
    reason = moot_reason(runtime, run, states[conversation.id])
    return ("skipped", {"reason": reason}) if reason is not None else None
