"""Fresh state before acting: re-read the conversation and re-check the item's rule on it.

A step's conversations are read together with the loop's snapshot reader
(`worker/scheduling/snapshots.py`, no cache; `prefetch`): conversations by
``id[$in]``, messages and contacts 50 conversations per find, SLA pauses in one
Redis pipeline. So a step of k replies costs about 2·ceil(k/50) reads besides
its k sends, and the re-check evaluates a rule on exactly the snapshot the loop
would build (`Fresh.snapshot`).

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

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta

from worker.api.errors import NotFound
from worker.api.models import Contact, Conversation, Message
from worker.execution.runs import Run, finish
from worker.metrics import ACTION_STALENESS_S
from worker.rules.context import EvalContext
from worker.rules.evaluator import Snapshot, evaluate
from worker.rules.firing import firing_key_for, item_index, renews, sibling_keys
from worker.rules.model import Rule, RuleSet
from worker.runtime import Runtime
from worker.scheduling.snapshots import SnapshotReader, rule_window
from worker.state.sla_pauses import SlaPauses

# How old a re-check may be when the call leaves before the records are read again.
FRESH_BUDGET = timedelta(seconds=0.5)
# Rounds of "read, check, changed meanwhile" before the attempt gives up and retries later.
MAX_RECHECKS = 3

ReadBack = Callable[[Run, Conversation], datetime | None]
"""How far back a run's messages must be read for its read-back (None: all of them)."""


class Fresh:
    """A conversation as re-read now, with its messages (newest first), contact and SLA pauses.

    A step's conversations get theirs from one batched read (`prefetch`); a lone
    conversation reads them on first use, with the same reader. `messages` may
    reach further back than the rules read (the read-back's window);
    `snapshot(rule)` is exactly what the loop would evaluate.
    """

    def __init__(
        self,
        runtime: Runtime,
        conversation: Conversation,
        read_at: datetime | None = None,
        *,
        read: Snapshot | None = None,
        error: Exception | None = None,
    ) -> None:
        self._runtime = runtime
        self.conversation = conversation
        self.read_at = read_at or runtime.clock.now()  # when the record was read (the re-check's age)
        self._read = read
        self._error = error

    def _snapshot(self) -> Snapshot:
        if self._error is not None:
            raise self._error
        if self._read is None:
            conv = self.conversation
            read = _read_snapshots(self._runtime, [conv], messages=True, contacts=True)[conv.id]
            if isinstance(read, Exception):
                raise read
            self._read = read
        return self._read

    @property
    def messages(self) -> Sequence[Message]:
        return self._snapshot().messages or ()

    @property
    def contact(self) -> Contact | None:
        return self._snapshot().contact

    def snapshot(self, rule: Rule) -> Snapshot:
        """What the loop would evaluate `rule` on: its message window, its contact, the SLA pauses."""
        read = self._snapshot()
        customer_text = self._runtime.rulebook.ruleset.reads_customer_text
        messages = (
            rule_window(self.conversation, read.messages or (), customer_text)
            if rule.needs_messages
            else None
        )
        contact = read.contact if rule.needs_contact else None
        return Snapshot(self.conversation, messages, contact, read.sla_pauses)


def _read_snapshots(
    runtime: Runtime,
    conversations: Sequence[Conversation],
    *,
    messages: bool,
    contacts: bool,
    wider: Mapping[int, datetime | None] | None = None,
) -> dict[int, Snapshot | Exception]:
    """The loop's reader over the whole rule set (same windows, same pauses), without a cache."""
    errors: dict[int, Exception] = {}
    snapshots = SnapshotReader(runtime.api, SlaPauses(runtime.redis)).read(
        runtime.rulebook.ruleset,
        conversations,
        runtime.clock.now(),
        on_error=lambda conv, exc: errors.__setitem__(conv.id, exc),
        contacts=contacts,
        messages=messages,
        since=wider,
    )
    found: dict[int, Snapshot | Exception] = {s.conversation.id: s for s in snapshots}
    found.update(errors)
    return found


def prefetch(
    runtime: Runtime,
    records: Mapping[int, Conversation],
    read_at: datetime,
    runs: Sequence[Run],
    *,
    read_back: ReadBack | None = None,
    contacts: bool = False,
) -> dict[int, Fresh]:
    """Fresh state for the runs' conversations (already read), their messages, contacts and
    SLA pauses read in batches of 50: messages when a run's rule needs them or `read_back`
    is given (back to each run's `read_back` time), contacts when a rule needs them or
    `contacts` is set. Runs whose conversation is not in `records` are left out."""
    live = [run for run in runs if run.item.conversation_id in records]
    if not live:
        return {}
    ruleset = runtime.rulebook.ruleset
    wanted = {run.item.rule_id for run in live}
    rules = [r for r in ruleset.rules if r.id in wanted]
    wider = None
    if read_back is not None:
        wider = {run.item.conversation_id: read_back(run, records[run.item.conversation_id]) for run in live}
    conversations = list(
        {run.item.conversation_id: records[run.item.conversation_id] for run in live}.values()
    )
    found = _read_snapshots(
        runtime,
        conversations,
        messages=read_back is not None or any(r.needs_messages for r in rules),
        contacts=contacts or any(r.needs_contact for r in rules),
        wider=wider,
    )
    out = {}
    for conversation in conversations:
        read = found[conversation.id]
        if isinstance(read, Exception):
            out[conversation.id] = Fresh(runtime, conversation, read_at, error=read)
        else:
            out[conversation.id] = Fresh(runtime, conversation, read_at, read=read)
    return out


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
    snapshot = fresh.snapshot(rule)
    now = runtime.clock.now()
    # Only the firing keys matter here: no reasons (a third of a matching evaluation's cost).
    evaluation = evaluate(_alone(ruleset, rule), snapshot, now, with_reasons=False)
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


def _alone(ruleset: RuleSet, rule: Rule) -> RuleSet:
    """`ruleset` with `rule` only, made once per rule set and rule (a step re-checks 50 items)."""
    cache = _ALONE.get(id(ruleset))
    if cache is None or cache[0] is not ruleset:
        cache = (ruleset, {})
        _ALONE.clear()  # the rule book was reloaded: forget the old set's
        _ALONE[id(ruleset)] = cache
    alone = cache[1].get(rule.id)
    if alone is None or alone.rules[0] is not rule:
        alone = cache[1][rule.id] = replace(ruleset, rules=(rule,))
    return alone


_ALONE: dict[int, tuple[RuleSet, dict[str, RuleSet]]] = {}


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


class StepStates:
    """Fresh state for every run of a step, read in batches, and kept fresh in batches: when
    a re-check has aged past ``FRESH_BUDGET`` right before a call, the step's unfinished
    conversations are read again together (one find per 50) and those that changed are
    read in full again (`refresh`), instead of one read per call."""

    def __init__(
        self,
        runtime: Runtime,
        runs: Sequence[Run],
        *,
        read_back: ReadBack | None = None,
        contacts: bool = False,
    ) -> None:
        self._runtime = runtime
        self._runs = list(runs)
        self._read_back = read_back
        self._contacts = contacts
        records, read_at = read_many(runtime, [run.item.conversation_id for run in runs])
        for run in runs:
            if run.item.conversation_id not in records:
                finish(runtime, run, "skipped", reason="gone: the conversation no longer exists")
        self.states = self._prefetch(records, read_at, self._runs)

    def _prefetch(
        self, records: Mapping[int, Conversation], read_at: datetime, runs: Sequence[Run]
    ) -> dict[int, Fresh]:
        return prefetch(
            self._runtime, records, read_at, runs, read_back=self._read_back, contacts=self._contacts
        )

    def get(self, run: Run) -> Fresh | None:
        """The run's fresh state; None (and the run skipped) when its conversation is gone."""
        fresh = self.states.get(run.item.conversation_id)
        if fresh is None and not run.finished:
            finish(self._runtime, run, "skipped", reason="gone: the conversation no longer exists")
        return fresh

    def moved(self, run: Run) -> bool:
        """Right before the run's call: True when its conversation changed since its check."""
        fresh = self.states.get(run.item.conversation_id)
        if fresh is None:
            return True
        waiting = [r for r in self._runs if not r.finished and r.item.conversation_id in self.states]
        checked = {r.item.conversation_id: self.states[r.item.conversation_id].conversation for r in waiting}
        moved, records, read_at = changed_since(self._runtime, checked, fresh.read_at)
        if read_at != fresh.read_at:  # read again: every waiting conversation is fresh now
            for cid in checked:
                if cid not in moved:
                    self.states[cid].read_at = read_at
            for cid in moved:
                self.states.pop(cid, None)
            again = [
                r for r in waiting if r.item.conversation_id in moved and r.item.conversation_id in records
            ]
            self.states.update(self._prefetch(records, read_at, again))
        return run.item.conversation_id in moved
