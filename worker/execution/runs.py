"""Per-item bookkeeping while a step executes: attempts, outcomes, the one log line per outcome."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter
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


Outcome = tuple[Run, Result, Mapping[str, Any]]


def finish(runtime: Runtime, run: Run, result: Result, **detail: Any) -> None:
    """Record the item's final outcome in the ledger, the metrics and one log line."""
    finish_all(runtime, [run], result, **detail)


def finish_all(
    runtime: Runtime,
    runs: Sequence[Run],
    result: Result,
    *,
    attributed: tuple[int, str] | None = None,
    **detail: Any,
) -> None:
    """`finish` for several items with one outcome (a bulk call's): one Redis round trip.

    `attributed` = (conversation id, message id) the items sent: recorded with the outcome."""
    finish_each(runtime, [(run, result, detail) for run in runs], attributed=attributed)


def finish_each(
    runtime: Runtime, outcomes: Sequence[Outcome], *, attributed: tuple[int, str] | None = None
) -> None:
    """Record each item's own outcome, all in one Redis round trip; one log line per rule and
    outcome (a bulk call's 50 items are one line, with their keys and conversations)."""
    outcomes = [(run, result, detail) for run, result, detail in outcomes if not run.finished]
    if not outcomes:
        return
    sent = {run.item.key: attributed for run, _, _ in outcomes} if attributed is not None else None
    # One record per shared detail (a bulk call's 50 items): built and encoded once.
    records: dict[tuple[int, str], tuple[State, dict[str, Any]]] = {}
    entries: list[tuple[str, State, dict[str, Any]]] = []
    for run, result, detail in outcomes:
        made = records.get((id(detail), result)) or _ledger_record(result, detail)
        records[(id(detail), result)] = made
        entries.append((run.item.key, *made))
    results = runtime.ledger.finish_items(entries, sent=sent)
    for (run, result, _), finished in zip(outcomes, results, strict=True):
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
    _count(outcomes)
    for group, result, detail in _grouped(outcomes):
        _log_outcome(group, result, detail)


def _ledger_record(result: Result, detail: Mapping[str, Any]) -> tuple[State, dict[str, Any]]:
    if result == "failed":
        return "failed", {"reason": str(detail.get("reason", "failed"))[:MAX_REASON_CHARS]}
    return "done", {"result": result, **detail}


def _count(outcomes: Sequence[Outcome]) -> None:
    firings = Counter((run.item.rule_id, result) for run, result, _ in outcomes)
    for (rule, result), n in firings.items():
        FIRINGS.labels(rule=rule, outcome=result).inc(n)
    actions = Counter((run.action, result) for run, result, _ in outcomes)
    for (action, result), n in actions.items():
        ACTIONS.labels(action=action, outcome=result).inc(n)


def _grouped(outcomes: Sequence[Outcome]) -> list[tuple[list[Run], Result, Mapping[str, Any]]]:
    """Items of one rule with the same outcome and detail, in order of first appearance."""
    groups: dict[tuple[str, str, str], tuple[list[Run], Result, Mapping[str, Any]]] = {}
    for run, result, detail in outcomes:
        key = (run.item.rule_id, result, json.dumps(detail, sort_keys=True, default=str))
        groups.setdefault(key, ([], result, detail))[0].append(run)
    return list(groups.values())


def note_retry(run: Run, error: ApiError) -> None:
    """The item stays pending: log and count the transient failure (dramatiq retries)."""
    ACTIONS.labels(action=run.action, outcome="retry").inc()
    _log_outcome([run], "retry", {"error": str(error)[:MAX_REASON_CHARS], "status": error.status})


def _log_outcome(runs: Sequence[Run], outcome: str, detail: Mapping[str, Any]) -> None:
    # A failure is final and needs a person (the reason says why): it must not hide among
    # the info lines. Retries and skips are routine.
    level = logging.WARNING if outcome == "failed" else logging.INFO
    if not _enabled(level):  # skip building a line nobody reads (a step logs up to 50)
        return
    emit = log.warning if outcome == "failed" else log.info
    first = runs[0]
    latency_ms = round((time.perf_counter() - min(run.started for run in runs)) * 1000, 1)
    if len(runs) == 1:
        where: dict[str, Any] = {"conversation": first.item.conversation_id, "key": first.item.key}
    else:  # one line for the items of one call (a bulk action): their keys and conversations
        where = {
            "conversations": [run.item.conversation_id for run in runs],
            "keys": [run.item.key for run in runs],
            "count": len(runs),
        }
    emit(
        "firing_executed",
        rule=first.item.rule_id,
        action=first.action,
        **where,
        outcome=outcome,
        attempt=max(run.attempt for run in runs),
        latency_ms=latency_ms,
        **detail,
    )


def _enabled(level: int) -> bool:
    # A stdlib-backed logger (configure_logging) knows its level; structlog's own default
    # filters nothing, so every line is wanted.
    check = getattr(log, "isEnabledFor", None)
    return True if check is None else bool(check(level))


def idempotency_key(*parts: str) -> str:
    return IDEMPOTENCY_PREFIX + hashlib.sha256("\n".join(parts).encode()).hexdigest()
