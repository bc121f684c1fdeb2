"""Tag steps (`tag` / `untag`): a set change written with a read-modify-write `PATCH`.

The API replaces `tags` as a whole and has no compare-and-set, so a careless
write could drop a tag a person added after we read the record. Per conversation:

1. hold ``inboxpilot:exec:tags:<conversation id>`` so two of our own tag writes
   to one conversation never interleave (they would drop each other's tags);
2. skip each item whose change is already there (set semantics: a retry after a
   write whose answer was lost finds its tags and is done without a call), and
   each item whose rule no longer holds (the re-check every action gets);
3. re-read the record immediately before writing (no other call in between) and
   `PATCH` the union / difference of *that* list: a tag a person added any time
   before that read is kept; the window left is that one round trip. When the
   re-read shows the conversation changed since its re-check (a customer wrote
   while the step was busy with other conversations), the rule is checked again
   on it first (`worker/execution/recheck.py`), so a PATCH never rests on a
   re-check older than that one read; its age when the PATCH leaves is the
   ``inboxpilot_action_staleness_seconds`` histogram (action ``tags``);
4. read the record back: when a write that landed just after ours replaced the
   list without our change (a stale full-list write from an app screen opened
   earlier), write the union once more, keeping that writer's tags too.
   Only the immediate read-back repairs: a person who removes our tag later
   does so on purpose, and we do not fight it.

The whole step is the items of a tick's tag changes (up to 50, any
conversations): one `id[$in]` read for the checks (messages and contacts the
rules need read in batches of 50 beside it), then per conversation one re-read,
one `PATCH` and one read-back.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence

from dramatiq.errors import Retry

from worker.api.errors import NotFound
from worker.execution.policy import EXEC_LOCK_TTL_MS, outcomes
from worker.execution.recheck import (
    MAX_RECHECKS,
    Fresh,
    moot_reason,
    observe_staleness,
    out_of_redrives,
    prefetch,
    read_many,
)
from worker.execution.registry import executor
from worker.execution.runs import Run, StepError, finish, idempotency_key
from worker.metrics import RECONCILIATIONS
from worker.rules.firing import Step
from worker.runtime import Runtime
from worker.state.locks import BUSY_RETRY_MS, item_locks

Delta = Mapping[str, Sequence[str]]


def apply_delta(tags: Sequence[str], delta: Delta) -> list[str]:
    """`tags` with `add` appended (once each) and `remove` taken out; order kept."""
    removed = set(delta.get("remove", ()))
    merged = list(dict.fromkeys([*tags, *delta.get("add", ())]))
    return [tag for tag in merged if tag not in removed]


def applied(tags: Sequence[str], delta: Delta) -> bool:
    """True when `tags` already carry the change."""
    present = set(tags)
    return set(delta.get("add", ())) <= present and not set(delta.get("remove", ())) & present


def combined(tags: Sequence[str], deltas: Iterable[Delta]) -> list[str]:
    for delta in deltas:
        tags = apply_delta(tags, delta)
    return list(tags)


def step_changes(step: Step) -> dict[str, Delta]:
    changes = step.action.get("changes")
    if not isinstance(changes, Mapping):
        raise StepError("tags step without changes")
    return {str(key): delta for key, delta in changes.items()}


@executor("tags")
def execute_tags(runtime: Runtime, step: Step, runs: list[Run]) -> None:
    changes = step_changes(step)
    missing = [run for run in runs if run.item.key not in changes]
    for run in missing:
        finish(runtime, run, "failed", reason="tags step holds no change for this item")
    records, read_at = read_many(runtime, [run.item.conversation_id for run in runs])
    states = prefetch(runtime, records, read_at, [run for run in runs if not run.finished])
    by_conversation: dict[int, list[Run]] = {}
    for run in runs:
        if not run.finished:
            by_conversation.setdefault(run.item.conversation_id, []).append(run)
    for conversation_id, group in by_conversation.items():
        with outcomes(runtime, group):
            _tag_one(runtime, states.get(conversation_id), group, changes)


def _tag_one(runtime: Runtime, fresh: Fresh | None, runs: list[Run], changes: Mapping[str, Delta]) -> None:
    needed = [run for run in runs if _needed(runtime, run, fresh, changes[run.item.key])]
    if not needed or fresh is None:
        return
    conversation_id = fresh.conversation.id
    with item_locks(runtime.redis, [f"tags:{conversation_id}"], EXEC_LOCK_TTL_MS):
        before = _recheck_before_write(runtime, fresh, needed, changes)
        needed = [run for run in needed if not run.finished]
        if before is None or not needed:
            return
        deltas = [changes[run.item.key] for run in needed]
        tags, repaired, staleness_ms = _write(runtime, before, deltas, [run.item.key for run in needed])
    for run in needed:
        finish(runtime, run, "done", tags=tags, repaired=repaired, staleness_ms=staleness_ms)


def _needed(runtime: Runtime, run: Run, fresh: Fresh | None, delta: Delta) -> bool:
    if fresh is None:
        finish(runtime, run, "skipped", reason="gone: the conversation no longer exists")
        return False
    if applied(fresh.conversation.tags, delta):
        # Already there: our earlier attempt (or a person) made this change.
        if run.attempt > 1:
            RECONCILIATIONS.labels(result="already_applied").inc()
        finish(runtime, run, "done", already=True)
        return False
    if run.attempt > 1:
        RECONCILIATIONS.labels(result="not_applied").inc()
    reason = moot_reason(runtime, run, fresh)
    if reason is not None:
        finish(runtime, run, "skipped", reason=reason)
        return False
    return not out_of_redrives(runtime, run)


def _recheck_before_write(
    runtime: Runtime, fresh: Fresh, runs: list[Run], changes: Mapping[str, Delta]
) -> Fresh | None:
    """The record re-read right before the PATCH; runs whose rule no longer holds on it are
    finished. When it changed since the re-check, the rule is checked again on it (and it is
    read again), up to MAX_RECHECKS times; None (runs skipped) when the conversation is gone."""
    checked = fresh
    for _ in range(MAX_RECHECKS):
        try:
            record = runtime.api.conversations.get(checked.conversation.id)
        except NotFound:
            for run in runs:
                finish(runtime, run, "skipped", reason="gone: the conversation no longer exists")
            return None
        read_at = runtime.api.client.last_sent_at() or runtime.clock.now()
        now = Fresh(runtime, runtime.observed.apply([record])[0], read_at)
        if record.updated_at == checked.conversation.updated_at:
            return now
        checked = now
        runs = [run for run in runs if _needed(runtime, run, checked, changes[run.item.key])]
        if not runs:
            return None
    raise Retry("the conversation kept changing right before the tags write", delay=BUSY_RETRY_MS)


def _write(
    runtime: Runtime, fresh: Fresh, deltas: Sequence[Delta], keys: Sequence[str]
) -> tuple[list[str], bool, float]:
    """PATCH the merged list onto the re-read record, read back and repair once:
    (tags, repaired, the re-check's age in ms when the PATCH left)."""
    conversations = runtime.api.conversations
    conversation_id, before = fresh.conversation.id, fresh.conversation
    target = combined(before.tags, deltas)
    staleness_ms = 0.0
    if target != list(before.tags):
        conversations.patch(conversation_id, {"tags": target}, idempotency_key=_key(keys, target))
        staleness_ms = observe_staleness(runtime, "tags", fresh.read_at)
    after = conversations.get(conversation_id)
    if all(applied(after.tags, delta) for delta in deltas):
        return list(after.tags), False, staleness_ms
    # A write that landed right after ours replaced the list: keep its tags and ours.
    repair = combined(after.tags, deltas)
    conversations.patch(conversation_id, {"tags": repair}, idempotency_key=_key(keys, repair))
    return repair, True, staleness_ms


def _key(keys: Sequence[str], tags: Sequence[str]) -> str:
    # The target list is part of the key: a retry that computes another list must not replay.
    return idempotency_key(*sorted(keys), "tags", json.dumps(list(tags)))
