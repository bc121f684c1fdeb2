"""Fresh state before acting: re-read the conversation and re-check the item's rule on it.

An item is executed only when its rule, evaluated on what the API shows now,
still produces the item's firing key (or another action of the same firing is
already done and the situation is still the item's: a rule's own actions often
make it false, but a customer who wrote again is a new situation).

Every attempt re-checks, retries included, and the re-check must be recent
when the call leaves: when reading and checking took longer than
``FRESH_BUDGET`` (rate-limit waits, slow reads), the records are read again
just before the call and any conversation that changed meanwhile is checked
again (`changed_since`). How old the re-check was when the call left is the
``inboxpilot_action_staleness_seconds`` histogram (`observe_staleness`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from functools import cached_property

from worker.api.errors import NotFound
from worker.api.models import Contact, Conversation, Message
from worker.execution.runs import Run, finish
from worker.metrics import ACTION_STALENESS_S
from worker.rules.context import EvalContext
from worker.rules.evaluator import Snapshot, evaluate
from worker.rules.firing import firing_key_for, item_index, renews, sibling_keys
from worker.rules.model import Rule
from worker.runtime import Runtime

# How old a re-check may be when the call leaves before the records are read again.
FRESH_BUDGET = timedelta(seconds=0.5)
# Rounds of "read, check, changed meanwhile" before the attempt gives up and retries later.
MAX_RECHECKS = 3


class Fresh:
    """A conversation as re-read now; messages and contact fetched at most once, on demand."""

    def __init__(self, runtime: Runtime, conversation: Conversation, read_at: datetime | None = None) -> None:
        self._runtime = runtime
        self.conversation = conversation
        self.read_at = read_at or runtime.clock.now()  # when the record was read (the re-check's age)

    @cached_property
    def messages(self) -> list[Message]:
        conv = self.conversation
        return self._runtime.api.messages.latest(conv.channel, conv.id)

    @cached_property
    def contact(self) -> Contact | None:
        if self.conversation.contact_id is None:
            return None
        try:
            return self._runtime.api.contacts.get(self.conversation.contact_id)
        except NotFound:
            return None


def read_one(runtime: Runtime, run: Run) -> Fresh | None:
    """The item's conversation now, or None (and the item skipped) when it is gone."""
    try:
        conversation = runtime.api.conversations.get(run.item.conversation_id)
    except NotFound:
        finish(runtime, run, "skipped", reason="gone: the conversation no longer exists")
        return None
    read_at = _sent_at(runtime)
    # Fresh state is an observation too: the derived times match the poller's (worker/state/observed.py).
    return Fresh(runtime, runtime.observed.apply([conversation])[0], read_at)


def read_many(runtime: Runtime, ids: Sequence[int]) -> tuple[dict[int, Conversation], datetime]:
    """Conversations by id with one `id[$in]` find (paged by 50), and when they were read.

    Missing ids are gone.
    """
    found = list(runtime.api.conversations.find({"id": {"$in": sorted(set(ids))}}))
    read_at = _sent_at(runtime)
    return {conversation.id: conversation for conversation in runtime.observed.apply(found)}, read_at


def _sent_at(runtime: Runtime) -> datetime:
    return runtime.api.client.last_sent_at() or runtime.clock.now()


def changed_since(
    runtime: Runtime, checked: Mapping[int, Conversation], read_at: datetime
) -> tuple[set[int], dict[int, Conversation], datetime]:
    """Right before a call: which of the checked conversations changed since `read_at`.

    Nothing is read while the re-check is younger than FRESH_BUDGET; otherwise one
    find reads them again. Returns (changed or gone ids, the records read, read time).
    """
    if runtime.clock.now() - read_at <= FRESH_BUDGET or not checked:
        return set(), dict(checked), read_at
    now_records, now_at = read_many(runtime, list(checked))
    moved = {
        cid
        for cid, before in checked.items()
        if cid not in now_records or now_records[cid].updated_at != before.updated_at
    }
    return moved, now_records, now_at


def observe_staleness(runtime: Runtime, action: str, read_at: datetime) -> float:
    """Seconds from the re-checked read to the call that just left; recorded in the histogram."""
    seconds = max(((runtime.api.client.last_sent_at() or runtime.clock.now()) - read_at).total_seconds(), 0.0)
    ACTION_STALENESS_S.labels(action=action).observe(seconds)
    return round(seconds * 1000, 1)


def moot_reason(runtime: Runtime, run: Run, fresh: Fresh) -> str | None:
    """Why the item's firing no longer holds on the fresh state, or None when it still does.

    Only the item's own rule is evaluated (conflicts were settled when it was
    planned) and without firing caps (the item's own claim would count).
    """
    ruleset = runtime.rulebook.ruleset
    rule = ruleset.get(run.item.rule_id)
    if rule is None or not rule.enabled:
        state = "is no longer in the rule set" if rule is None else "is disabled"
        return f"moot: rule {run.item.rule_id!r} {state}"
    snapshot = Snapshot(
        fresh.conversation,
        fresh.messages if rule.needs_messages else None,
        fresh.contact if rule.needs_contact else None,
    )
    now = runtime.clock.now()
    evaluation = evaluate(replace(ruleset, rules=(rule,)), snapshot, now)
    keys = [m.firing_key for m in evaluation.matches]
    if run.firing_key in keys:
        return None
    if keys:
        return f"moot: the rule now answers another situation ({keys[0]})"
    # The rule's own earlier action may have made it false, but only within its situation:
    # once the customer wrote again (say), the rest of the old firing is moot too.
    situation = firing_key_for(rule.id, rule.once, EvalContext(snapshot.conversation, now, snapshot.messages))
    if situation != run.firing_key and not moved_by_own_actions(rule, run):
        return f"moot: the situation moved on ({situation})"
    if firing_started(runtime, run, len(rule.then)):
        return None
    return "moot: the rule no longer holds"


def out_of_redrives(runtime: Runtime, run: Run) -> bool:
    """On the verdict delivery, fail the item instead of acting: True when it did.

    Called only after the read-back found no effect and the re-check still holds,
    so an item whose effect is applied is never failed for running out of re-drives.
    """
    if not run.verdict:
        return False
    reason = "redrive_limit: re-drives ran out; read back first, the effect is not there"
    finish(runtime, run, "failed", reason=reason)
    return True


def moved_by_own_actions(rule: Rule, run: Run) -> bool:
    """True when an earlier action of this firing renews the situation its `once` keys on
    (`assign` then `note` under `per_assignment`): a new situation is then the firing's own
    doing, not a reason to drop its later actions."""
    index = item_index(run.item.key)
    return any(renews(action, rule.once) for action in rule.then[:index])


def firing_started(runtime: Runtime, run: Run, actions: int) -> bool:
    """True when another action of the same firing was already carried out.

    A rule's own actions often make it false (`unassign_ai_assistant` then
    `assign`): once one action of a firing is done, the rest complete too.
    """
    for key in sibling_keys(run.item.key, actions):
        entry = runtime.ledger.get(key)
        if entry is not None and entry.state == "done" and entry.outcome.get("result") == "done":
            return True
    return False
