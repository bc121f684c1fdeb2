"""Snapshots: a conversation plus what the rules need beside it (messages, contact, SLA pauses).

One reader for the loop (poll, resync, timers), the executor's re-check,
`plan`, `explain` and `sla`, so they all evaluate a rule on the same inputs.
It reads in batches, never one conversation at a time:

- **messages**, only when some enabled rule needs them: per channel, up to 50
  conversations per find, ``$or`` of ``(conversation_id, created_at > or >= start)``
  pairs sorted newest first and paged by ``$skip`` until every match is read
  (`MessagesService.since_many`). The window is what the conditions
  read (`worker.rules.cycles.messages_needed_since`): the window is exact, not
  "the newest 50", so a conversation with more than 50 new messages gets them all;
  a conversation the customer never wrote in gets all of its messages;
- **contacts**, only when some rule needs contact fields: ``id[$in]``, 50 per find;
- **SLA pauses** from Redis (`worker/state/sla_pauses.py`), one pipeline per batch.

With a `SnapshotCache` (the loop keeps one) what was read is reused while the
fields that change it have not moved: a conversation's messages while its
``last_inbound_at``/``last_outbound_at``/``last_message_at`` are the same (a
note moves none of them and no condition reads notes), a contact until the
next resync re-reads them all. Our own replies (`worker/state/own_writes.py`)
extend the cached messages without a read. The re-check passes no cache: it
must see the API as it is now.

A conversation whose reads fail is reported (`on_error`) and left out of this
pass (the next poll or the resync retries it): a failing batch is retried one
conversation at a time, so one bad conversation never hides 49 others.
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from worker.api.errors import ApiError
from worker.api.models import Contact, Conversation, Message
from worker.api.services import Services
from worker.config import MAX_PAGE_SIZE
from worker.logs import get_logger
from worker.rules.context import Pauses
from worker.rules.cycles import MessageWindow, messages_needed_since
from worker.rules.evaluator import Snapshot
from worker.rules.model import RuleSet
from worker.state.own_writes import MessageState, OwnWrite, OwnWrites, message_state
from worker.state.sla_pauses import SlaPauses

log = get_logger(__name__)

SnapshotErrorHook = Callable[[Conversation, Exception], None]
"""on_error(conversation, error): told about each conversation left out (e.g. to quarantine it)."""

READ_ERRORS = (ApiError, ValueError)
T = TypeVar("T")


@dataclass(frozen=True)
class CachedMessages:
    state: MessageState
    messages: tuple[Message, ...]
    customer_text: bool  # the window it was read for (`messages_needed_since`)


class SnapshotCache:
    """What the reader read, keyed by the fields that change it (see the module docstring)."""

    def __init__(self, max_conversations: int = 200_000) -> None:
        self.max_conversations = max_conversations
        self.messages: OrderedDict[int, CachedMessages] = OrderedDict()
        self.contacts: dict[int, Contact | None] = {}
        self.hits = 0
        self.misses = 0

    def fresh_messages(self, conversation: Conversation, customer_text: bool) -> tuple[Message, ...] | None:
        entry = self.messages.get(conversation.id)
        if (
            entry is None
            or entry.state != message_state(conversation)
            or entry.customer_text != customer_text
        ):
            return None
        self.messages.move_to_end(conversation.id)
        return entry.messages

    def put_messages(
        self, conversation: Conversation, messages: Sequence[Message], customer_text: bool
    ) -> None:
        state = message_state(conversation)
        self.messages[conversation.id] = CachedMessages(state, tuple(messages), customer_text)
        self.messages.move_to_end(conversation.id)
        while len(self.messages) > self.max_conversations:
            self.messages.popitem(last=False)

    def extend_with_own(self, conversation: Conversation, writes: Sequence[OwnWrite]) -> bool:
        """Replay our own writes onto the cached entry; True when that reaches the record's state."""
        entry = self.messages.get(conversation.id)
        if entry is None:
            return False
        state, messages = entry.state, list(entry.messages)
        for write in writes:
            if write.before == state and write.message.id not in {m.id for m in messages}:
                messages.insert(0, write.message)  # newest first, as read
                state = write.after()
        if state != message_state(conversation):
            return False
        self.put_messages(
            conversation, rule_window(conversation, messages, entry.customer_text), entry.customer_text
        )
        return True


@dataclass(frozen=True)
class _MessageRead:
    """One pass's message reads: where failures go, widened windows, the window's kind."""

    fail: SnapshotErrorHook
    wider: Mapping[int, datetime | None]
    customer_text: bool


class SnapshotReader:
    """Builds snapshots in batches (see the module docstring)."""

    def __init__(
        self,
        api: Services,
        pauses: SlaPauses | None = None,
        *,
        cache: SnapshotCache | None = None,
        own_writes: OwnWrites | None = None,
    ) -> None:
        self.api = api
        self.pauses = pauses
        self.cache = cache
        self.own_writes = own_writes

    def read(
        self,
        ruleset: RuleSet,
        conversations: Sequence[Conversation],
        now: datetime,
        *,
        on_error: SnapshotErrorHook | None = None,
        record_pauses: bool = False,
        refresh_contacts: bool = True,
        contacts: bool | None = None,
        messages: bool | None = None,
        since: Mapping[int, datetime | None] | None = None,
    ) -> list[Snapshot]:
        """Snapshots of `conversations` (in order); those whose reads failed are left out.

        `record_pauses` updates the SLA pause record (the loop); others only read it.
        `refresh_contacts=False` lets cached contacts stand (incremental polls and timers).
        `contacts` and `messages` override the rule set's needs (`sla` reads no contact).
        `since` widens a conversation's message window back to an earlier time (the
        re-check's read-back; `rule_window` narrows it again).
        """
        failed: set[int] = set()

        def fail(conversation: Conversation, exc: Exception) -> None:
            log.error("snapshot_read_failed", conversation_id=conversation.id, error=str(exc))
            failed.add(conversation.id)
            if on_error is not None:
                on_error(conversation, exc)

        read_messages = ruleset.needs_messages if messages is None else messages
        how = _MessageRead(fail, since or {}, ruleset.reads_customer_text)
        found = self._messages(conversations, how) if read_messages else {}
        people = (
            self._contacts(conversations, fail, refresh_contacts)
            if (ruleset.needs_contact if contacts is None else contacts)
            else {}
        )
        pauses = self._pauses(ruleset, conversations, now, record_pauses)
        return [
            Snapshot(
                conversation,
                found.get(conversation.id) if read_messages else None,
                people.get(conversation.contact_id) if conversation.contact_id is not None else None,
                pauses.get(conversation.id, {}),
            )
            for conversation in conversations
            if conversation.id not in failed
        ]

    def read_one(self, ruleset: RuleSet, conversation: Conversation, now: datetime) -> Snapshot | None:
        """One conversation's snapshot, or None when its reads failed (logged)."""
        found = self.read(ruleset, [conversation], now)
        return found[0] if found else None

    # --- messages -------------------------------------------------------------------------

    def _messages(
        self, conversations: Sequence[Conversation], how: _MessageRead
    ) -> dict[int, tuple[Message, ...]]:
        out: dict[int, tuple[Message, ...]] = {}
        # A widened window is not what the cache holds.
        missing = [c for c in conversations if how.wider or not self._from_cache(c, out, how.customer_text)]
        missing = self._apply_own_writes(missing, out)
        by_channel: dict[str, list[Conversation]] = defaultdict(list)
        for conversation in missing:
            by_channel[conversation.channel].append(conversation)
        for channel, group in by_channel.items():
            for batch in _chunks(group, MAX_PAGE_SIZE):
                self._read_batch(channel, batch, out, how)
        return out

    def _from_cache(
        self, conversation: Conversation, out: dict[int, tuple[Message, ...]], customer_text: bool
    ) -> bool:
        if self.cache is None:
            return False
        cached = self.cache.fresh_messages(conversation, customer_text)
        if cached is None:
            self.cache.misses += 1
            return False
        self.cache.hits += 1
        out[conversation.id] = cached
        return True

    def _apply_own_writes(
        self, missing: list[Conversation], out: dict[int, tuple[Message, ...]]
    ) -> list[Conversation]:
        """Conversations whose only news is our own reply: extend the cache instead of reading."""
        cache = self.cache
        if cache is None or self.own_writes is None or not missing:
            return missing
        known = [c for c in missing if c.id in cache.messages]
        writes = self.own_writes.read([c.id for c in known]) if known else {}
        still = []
        for conversation in missing:
            own = writes.get(conversation.id)
            if own and cache.extend_with_own(conversation, own):
                out[conversation.id] = cache.messages[conversation.id].messages
            else:
                still.append(conversation)
        return still

    def _read_batch(
        self,
        channel: str,
        batch: Sequence[Conversation],
        out: dict[int, tuple[Message, ...]],
        how: _MessageRead,
    ) -> None:
        windows = {
            c.id: _widened(messages_needed_since(c, how.customer_text), c.id, how.wider) for c in batch
        }
        try:
            # Rules never read notes; the re-check's read-back (a wider window) does.
            found = self.api.messages.since_many(channel, windows, notes=bool(how.wider))
        except READ_ERRORS as exc:
            if len(batch) == 1:
                how.fail(batch[0], exc)
                return
            for conversation in batch:  # find the one that fails; the others still get read
                self._read_batch(channel, [conversation], out, how)
            return
        for conversation in batch:
            messages = tuple(found[conversation.id])
            out[conversation.id] = messages
            if self.cache is not None and not how.wider:
                self.cache.put_messages(conversation, messages, how.customer_text)

    # --- contacts and pauses --------------------------------------------------------------

    def _contacts(
        self, conversations: Sequence[Conversation], fail: SnapshotErrorHook, refresh: bool
    ) -> dict[int, Contact | None]:
        wanted = {c.contact_id for c in conversations if c.contact_id is not None}
        out: dict[int, Contact | None] = {}
        if self.cache is not None and not refresh:
            out = {cid: self.cache.contacts[cid] for cid in wanted if cid in self.cache.contacts}
        to_read = sorted(wanted - out.keys())
        for batch in _chunks(to_read, MAX_PAGE_SIZE):
            try:
                found = self.api.contacts.by_ids(batch)
            except READ_ERRORS as exc:
                for conversation in conversations:
                    if conversation.contact_id in batch:
                        fail(conversation, exc)
                continue
            for contact_id in batch:
                out[contact_id] = found.get(contact_id)  # absent: deleted, as a 404 was
        if self.cache is not None:
            self.cache.contacts.update(out)
        return out

    def _pauses(
        self, ruleset: RuleSet, conversations: Sequence[Conversation], now: datetime, record: bool
    ) -> dict[int, Pauses]:
        if self.pauses is None:
            return {}
        return (self.pauses.observe if record else self.pauses.read)(ruleset, conversations, now)


def rule_window(
    conversation: Conversation, messages: Sequence[Message], customer_text: bool
) -> tuple[Message, ...]:
    """The messages the loop reads for `conversation` out of a wider read (the re-check's,
    a backtest's history): its window, without notes (no rule reads them).
    `customer_text`: the rule set reads the customer's last message (`RuleSet.reads_customer_text`)."""
    window = messages_needed_since(conversation, customer_text)
    return tuple(m for m in messages if m.message_type != "note" and window.holds(m.created_at))


def _widened(
    window: MessageWindow, conversation_id: int, wider: Mapping[int, datetime | None]
) -> MessageWindow:
    """The rule window, reaching back to the read-back's start when that is earlier."""
    if conversation_id not in wider:
        return window
    other = wider[conversation_id]
    if window.start is None or other is None:
        return MessageWindow(None)
    return MessageWindow(other) if other <= window.start else window


def _chunks(items: Sequence[T], size: int) -> Iterable[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
