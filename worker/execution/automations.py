"""Automation steps: run an automation for one conversation via `/automations-executions`.

The documentation promises no read-back of automation runs: a retry resends
with the same ``Idempotency-Key`` (the simulator replays it). A real API that
ignores the key could run the automation twice on that path; the ledger and
the per-item lock still exclude every other duplicate.

The verdict delivery (the last one after the re-drives ran out) is where a
wrong answer costs most: it would fail a firing whose automation did run. So it
reads back first with a find on `/automations-executions` (this automation, this
conversation, created since the claim): a run found is the effect applied and
the item is done. An API that refuses that find cannot say, and the item fails
as before.
"""

from __future__ import annotations

from datetime import timedelta

from dramatiq.errors import Retry

from worker.api.errors import BadRequest, Forbidden, NotFound
from worker.execution.policy import outcomes
from worker.execution.recheck import (
    MAX_RECHECKS,
    changed_since,
    moot_reason,
    observe_staleness,
    out_of_redrives,
    read_one,
)
from worker.execution.registry import executor
from worker.execution.runs import Run, StepError, finish, idempotency_key
from worker.metrics import RECONCILIATIONS
from worker.rules.firing import Step
from worker.runtime import Runtime
from worker.state.locks import BUSY_RETRY_MS

# Read-back tolerance between our clock (claimed_at) and the API's (created_at).
CLOCK_SKEW = timedelta(seconds=30)
# What an API that does not offer the read-back find answers: it cannot say.
NO_READ_BACK = (NotFound, BadRequest, Forbidden)


@executor("automation")
def execute_automation(runtime: Runtime, step: Step, runs: list[Run]) -> None:
    automation_id = step.action.get("automation_id")
    if automation_id is None:
        raise StepError("automation step without automation_id")
    for run in runs:
        with outcomes(runtime, [run]):
            _run_one(runtime, automation_id, run)


def _run_one(runtime: Runtime, automation_id: int | str, run: Run) -> None:
    for _ in range(MAX_RECHECKS):
        fresh = read_one(runtime, run)
        if fresh is None:
            return
        if run.verdict and _ran_already(runtime, automation_id, run):
            return
        if run.attempt > 1:
            # No read-back in the contract: the same key makes the server replay, not re-run.
            RECONCILIATIONS.labels(result="resent_with_key").inc()
        reason = moot_reason(runtime, run, fresh)
        if reason is not None:
            finish(runtime, run, "skipped", reason=reason)
            return
        if out_of_redrives(runtime, run):  # no read-back in the contract for automations
            return
        automations = runtime.api.automations
        payload = automations.build_initial_payload(run.item.conversation_id)
        checked = {fresh.conversation.id: fresh.conversation}
        moved, _, read_at = changed_since(runtime, checked, fresh.read_at)
        if moved:  # the conversation changed while the context was read: check it again
            continue
        execution = automations.run(
            automation_id,
            run.item.conversation_id,
            initial_payload=payload,
            idempotency_key=idempotency_key(run.item.key),
        )
        staleness_ms = observe_staleness(runtime, "run_automation", read_at)
        finish(runtime, run, "done", execution_id=execution.id, staleness_ms=staleness_ms)
        return
    raise Retry("the conversation kept changing right before the automation", delay=BUSY_RETRY_MS)


def _ran_already(runtime: Runtime, automation_id: int | str, run: Run) -> bool:
    """The read-back: True (and the item done) when this automation ran for the conversation
    since the item was claimed."""
    entry = runtime.ledger.get(run.item.key)
    since = entry.claimed_at - CLOCK_SKEW if entry is not None else None
    try:
        found = runtime.api.automations.runs_since(automation_id, run.item.conversation_id, since)
    except NO_READ_BACK:
        return False
    if not found:
        return False
    RECONCILIATIONS.labels(result="already_applied").inc()
    finish(runtime, run, "done", already=True, execution_id=found[0].id)
    return True
