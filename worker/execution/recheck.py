"""Fresh state before acting: re-read the conversation and re-check the item's rule on it.

An item is executed only when its rule, evaluated on what the API shows now,
still produces the item's firing key (or another action of the same firing is
already done: a rule's own actions often make it false).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from functools import cached_property

from worker.api.errors import NotFound
from worker.api.models import Contact, Conversation, Message
from worker.execution.runs import Run, finish
from worker.rules.evaluator import Snapshot, evaluate
from worker.rules.firing import sibling_keys
from worker.runtime import Runtime


class Fresh:
    """A conversation as re-read now; messages and contact fetched at most once, on demand."""

    def __init__(self, runtime: Runtime, conversation: Conversation) -> None:
        self._runtime = runtime
        self.conversation = conversation

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
    # Fresh state is an observation too: the derived times match the poller's (worker/state/observed.py).
    return Fresh(runtime, runtime.observed.apply([conversation])[0])


def read_many(runtime: Runtime, ids: Sequence[int]) -> dict[int, Conversation]:
    """Conversations by id with one `id[$in]` find (paged by 50); missing ids are gone."""
    found = list(runtime.api.conversations.find({"id": {"$in": sorted(set(ids))}}))
    return {conversation.id: conversation for conversation in runtime.observed.apply(found)}


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
    evaluation = evaluate(replace(ruleset, rules=(rule,)), snapshot, runtime.clock.now())
    keys = [m.firing_key for m in evaluation.matches]
    if run.firing_key in keys or firing_started(runtime, run, len(rule.then)):
        return None
    if keys:
        return f"moot: the rule now answers another situation ({keys[0]})"
    return "moot: the rule no longer holds"


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
