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
   before that read is kept; the window left is that one round trip;
4. read the record back: when a write that landed just after ours replaced the
   list without our change (a stale full-list write from an app screen opened
   earlier), write the union once more, keeping that writer's tags too.
   Only the immediate read-back repairs: a person who removes our tag later
   does so on purpose, and we do not fight it.

The whole step is the items of a tick's tag changes (up to 50, any
conversations): one `id[$in]` read for the checks, then per conversation one
re-read, one `PATCH` and one read-back.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence

from worker.api.errors import NotFound
from worker.api.models import Conversation
from worker.execution.policy import EXEC_LOCK_TTL_MS, outcomes
from worker.execution.recheck import Fresh, moot_reason, out_of_redrives, read_many
from worker.execution.registry import executor
from worker.execution.runs import Run, StepError, finish, idempotency_key
from worker.metrics import RECONCILIATIONS
from worker.rules.firing import Step
from worker.runtime import Runtime
from worker.state.locks import item_locks

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
    records, _ = read_many(runtime, [run.item.conversation_id for run in runs])
    by_conversation: dict[int, list[Run]] = {}
    for run in runs:
        if not run.finished:
            by_conversation.setdefault(run.item.conversation_id, []).append(run)
    for conversation_id, group in by_conversation.items():
        with outcomes(runtime, group):
            _tag_one(runtime, records.get(conversation_id), group, changes)


def _tag_one(
    runtime: Runtime, record: Conversation | None, runs: list[Run], changes: Mapping[str, Delta]
) -> None:
    needed = [run for run in runs if _needed(runtime, run, record, changes[run.item.key])]
    if not needed:
        return
    conversation_id = needed[0].item.conversation_id
    deltas = [changes[run.item.key] for run in needed]
    with item_locks(runtime.redis, [f"tags:{conversation_id}"], EXEC_LOCK_TTL_MS):
        result = _write(runtime, conversation_id, deltas, [run.item.key for run in needed])
    for run in needed:
        if result is None:
            finish(runtime, run, "skipped", reason="gone: the conversation no longer exists")
        else:
            finish(runtime, run, "done", tags=result[0], repaired=result[1])


def _needed(runtime: Runtime, run: Run, record: Conversation | None, delta: Delta) -> bool:
    if record is None:
        finish(runtime, run, "skipped", reason="gone: the conversation no longer exists")
        return False
    if applied(record.tags, delta):
        # Already there: our earlier attempt (or a person) made this change.
        if run.attempt > 1:
            RECONCILIATIONS.labels(result="already_applied").inc()
        finish(runtime, run, "done", already=True)
        return False
    if run.attempt > 1:
        RECONCILIATIONS.labels(result="not_applied").inc()
    reason = moot_reason(runtime, run, Fresh(runtime, record))
    if reason is not None:
        finish(runtime, run, "skipped", reason=reason)
        return False
    return not out_of_redrives(runtime, run)


def _write(
    runtime: Runtime, conversation_id: int, deltas: Sequence[Delta], keys: Sequence[str]
) -> tuple[list[str], bool] | None:
    """Re-read, PATCH the merged list, read back and repair once: (tags, repaired); None if gone."""
    conversations = runtime.api.conversations
    try:
        before = conversations.get(conversation_id)
    except NotFound:
        return None
    target = combined(before.tags, deltas)
    if target != list(before.tags):
        conversations.patch(conversation_id, {"tags": target}, idempotency_key=_key(keys, target))
    after = conversations.get(conversation_id)
    if all(applied(after.tags, delta) for delta in deltas):
        return list(after.tags), False
    # A write that landed right after ours replaced the list: keep its tags and ours.
    repair = combined(after.tags, deltas)
    conversations.patch(conversation_id, {"tags": repair}, idempotency_key=_key(keys, repair))
    return repair, True


def _key(keys: Sequence[str], tags: Sequence[str]) -> str:
    # The target list is part of the key: a retry that computes another list must not replay.
    return idempotency_key(*sorted(keys), "tags", json.dumps(list(tags)))
