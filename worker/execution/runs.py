"""Per-item bookkeeping while a step executes: attempts, outcomes, the one log line per outcome."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from worker.api.errors import ApiError
from worker.logs import get_logger
from worker.metrics import ACTIONS, FIRINGS
from worker.rules.firing import Item
from worker.runtime import Runtime
from worker.state.ledger import State

log = get_logger(__name__)

MAX_REASON_CHARS = 300
IDEMPOTENCY_PREFIX = "inboxpilot-"

Result = Literal["done", "skipped", "failed"]


class StepError(ValueError):
    """A step that can never be executed (bad action data, unknown kind): fail its items."""


@dataclass
class Run:
    """One item being executed: its attempt number and whether it has an outcome yet."""

    item: Item
    attempt: int
    action: str  # metric / log label: the bulk action, "reply", "note", "run_automation"
    started: float = field(default_factory=time.perf_counter)
    finished: bool = False
    retry_noted: bool = False
    # The delivery after the last re-drive: read back and re-check, then fail instead of acting.
    verdict: bool = False
    next_key: str | None = None  # the firing's next action, pending once this one was applied

    @property
    def firing_key(self) -> str:
        return self.item.firing_key


def finish(runtime: Runtime, run: Run, result: Result, **detail: Any) -> None:
    """Record the item's final outcome in the ledger, the metrics and one log line."""
    finish_all(runtime, [run], result, **detail)


def finish_all(runtime: Runtime, runs: Sequence[Run], result: Result, **detail: Any) -> None:
    """`finish` for several items with one outcome (a bulk call's): one Redis round trip."""
    runs = [run for run in runs if not run.finished]
    if not runs:
        return
    if result == "failed":
        state: State = "failed"
        record: dict[str, Any] = {"reason": str(detail.get("reason", "failed"))[:MAX_REASON_CHARS]}
    else:
        state, record = "done", {"result": result, **detail}
    results = runtime.ledger.finish_items([(run.item.key, state, record) for run in runs])
    for run, finished in zip(runs, results, strict=True):
        run.finished = True
        run.next_key = finished.next_key
        if finished.skipped:
            # The later actions of a firing whose action was not applied never run (rules/README.md).
            log.info(
                "firing_actions_skipped",
                rule=run.item.rule_id,
                conversation=run.item.conversation_id,
                after=run.item.key,
                skipped=list(finished.skipped),
                outcome=result,
            )
        FIRINGS.labels(rule=run.item.rule_id, outcome=result).inc()
        ACTIONS.labels(action=run.action, outcome=result).inc()
        _log_outcome(run, result, detail)


def note_retry(run: Run, error: ApiError) -> None:
    """The item stays pending: log and count the transient failure (dramatiq retries)."""
    ACTIONS.labels(action=run.action, outcome="retry").inc()
    _log_outcome(run, "retry", {"error": str(error)[:MAX_REASON_CHARS], "status": error.status})


def _log_outcome(run: Run, outcome: str, detail: Mapping[str, Any]) -> None:
    # A failure is final and needs a person (the reason says why): it must not hide among
    # the info lines. Retries and skips are routine.
    emit = log.warning if outcome == "failed" else log.info
    emit(
        "firing_executed",
        rule=run.item.rule_id,
        conversation=run.item.conversation_id,
        action=run.action,
        key=run.item.key,
        outcome=outcome,
        attempt=run.attempt,
        latency_ms=round((time.perf_counter() - run.started) * 1000, 1),
        **detail,
    )


def idempotency_key(*parts: str) -> str:
    return IDEMPOTENCY_PREFIX + hashlib.sha256("\n".join(parts).encode()).hexdigest()
