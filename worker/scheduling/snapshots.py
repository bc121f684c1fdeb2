"""Snapshots: a conversation plus what the rules need beside it (messages, contact, SLA pauses).

One reader for the loop (poll, resync, timers), the executor's re-check,
`plan`, `explain` and `sla`, so they all evaluate a rule on the same inputs.
It reads in batches, never one conversation at a time:

- **messages**, only when some enabled rule needs them: per channel, packed finds
  (`MessagesService.packed_page`): ``$or`` of up to 50 ``(conversation_id, created_at
  range)`` pairs sorted conversation by conversation, newest first; a full page
  finishes every conversation before the one it cuts, and the next find goes on with
  that one (its range ending where the page cut it) and the next conversations, so a
  channel costs about ceil(messages / 50) finds (`_read_channel`). A find that fails
  (or a server that does not keep the order) falls back to `since_many` for that
  batch, paged by ``$skip``. The window is what the conditions
  read (`worker.rules.cycles.messages_needed_since`): the window is exact, not
  "the newest 50", so a conversation with more than 50 new messages gets them all;
  a conversation the customer never wrote in gets all of its messages;
- **contacts**, only when some rule needs contact fields: ``id[$in]``, 50 per find;
- **SLA pauses** from Redis (`worker/state/sla_pauses.py`), one pipeline per batch.

With `only_needed` (the loop), messages and contacts are read only for conversations
where a rule whose conditions use them can still match, judged on the record
(`worker/rules/needs.py`); the others get ``messages=None`` ("not read") and no
contact, which those rules evaluate exactly as they would on the full read.

With a `SnapshotCache` (the loop keeps one) what was read is reused while the
fields that change it have not moved: a conversation's messages while its
``last_inbound_at``/``last_outbound_at``/``last_message_at`` are the same (a
note moves none of them and no condition reads notes), a contact until the
next resync re-reads them all. Our own replies (`worker/state/own_writes.py`)
extend the cached messages without a read, and stand for the whole window of a
conversation never read when the window now holds only them (`start_from_own`: our
reply to a customer whose messages no rule needed). The re-check passes no cache: it
must see the API as it is now.

A conversation whose reads fail is reported (`on_error`) and left out of this
pass (the next poll or the resync retries it): a failing batch is retried one
conversation at a time, so one bad conversation never hides 49 others.
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from worker.api.errors import ApiError
from worker.api.models import Contact, Conversation, Message
from worker.api.services import MessageRange, Services
from worker.config import MAX_PAGE_SIZE
from worker.logs import get_logger
from worker.rules.context import NO_PAUSES, Pauses, utc
from worker.rules.cycles import MessageWindow, messages_needed_since
from worker.rules.evaluator import Snapshot
from worker.rules.model import RuleSet
from worker.rules.needs import ReadNeeds
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

    def start_from_own(
        self, conversation: Conversation, writes: Sequence[OwnWrite], customer_text: bool
    ) -> bool:
        """A conversation never read (no rule needed its messages) whose window now holds only
        our own writes: its entry is those writes, without a read. That is so when, before our
        first write, no reply followed the customer's last message (which is unchanged) and
        the window starts after that message (`messages_needed_since`)."""
        state = message_state(conversation)
        window = messages_needed_since(conversation, customer_text)
        inbound = utc(conversation.last_inbound_at)
        if window.start != inbound or (inbound is not None and not window.strict):
            return False  # the window holds customer messages we never read
        first = next(
            (
                i
                for i, w in enumerate(writes)
                if w.before[0] == state[0] and _no_reply_after_inbound(w.before)
            ),
            None,
        )
        if first is None:
            return False
        # Replayed from the state before our first write; only what the new window holds is kept.
        self.messages[conversation.id] = CachedMessages(writes[first].before, (), customer_text)
        if self.extend_with_own(conversation, writes[first:]):
            return True
        del self.messages[conversation.id]
        return False


def _no_reply_after_inbound(state: MessageState) -> bool:
    """The message fields show no customer-facing reply after the customer's last message (and
    no message at all when the customer never wrote)."""
    inbound, outbound, last = state
    if inbound == "none":
        return outbound == "none" and last == "none"
    return outbound == "none" or datetime.fromisoformat(outbound) <= datetime.fromisoformat(inbound)


@dataclass(frozen=True)
class _MessageRead:
    """One pass's message reads: where failures go, widened windows, the window's kind."""

    fail: SnapshotErrorHook
    wider: Mapping[int, datetime | None]
    customer_text: bool


@dataclass(frozen=True)
class _Carried:
    """A conversation a packed find cut: what was read of it, and the message it was cut at."""

    conversation: Conversation
    messages: tuple[Message, ...]
    cut: Message

    def joined(self, more: Sequence[Message]) -> list[Message]:
        """What was read before, then the rest (its range ends at the cut: drop what repeats)."""
        seen = {m.id for m in self.messages}
        return [*self.messages, *(m for m in more if m.id not in seen)]


@dataclass(frozen=True)
class _Wanted:
    """The conversations whose messages, and whose contacts, a pass reads."""

    messages: Sequence[Conversation]
    contacts: Sequence[Conversation]

    def only_needed(self, needs: ReadNeeds, now: datetime, pauses: Mapping[int, Pauses]) -> _Wanted:
        records = {c.id: c for c in (*self.messages, *self.contacts)}
        reads = {cid: needs.of(c, now, pauses.get(cid, NO_PAUSES)) for cid, c in records.items()}
        return _Wanted(
            [c for c in self.messages if reads[c.id].messages],
            [c for c in self.contacts if reads[c.id].contact],
        )


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
        self._needs: ReadNeeds | None = None  # the latest rule set's, worked out once

    def _read_needs(self, ruleset: RuleSet) -> ReadNeeds:
        """`ReadNeeds` of `ruleset`, built once per rule set (a reload makes a new one), not per tick."""
        needs = self._needs
        if needs is None or needs.ruleset is not ruleset:
            needs = self._needs = ReadNeeds(ruleset)
        return needs

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
        only_needed: bool = False,
    ) -> list[Snapshot]:
        """Snapshots of `conversations` (in order); those whose reads failed are left out.

        `record_pauses` updates the SLA pause record (the loop); others only read it.
        `refresh_contacts=False` lets cached contacts stand (incremental polls and timers).
        `contacts` and `messages` override the rule set's needs (`sla` reads no contact).
        `since` widens a conversation's message window back to an earlier time (the
        re-check's read-back; `rule_window` narrows it again).
        `only_needed` reads messages and contacts only for conversations where a rule that
        uses them can still match (`worker/rules/needs.py`); the others get None (not read).
        """
        failed: set[int] = set()

        def fail(conversation: Conversation, exc: Exception) -> None:
            log.error("snapshot_read_failed", conversation_id=conversation.id, error=str(exc))
            failed.add(conversation.id)
            if on_error is not None:
                on_error(conversation, exc)

        # Pauses first: judging which reads a rule can use looks at SLA clocks.
        pauses = self._pauses(ruleset, conversations, now, record_pauses)
        wanted = _Wanted(
            conversations if (ruleset.needs_messages if messages is None else messages) else (),
            conversations if (ruleset.needs_contact if contacts is None else contacts) else (),
        )
        if only_needed:
            wanted = wanted.only_needed(self._read_needs(ruleset), now, pauses)
        how = _MessageRead(fail, since or {}, ruleset.reads_customer_text)
        found = self._messages(wanted.messages, how) if wanted.messages else {}
        people = self._contacts(wanted.contacts, fail, refresh_contacts) if wanted.contacts else {}
        return [
            Snapshot(
                conversation,
                found.get(conversation.id),  # None: not read
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
        missing = self._apply_own_writes(missing, out, how.customer_text) if not how.wider else missing
        by_channel: dict[str, list[Conversation]] = defaultdict(list)
        for conversation in missing:
            by_channel[conversation.channel].append(conversation)
        for channel, group in by_channel.items():
            self._read_channel(channel, group, out, how)
        return out

    def _read_channel(
        self,
        channel: str,
        group: Sequence[Conversation],
        out: dict[int, tuple[Message, ...]],
        how: _MessageRead,
    ) -> None:
        """A channel's windows in packed finds (`MessagesService.packed_page`): a conversation a
        full page cuts goes on in the next find beside the next conversations, so a channel costs
        about ceil(messages / 50) finds, not one per 50 conversations plus a short page each."""
        queue = deque(sorted(group, key=lambda c: c.id))
        carry: _Carried | None = None
        while queue or carry is not None:
            batch = [carry.conversation] if carry is not None else []
            while queue and len(batch) < MAX_PAGE_SIZE:
                batch.append(queue.popleft())
            windows = {c.id: self._range(c, how, carry) for c in batch}
            try:
                page = self.api.messages.packed_page(channel, windows, notes=bool(how.wider))
            except READ_ERRORS:  # the batch again, unpacked: one failing conversation is found
                self._read_batch(channel, batch, out, how)
                carry = None
                continue
            before, carry = carry, None
            for position, conversation in enumerate(batch):
                got = page.messages[conversation.id]
                carried = before if before is not None and before.conversation.id == conversation.id else None
                if carried is not None:
                    got = carried.joined(got)
                if conversation.id in page.complete:
                    self._done(conversation, got, out, how)
                elif page.cut is not None and conversation.id == page.cut.conversation_id:
                    if carried is not None and len(got) == len(carried.messages):
                        # No progress (over 50 messages at one instant): page it by $skip.
                        self._read_batch(channel, [conversation], out, how)
                    else:
                        carry = _Carried(conversation, tuple(got), page.cut)
                else:  # after the cut: not read yet
                    queue.extendleft(reversed(batch[position:]))
                    break

    def _range(self, conversation: Conversation, how: _MessageRead, carry: _Carried | None) -> MessageRange:
        window = _widened(messages_needed_since(conversation, how.customer_text), conversation.id, how.wider)
        if carry is not None and carry.conversation.id == conversation.id:
            return MessageRange(window.start, window.strict, utc(carry.cut.created_at))
        return MessageRange(window.start, window.strict)

    def _done(
        self,
        conversation: Conversation,
        messages: Sequence[Message],
        out: dict[int, tuple[Message, ...]],
        how: _MessageRead,
    ) -> None:
        out[conversation.id] = tuple(messages)
        if self.cache is not None and not how.wider:
            self.cache.put_messages(conversation, messages, how.customer_text)

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
        self, missing: list[Conversation], out: dict[int, tuple[Message, ...]], customer_text: bool
    ) -> list[Conversation]:
        """Conversations whose only news is our own reply: extend the cache instead of reading."""
        cache = self.cache
        if cache is None or self.own_writes is None or not missing:
            return missing
        writes = self.own_writes.read([c.id for c in missing])
        still = []
        for conversation in missing:
            own = writes.get(conversation.id)
            if own and (
                cache.extend_with_own(conversation, own)
                or cache.start_from_own(conversation, own, customer_text)
            ):
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
            self._done(conversation, found[conversation.id], out, how)

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
