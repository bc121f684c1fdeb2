"""Execution: perform one queued step exactly once per ledger item.

The actors are thin; this is where a step becomes API calls. Every item of a
step (one action of one firing on one conversation) goes through the same
pipeline:

1. a short Redis lock per item (``inboxpilot:exec:<item key>``) so two
   deliveries of the same message never run at once (dramatiq redelivers while
   a task still runs, the ledger re-drives a slow claim);
2. ``ledger.begin_attempt``: None means the item already finished (a duplicate
   delivery) and it is skipped silently;
3. fresh state: the conversation is read again (a bulk step reads all of its
   conversations with one ``id[$in]`` find); a conversation that is gone ends
   the item as skipped;
4. reconcile when ``attempt > 1`` (an earlier attempt may have been applied:
   a timeout, a 5xx after commit): read back the effect and count it as done
   when it is there. Replies and notes are read back on *every* attempt,
   against the messages created since the firing's situation began (the
   customer's message, the stage entry, the assignment): after a Redis that
   lost its data the ledger no longer knows a send happened, and the attempt
   number is 1 again. This comes *before* the re-check because our own earlier
   effect usually makes the rule false (our reply *is* the team's answer);
5. re-check: the item's rule, evaluated on the fresh snapshot, must still
   produce the item's firing key, else the item is skipped as moot (the team
   answered, someone else took the conversation, the rule was removed);
6. act with an ``Idempotency-Key`` derived from the item key(s);
7. record the outcome: done / skipped (``mark_done``), failed with a reason
   for errors that can never succeed (``mark_failed``), or left pending and
   re-raised for retryable errors so dramatiq's Retries middleware retries
   (a 429 becomes a quiet ``Retry`` after ``Retry-After``).

Each step kind ("bulk", "message", "automation", "tags") is a registered executor
(`worker/execution/{bulk,messages,automations,tags}.py`); the re-check is
`worker/execution/recheck.py`, the retry policy `worker/execution/policy.py`.
"""

from __future__ import annotations

from collections.abc import Callable

from dramatiq.errors import Retry

from worker.api.services import MAX_BULK_IDS

# The built-in step kinds register themselves on import.
from worker.execution import automations, bulk, messages, tags  # noqa: F401
from worker.execution.policy import outcomes, settings_lock_ttl_ms
from worker.execution.registry import EXECUTORS
from worker.execution.runs import Run, finish
from worker.logs import get_logger
from worker.rules.firing import Step, group_steps
from worker.runtime import Runtime
from worker.state.locks import ItemBusy, item_locks

log = get_logger(__name__)


Enqueue = Callable[[Step], None]


def execute(runtime: Runtime, step: Step, enqueue: Enqueue | None = None) -> None:
    """Execute `step`: each item at most once, with its outcome recorded in the ledger; then
    queue the next action of each firing whose item was applied (grouped like the tick)."""
    try:
        with item_locks(
            runtime.redis, [item.key for item in step.items], settings_lock_ttl_ms(runtime.settings)
        ):
            runs = _execute_locked(runtime, step)
    except ItemBusy as busy:
        log.info("firing_busy", key=busy.key, retry_ms=busy.retry_ms)
        raise Retry(str(busy), delay=busy.retry_ms) from None
    next_keys = [run.next_key for run in runs if run.next_key is not None]
    if next_keys and enqueue is not None:
        queue_next(runtime, next_keys, enqueue)


def queue_next(runtime: Runtime, keys: list[str], enqueue: Enqueue) -> None:
    """Queue the firings' next actions. They are pending in the ledger already (due for
    re-drive), so a failure here delays them by one re-drive period; it never loses them."""
    try:
        payloads = runtime.ledger.payloads(keys)
        for step in group_steps((Step.from_dict(p) for p in payloads.values()), MAX_BULK_IDS):
            enqueue(step)
    except Exception as exc:  # the re-drive picks them up: log, do not fail the finished step
        log.warning("next_actions_not_queued", keys=keys, error=f"{type(exc).__name__}: {exc}")


def _execute_locked(runtime: Runtime, step: Step) -> list[Run]:
    runs = _begin(runtime, step)
    if not runs:
        return runs
    run_executor = EXECUTORS.find(step.kind)
    if run_executor is None:
        for run in runs:
            finish(runtime, run, "failed", reason=f"unknown step kind {step.kind!r}")
        return runs
    with outcomes(runtime, runs):
        run_executor(runtime, step, runs)
    return runs


def _begin(runtime: Runtime, step: Step) -> list[Run]:
    """Every item's attempt begun in one round trip; items already finished are dropped."""
    label = action_label(step)
    attempts = runtime.ledger.begin_many([item.key for item in step.items])
    runs = []
    for item, begun in zip(step.items, attempts, strict=True):
        if begun is None:
            log.debug("firing_already_finished", key=item.key)
            continue
        runs.append(Run(item, begun[0], label, verdict=begun[1]))
    return runs


def action_label(step: Step) -> str:
    if step.bulk is not None:
        return step.bulk.action
    return str(step.action.get("type") or step.kind)
