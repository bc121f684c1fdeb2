"""Automation steps: run an automation for one conversation via `/automations-executions`.

Automations cannot be read back through the API contract: a retry resends
with the same ``Idempotency-Key`` (the simulator replays it). A real API that
ignores the key could run the automation twice on that path; the ledger and
the per-item lock still exclude every other duplicate.
"""

from __future__ import annotations

from dramatiq.errors import Retry

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
