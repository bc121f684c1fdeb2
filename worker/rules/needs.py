"""Which reads a conversation's snapshot needs: its messages and its contact only where a rule
that uses them can still match (pure).

A resync reads every open conversation; most of them cannot match most rules. Each rule whose
conditions (or firing key) use messages or a contact is first judged on the record alone, three-valued
(`Node.settled`): messages and contact are unknown, and a time condition counts only when it
keeps its value from now on. A rule settled False can neither match now nor become due later
while the record stays as it is, whatever the messages and contact hold, so its reads are
skipped; the evaluator then answers the same for it without them (False, no due time). The
reads are kept when any rule that uses them is not settled False. A skipped message read
leaves `Snapshot.messages` None ("not read"), never an empty list.

An action's contact fields (`{{ contact.name }}`) are not read here: the executor renders the
text from the contact it reads fresh before sending (`worker/execution/messages.py`).

A record change (a new message, a stage move) moves `updated_at`: the next poll judges the
conversation again on the new record.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from worker.api.models import Conversation
from worker.rules.context import NO_PAUSES, EvalContext, Pauses
from worker.rules.firing import situation_reads_messages
from worker.rules.model import Rule, RuleSet


@dataclass(frozen=True, slots=True)
class Reads:
    """What to read for one conversation beside its record."""

    messages: bool
    contact: bool


ALL_READS = Reads(messages=True, contact=True)
# `once` values whose firing key may read messages (`situation_reads_messages`).
MESSAGE_KEYS = frozenset({"per_inbound_message", "per_response_cycle", "per_team_reply"})


@dataclass(frozen=True, slots=True)
class _RuleReads:
    rule: Rule
    messages: bool  # a condition reads messages
    contact: bool  # a condition reads the contact


class ReadNeeds:
    """Judges, per conversation, which reads some rule of `ruleset` can still use."""

    def __init__(self, ruleset: RuleSet) -> None:
        self.ruleset = ruleset
        every = (
            _RuleReads(
                rule,
                any(leaf.cond.uses_messages() for leaf in rule.when.leaves()),
                any(leaf.cond.uses_contact() for leaf in rule.when.leaves()),
            )
            for rule in ruleset.rules
        )
        self._rules = tuple(r for r in every if r.messages or r.contact or r.rule.once in MESSAGE_KEYS)

    def of(self, conversation: Conversation, now: datetime, pauses: Pauses = NO_PAUSES) -> Reads:
        ctx = EvalContext(conversation, now, None, None, pauses)
        messages = contact = False
        for reads in self._rules:
            wants_messages = not messages and (
                reads.messages or situation_reads_messages(reads.rule.once, conversation)
            )
            wants_contact = not contact and reads.contact
            if not (wants_messages or wants_contact) or reads.rule.when.settled(ctx) is False:
                continue
            messages = messages or wants_messages
            contact = contact or wants_contact
            if messages and contact:
                return ALL_READS
        return Reads(messages, contact)
