"""Backtest: what a rule set would have done over recent history, before it goes live.

`fetch_histories` reads conversations changed since a time and all their
messages, then those unchanged since on which a rule can still fire (read-only
finds); `replay` walks each conversation's history in time order through the
real evaluator and planner and returns a `Report`.

What is read, in Feathers queries (pages of `$limit` 50, `$skip` for the next):

- the conversations not changed since `since`, listed first (`unchanged_since` says why):
  ``GET /conversations?updated_at[$lt]=<since>&id[$gt]=<last id read>&$sort[id]=1``;
- the conversations changed in the window:
  ``GET /conversations?updated_at[$gte]=<since>&$sort[updated_at]=1&$sort[id]=1``.
  The unchanged ones are replayed after them, those a rule can still fire on only. A time rule
  fires on them inside the window with nothing else happening (a follow-up after a team reply
  sent before `since`, an SLA deadline falling in the window: 390 firings beside 11,462 at
  5,000 seeded). Their state stands still since their last event, so `IdleCheck` judges on the
  record alone (three-valued `Node.settled`, due times) whether some rule can still fire anew
  inside the window; only those are read whole and replayed like the others, the rest cost
  nothing beyond their page (closed ones too: whether a rule fires on a closed record is the
  rules' to say);
- per 50 of them *of one channel*, every message:
  ``GET /conversation-messages-<channel>?conversation_id[$in][]=…&$sort[created_at]=1&$sort[_id]=1``,
  paged until the envelope's `total` is read. Grouping by channel fills the
  pages: 50 conversations of mixed channels cost one partly filled find per
  channel (5,000 seeded conversations: 428 requests in all, 683 when mixed);
- per the same 50, their contacts (``GET /contacts?id[$in][]=…``) when a rule
  reads contact fields, and their SLA pause record from Redis.

Why every message and no ``created_at`` bound: the replay starts at each
conversation's creation, because a situation that fired before `since` must
not fire again inside the window (a rule with `once: per_conversation` that
routed a conversation last month does not route it again today), and which
situations fired before `since` depends on every earlier message (each is an
evaluation instant and moves `last_inbound_at`/`last_outbound_at`). A bound
would change the report.

Batches are replayed as they arrive (`histories_of` is a generator), and
`read_ahead` reads them in a background thread: the replay's CPU runs while
the next requests are under way or the rate limiter waits.

Reconstructing the past from the API. The API keeps messages, not a change log
of the record, so at each instant `t` a conversation's state is rebuilt as:

- `last_inbound_at`, `last_outbound_at`, `last_message_at`, `unread_count`: from
  the messages created at or before `t` (notes are not replies);
- `status`: closed from `updated_at` on when the record is closed now, else open;
- `owner_id`/`assigned_at`: the current owner from `assigned_at` on (unassigned
  before); without `assigned_at` the current owner throughout;
- every other field (channel, tags, pipeline, stage, AI assistant): as now.

Evaluation instants: the creation time, every message, the assignment and the
closing (each an *event*), and between two events every `next_due` the
evaluator reports, so time rules fire at the instant they become true. An
in-memory set of firing keys makes each situation fire once, as the ledger does.

Replay cost. Each instant is evaluated once, without reasons (a firing does not
carry them): its matches are the firings and its earliest due time is the next
instant (a due time does not depend on what fired: it is asked only of rules
that do not match). The message-derived part of the state changes only at a
message, so `Timeline` builds it once per message and reuses it in between.
tests/test_backtest_exact.py holds the replay as it was before (two
evaluations per instant, the state rebuilt from every message) and checks that
both give the same report.

Moot firings. A firing becomes true at `T` but the worker acts a little later:
the next poll or timer tick, the queue, then execution re-reads the
conversation and re-checks the rule. A firing is *moot* when an event of the
history happens in `(T, T + latency]` and re-evaluating the rule right after it
no longer gives the same firing key (e.g. the team answered 20 s after the SLA
deadline, or a person assigned the conversation): execution would have skipped
it. `latency` defaults to 60 s and is an option.

SLA breaches: firings of SLA rules, with how long the customer had waited when
the rule fired. An SLA rule is a breach tier of an SLA policy (an `sla`
condition at 100%), or a rule that times a wait for the team (`waiting_for_reply`,
`age`) without looking at the owner: a hand-on rule (`owner_unavailable`,
`owner_unresponsive`, `assigned_for`) waits too, but it routes, it does not
measure an SLA; a warning tier (80%) is not a breach.
"""

from __future__ import annotations

import queue
import sys
import threading
from bisect import bisect_right
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar, cast

from worker.api.models import Contact, Conversation, Message
from worker.api.services import CONVERSATIONS, Services
from worker.config import MAX_PAGE_SIZE
from worker.rules.actions import tag_delta_words
from worker.rules.conditions.sla import SlaCondition
from worker.rules.context import EvalContext, Pauses, utc
from worker.rules.evaluator import Evaluation, InMemoryState, Match, Snapshot, evaluate
from worker.rules.firing import Step
from worker.rules.model import Rule, RuleSet
from worker.scheduling.planning import PlanContext, all_steps, plan
from worker.scheduling.snapshots import rule_window

DEFAULT_LATENCY = timedelta(seconds=60)
SLA_CONDITIONS = frozenset({"waiting_for_reply", "age"})
ROUTING_CONDITIONS = frozenset({"owner_unavailable", "owner_unresponsive", "assigned_for"})
MAX_STEPS_PER_GAP = 1000  # due-times between two events (a guard; real rule sets need a few)
T = TypeVar("T")
READ_AHEAD = 4 * MAX_PAGE_SIZE  # histories read ahead of the replay (four batches)
READ_AHEAD_POLL_S = 0.5  # how often a blocked reader checks that the replay still wants more
READ_AHEAD_SWITCH_S = 0.001  # the GIL switch interval while reading ahead (see read_ahead)


@dataclass(frozen=True)
class History:
    """One conversation as read now, with all its messages (oldest first) and the SLA pauses
    the worker recorded for it (the loop's record, so SLA rules see what the loop saw)."""

    conversation: Conversation
    messages: tuple[Message, ...]
    contact: Contact | None = None
    pauses: Pauses = field(default_factory=dict)
    idle: bool = False  # unchanged since `since` and ruled out by its record: nothing to replay


@dataclass(frozen=True)
class Firing:
    rule_id: str
    conversation_id: int
    at: datetime
    firing_key: str
    actions: tuple[str, ...]
    steps: tuple[str, ...]  # what the planner would queue ("bulk assign", "message", "deferred: ...")
    moot_by: str | None = None  # the event that made it moot, e.g. "team reply at ..."
    waited_s: float | None = None  # for SLA rules: the customer's wait when it fired


@dataclass
class Report:
    since: datetime
    until: datetime
    conversations: int
    firings: list[Firing] = field(default_factory=list)

    def per_rule(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for f in self.firings:
            row = out.setdefault(f.rule_id, {"firings": 0, "moot": 0, "conversations": set()})
            row["firings"] += 1
            row["moot"] += f.moot_by is not None
            row["conversations"].add(f.conversation_id)
        return out

    def per_day(self) -> dict[str, Counter[str]]:
        days: dict[str, Counter[str]] = defaultdict(Counter)
        for f in self.firings:
            days[f.at.date().isoformat()][f.rule_id] += 1
        return dict(sorted(days.items()))

    def breaches(self) -> list[Firing]:
        return [f for f in self.firings if f.waited_s is not None]

    def moot(self) -> list[Firing]:
        return [f for f in self.firings if f.moot_by is not None]

    def to_dict(self) -> dict[str, Any]:
        rules = {
            rule: {**row, "conversations": sorted(row["conversations"])}
            for rule, row in self.per_rule().items()
        }
        return {
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "conversations": self.conversations,
            "rules": rules,
            "per_day": {day: dict(c) for day, c in self.per_day().items()},
            "firings": [_firing_dict(f) for f in self.firings],
        }


def _firing_dict(f: Firing) -> dict[str, Any]:
    data = asdict(f)
    data["at"] = f.at.isoformat()
    return data


# --- reading (read-only) ---------------------------------------------------------------------


PauseReader = Callable[[Sequence[Conversation]], Mapping[int, Pauses]]


def fetch_histories(
    api: Services,
    since: datetime,
    *,
    contacts: bool = False,
    pauses: PauseReader | None = None,
    idle: IdleCheck | None = None,
) -> Iterator[History]:
    """Conversations changed since `since`, each with every message and the recorded pauses;
    with `idle`, then those unchanged since, whole only where `idle` says a rule may fire.

    The unchanged ones are listed first: one that changes meanwhile is then found by the
    changed pass and replayed from there only (listed after, it would be in neither)."""
    unchanged = list(unchanged_since(api, since)) if idle is not None else []
    changed: set[int] = set()

    def noted(conversations: Iterable[Conversation]) -> Iterator[Conversation]:
        for c in conversations:
            changed.add(c.id)
            yield c

    found = noted(api.conversations.changed_since(since))
    yield from histories_of(api, found, contacts=contacts, pauses=pauses)
    if idle is not None:
        still = [c for c in unchanged if c.id not in changed]
        yield from idle_histories(api, still, idle, contacts=contacts, pauses=pauses)


def conversation_count(api: Services) -> int:
    """How many conversations there are (a backtest looks at each): one ``$limit=0`` find, which
    answers the envelope's `total` alone."""
    query = {"organization_id": api.client.organization_id, "$limit": 0}
    return api.client.find_page(CONVERSATIONS, query).total


def unchanged_since(api: Services, since: datetime) -> Iterator[Conversation]:
    """Conversations not changed since `since` (``updated_at[$lt]``), in pages of 50 by id, each
    page after the last id read (``id[$gt]``): one that changes during the pass leaves the set
    without shifting the pages behind it (as `$skip` would), and the changed pass, read after,
    finds it. Closed ones too: whether a rule fires on a closed record is the rules' (`IdleCheck`)."""
    client, last = api.client, None
    while True:
        query: dict[str, Any] = {
            "organization_id": client.organization_id,
            "updated_at": {"$lt": since},
            "$sort": {"id": 1},
            "$limit": MAX_PAGE_SIZE,
        }
        if last is not None:
            query["id"] = {"$gt": last}
        page = client.find_page(CONVERSATIONS, query)
        ids = [i for record in page.data if isinstance(i := record.get("id"), int)]
        yield from client.parse_records(Conversation, page.data, CONVERSATIONS)
        if not ids or page.total <= len(page.data):
            return  # `total` counts what is left after `last`: this page held it all
        last = max(ids)


def idle_histories(
    api: Services,
    conversations: Iterable[Conversation],
    check: IdleCheck,
    *,
    contacts: bool = False,
    pauses: PauseReader | None = None,
) -> Iterator[History]:
    """Conversations not changed since `since`: those `check` rules out come out at once without
    messages (`History.idle`), the others with their whole history (`histories_of`)."""
    page: list[Conversation] = []
    candidates: list[Conversation] = []

    def judge() -> Iterator[History]:
        recorded = pauses(page) if pauses is not None and page else {}
        for c in page:
            mine = recorded.get(c.id, {})
            if check.may_fire(c, mine):
                candidates.append(c)
            else:
                yield History(c, (), None, mine, idle=True)
        page.clear()

    for conversation in conversations:
        page.append(conversation)
        if len(page) == MAX_PAGE_SIZE:
            yield from judge()
    yield from judge()
    yield from histories_of(api, candidates, contacts=contacts, pauses=pauses)


def read_ahead(histories: Iterable[T], depth: int = READ_AHEAD) -> Iterator[T]:
    """`histories`, read by a background thread up to `depth` ahead of the caller, so the API's
    round trips overlap the replay's CPU (alone, each waits for the other: on a loaded machine
    a request's round trip is tens of milliseconds). A reading error is raised here, in order."""
    # (more to come, the item, the reading's error): an item may be anything, None included
    ahead: queue.Queue[tuple[bool, T | None, BaseException | None]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: tuple[bool, T | None, BaseException | None]) -> bool:
        while not stop.is_set():
            try:
                ahead.put(item, timeout=READ_AHEAD_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for history in histories:
                if not put((True, history, None)):
                    return  # the caller stopped
        except BaseException as exc:  # handed to the caller, raised there
            put((False, None, exc))
            return
        put((False, None, None))

    reader = threading.Thread(target=read, name="backtest-read-ahead", daemon=True)
    # The replay holds the GIL between switches: the reader, back from a response, waits up
    # to a switch interval (5 ms by default) several times per request, which alone slowed
    # the reading of 5,000 conversations by a fifth.
    switch = sys.getswitchinterval()
    sys.setswitchinterval(min(switch, READ_AHEAD_SWITCH_S))
    reader.start()
    try:
        while True:
            more, history, error = ahead.get()
            if error is not None:
                raise error
            if not more:
                return
            yield cast(T, history)  # with more=True the reader put an item
    finally:
        stop.set()
        reader.join(timeout=READ_AHEAD_POLL_S * 10)
        sys.setswitchinterval(switch)


def histories_of(
    api: Services,
    conversations: Iterable[Conversation],
    *,
    contacts: bool = False,
    pauses: PauseReader | None = None,
) -> Iterator[History]:
    """Each conversation with every message and the recorded pauses, read in batches of 50
    conversations of one channel (a channel's messages live in their own service): their
    messages with one paged ``conversation_id[$in]`` find, their contacts with one ``id[$in]``
    find. Histories come out a batch at a time, in no particular order."""
    waiting: dict[str, list[Conversation]] = defaultdict(list)
    for conversation in conversations:
        batch = waiting[conversation.channel]
        batch.append(conversation)
        if len(batch) == MAX_PAGE_SIZE:
            yield from _histories(api, conversation.channel, batch, contacts, pauses)
            batch.clear()
    for channel, batch in sorted(waiting.items()):
        if batch:
            yield from _histories(api, channel, batch, contacts, pauses)


def _histories(
    api: Services, channel: str, batch: Sequence[Conversation], contacts: bool, pauses: PauseReader | None
) -> Iterator[History]:
    messages: dict[int, list[Message]] = defaultdict(list)
    for message in api.messages.of_conversations(channel, [c.id for c in batch]):
        messages[message.conversation_id].append(message)
    people = api.contacts.by_ids(c.contact_id for c in batch if c.contact_id is not None) if contacts else {}
    recorded = pauses(batch) if pauses is not None else {}
    for c in batch:
        contact = people.get(c.contact_id) if c.contact_id is not None else None
        yield History(c, tuple(messages[c.id]), contact, recorded.get(c.id, {}))


# --- reconstruction --------------------------------------------------------------------------


def state_at(history: History, t: datetime, customer_text: bool = True) -> Snapshot:
    """The conversation as the worker would have read it at `t` (see the module docstring)."""
    return Timeline(history, customer_text).at(t)


class Timeline:
    """One history's states over time. The message-derived part of a state (last inbound and
    outbound, unread count, the rule window) changes only at a message, so it is built once
    per number of messages seen and reused at every instant in between."""

    def __init__(self, history: History, customer_text: bool) -> None:
        self.history = history
        self.customer_text = customer_text
        self._times = sorted(at for m in history.messages if (at := utc(m.created_at)) is not None)
        self._seen: dict[int, tuple[dict[str, Any], tuple[Message, ...]]] = {}
        conv = history.conversation
        self._assigned = utc(conv.assigned_at)
        updated = utc(conv.updated_at)
        self._closed_from = updated if conv.status == "closed" else None

    def at(self, t: datetime) -> Snapshot:
        """The snapshot at `t`: messages created at or before `t` (or without a time)."""
        fields, window = self._messages_at(bisect_right(self._times, t))
        conv = self.history.conversation
        owned = self._assigned is None or t >= self._assigned
        closed = self._closed_from is not None and t >= self._closed_from
        record = conv.model_copy(
            update={
                **fields,
                "status": "closed" if closed else "open",
                "owner_id": conv.owner_id if owned else None,
                "assigned_at": self._assigned if owned else None,
                "updated_at": t,
            }
        )
        return Snapshot(record, window, self.history.contact, pauses_at(self.history.pauses, t))

    def _messages_at(self, count: int) -> tuple[dict[str, Any], tuple[Message, ...]]:
        """What the first `count` timed messages (and every untimed one) make of the record."""
        cached = self._seen.get(count)
        if cached is not None:
            return cached
        last = self._times[count - 1] if count else None
        seen = [
            m for m in self.history.messages
            if (at := utc(m.created_at)) is None or (last is not None and at <= last)
        ]  # fmt: skip
        inbound = [utc(m.created_at) for m in seen if m.direction == "inbound"]
        replies = [utc(m.created_at) for m in seen if m.direction == "outbound" and m.message_type != "note"]
        last_in = max((x for x in inbound if x), default=None)
        last_out = max((x for x in replies if x), default=None)
        fields = {
            "last_inbound_at": last_in,
            "last_outbound_at": last_out,
            "last_message_at": max((x for x in (last_in, last_out) if x), default=None),
            "unread_count": sum(1 for x in inbound if x and (last_out is None or x > last_out)),
        }
        # The window the loop reads (`customer_text`: the rule set reads the customer's last message).
        window_of = self.history.conversation.model_copy(update=fields)
        window = rule_window(window_of, tuple(reversed(seen)), self.customer_text)
        self._seen[count] = (fields, window)
        return fields, window


def pauses_at(pauses: Pauses, t: datetime) -> Pauses:
    """The recorded pauses as they stood at `t`: begun by then, and open if they ended later."""
    return {
        policy: [(a, None if b is None or b > t else b) for a, b in intervals if a <= t]
        for policy, intervals in pauses.items()
    }


def events(history: History) -> list[tuple[datetime, str]]:
    """The instants the conversation changed, with what changed, in time order."""
    conv = history.conversation
    out: list[tuple[datetime, str]] = []
    created = utc(conv.created_at)
    if created is not None:
        out.append((created, "created"))
    for m in history.messages:
        at = utc(m.created_at)
        if at is None:
            continue
        kind = (
            "customer message"
            if m.direction == "inbound"
            else f"team {'note' if m.message_type == 'note' else 'reply'}"
        )
        out.append((at, kind))
    if (assigned := utc(conv.assigned_at)) is not None:
        out.append((assigned, "assignment"))
    if conv.status == "closed" and (updated := utc(conv.updated_at)) is not None:
        out.append((updated, "closed"))
    return sorted(out)


# --- conversations unchanged since `since` -----------------------------------------------------

# Conditions whose record field the replay rebuilds from the messages differently from the API
# (the API may count `unread_count` its own way): a rule using one is never ruled out unread.
REBUILT_FIELDS = frozenset({"unread_count"})
JUST_BEFORE = timedelta(microseconds=1)  # the API's time resolution


class IdleCheck:
    """Whether a rule can fire inside [since, until) on a conversation unchanged since before
    `since`, judged on its record alone (no messages, no contact).

    Such a conversation's state stands still from its last event `e0` (creation, last
    customer message, last team reply, assignment, closing) to `until`: the replay would
    see the record itself at every instant, and each rule's situation (its firing key)
    stands still with it. A rule cannot fire anew inside the window when it is

    - settled False at `since` (`Node.settled`: false from then on, whatever the messages and
      contact hold);
    - settled True from just before `since` on and no rule can take one of its slots: it
      fired when it became true (its due time, an instant the replay evaluates), or its
      situation was used up earlier, or it is blocked for good;
    - settled True at `e0`, or (reading neither messages nor contact) true at its due time
      from `e0` before `since`, while no rule that can take one of its slots matches there:
      it fired then, for the same reasons;
    - reading neither messages nor contact, without a due time from `since` before `until`.

    Otherwise the conversation is read whole and replayed (at 5,000 seeded: 346 of 934,
    247 of which fire). The recorded SLA pauses must stand still too: one that starts or ends
    after `e0` sends the conversation to the replay. `unread_count` is rebuilt from the
    messages, so a rule that reads it is never ruled out.
    """

    def __init__(self, ruleset: RuleSet, since: datetime, until: datetime) -> None:
        self.since, self.until = since, until
        self._rules = ruleset.rules
        order = {r.id: n for n, r in enumerate(sorted(ruleset.rules, key=lambda r: (-r.priority, r.id)))}
        self._rivals = {
            rule.id: tuple(other for other in ruleset.rules if order[other.id] < order[rule.id]
                           and _slots(other) & _slots(rule))
            for rule in ruleset.rules
        }  # fmt: skip
        self._record_only = {
            rule.id for rule in ruleset.rules
            if not any(leaf.cond.uses_messages() or leaf.cond.uses_contact() for leaf in rule.when.leaves())
        }  # fmt: skip
        self._unread = {
            rule.id for rule in ruleset.rules
            if any(leaf.cond.key in REBUILT_FIELDS for leaf in rule.when.leaves())
        }  # fmt: skip

    def may_fire(self, conversation: Conversation, pauses: Pauses) -> bool:
        """False only when no rule can fire anew inside the window (see the class docstring)."""
        e0 = frozen_from(conversation)
        if e0 is None or e0 >= self.since or _pauses_move_after(pauses, e0):
            return True
        frozen = _frozen_context(conversation, e0, pauses_at(pauses, e0))
        return any(self._rule_may_fire(rule, frozen, e0) for rule in self._rules)

    def _rule_may_fire(self, rule: Rule, frozen: EvalContext, e0: datetime) -> bool:
        if rule.id in self._unread:
            return True
        when, since = rule.when, self.since
        if when.settled(frozen.at(since)) is False:
            return False  # false all through the window
        if not self._rivals[rule.id] and when.settled(frozen.at(since - JUST_BEFORE)) is True:
            return False  # true from before the window on, and nothing takes its slots: fired then
        if when.settled(frozen.at(e0)) is True and self._uncontested(rule, frozen.at(e0)):
            return False  # matched and won at the last event: fired then
        if rule.id not in self._record_only:
            return True
        if self._won_before(rule, frozen, e0):
            return False  # matched and won when it became true (a due time the replay visits)
        due = when.due(frozen.at(since), since, True)
        return due is not None and due < self.until

    def _won_before(self, rule: Rule, frozen: EvalContext, e0: datetime) -> bool:
        """The record-only `rule` matched, and won, at its first instant from `e0` before `since`."""
        became = rule.when.due(frozen.at(e0), e0, True)
        if became is None or became >= self.since:
            return False
        at = frozen.at(became)
        return rule.test(at) and self._uncontested(rule, at)

    def _uncontested(self, rule: Rule, ctx: EvalContext) -> bool:
        """No rule that can take one of `rule`'s slots matches at `ctx.now`."""
        return all(
            not rival.test(ctx) if rival.id in self._record_only else rival.when.settled(ctx) is False
            for rival in self._rivals[rule.id]
        )


def _frozen_context(conversation: Conversation, e0: datetime, pauses: Pauses) -> EvalContext:
    """The record as the replay rebuilds it from its last event `e0` on (`Timeline.at`), without
    messages; moved in time with `.at(t)` (no condition reads `updated_at`)."""
    last_in, last_out = utc(conversation.last_inbound_at), utc(conversation.last_outbound_at)
    record = conversation.model_copy(
        update={
            "last_inbound_at": last_in,
            "last_outbound_at": last_out,
            "last_message_at": max((x for x in (last_in, last_out) if x), default=None),
            "assigned_at": utc(conversation.assigned_at),
        }
    )
    return EvalContext(record, e0, None, None, pauses)


def frozen_from(conversation: Conversation) -> datetime | None:
    """The conversation's last event as the replay sees it (`events`): from then on its
    rebuilt state is its record as read now. None when the record has no time at all."""
    times = [
        conversation.created_at,
        conversation.last_inbound_at,
        conversation.last_outbound_at,
        conversation.assigned_at,
        conversation.updated_at if conversation.status == "closed" else None,
    ]
    return max((t for t in map(utc, times) if t is not None), default=None)


def _pauses_move_after(pauses: Pauses, t: datetime) -> bool:
    return any(a > t or (b is not None and b > t) for intervals in pauses.values() for a, b in intervals)


def _slots(rule: Rule) -> frozenset[str]:
    return frozenset(a.conflict_slot for a in rule.then if a.conflict_slot is not None)


# --- replay ----------------------------------------------------------------------------------


def replay(
    ruleset: RuleSet,
    histories: Iterable[History],
    since: datetime,
    until: datetime,
    *,
    latency: timedelta = DEFAULT_LATENCY,
) -> Report:
    """What `ruleset` would have done between `since` and `until` (see the module docstring)."""
    report = Report(since, until, 0)
    for history in histories:
        report.conversations += 1
        if not history.idle:
            report.firings.extend(_replay_one(ruleset, history, since, until, latency))
    report.firings.sort(key=lambda f: (f.at, f.conversation_id, f.rule_id))
    return report


def _replay_one(
    ruleset: RuleSet, history: History, since: datetime, until: datetime, latency: timedelta
) -> list[Firing]:
    timeline = Timeline(history, ruleset.reads_customer_text)
    state = InMemoryState()
    fired: set[str] = set()
    out: list[Firing] = []
    changes = events(history)
    for index, (t, _kind) in enumerate(changes):
        end = min(changes[index + 1][0] if index + 1 < len(changes) else until, until)
        for at, snapshot, evaluation in _instants(ruleset, timeline, state, t, end):
            for match in evaluation.matches:
                if match.firing_key in fired:
                    continue
                fired.add(match.firing_key)
                if at < since:  # fired before the window: it only uses up its situation
                    continue
                state.record(match.rule_id, history.conversation.id)
                out.append(_firing(ruleset, timeline, match, at, snapshot, changes, latency))
    return out


def _instants(
    ruleset: RuleSet, timeline: Timeline, state: InMemoryState, start: datetime, end: datetime
) -> Iterator[tuple[datetime, Snapshot, Evaluation]]:
    """`start`, then each due-time the evaluator reports before `end`, each with its evaluation.

    One evaluation per instant serves both: due times do not depend on what has fired (a
    rule's due time is asked only when it does not match), and the caller records this
    instant's firings before the next instant is evaluated. No reasons: a firing does not
    carry them.
    """
    at = start
    for _ in range(MAX_STEPS_PER_GAP):
        snapshot = timeline.at(at)
        evaluation = evaluate(ruleset, snapshot, at, state, with_reasons=False)
        yield at, snapshot, evaluation
        due = evaluation.earliest_due
        if due is None or due >= end or due <= at:
            return
        at = due


def _firing(
    ruleset: RuleSet,
    timeline: Timeline,
    match: Match,
    at: datetime,
    snapshot: Snapshot,
    changes: Sequence[tuple[datetime, str]],
    latency: timedelta,
) -> Firing:
    rule = ruleset.get(match.rule_id)
    assert rule is not None
    return Firing(
        rule_id=match.rule_id,
        conversation_id=snapshot.conversation.id,
        at=at,
        firing_key=match.firing_key,
        actions=tuple(a.label() for a in match.actions),
        steps=_planned(match, snapshot.conversation),
        moot_by=_moot_by(ruleset, rule, timeline, match, at, changes, latency),
        waited_s=_waited(rule, snapshot.conversation, at),
    )


def _planned(match: Match, conversation: Conversation) -> tuple[str, ...]:
    """The planner's steps for this firing (pool assignments are resolved only at run time)."""
    ctx = PlanContext({conversation.id: conversation})
    steps = [_step_text(s) for s in all_steps(plan([(conversation.id, match)], ctx))]
    steps.extend(f"deferred: {why}" for _item, why in ctx.deferred)
    return tuple(steps)


def _step_text(step: Step) -> str:
    if step.bulk:
        return f"bulk {step.bulk.action} {step.bulk.as_fields()}"
    if step.kind == "tags":
        return "; ".join(tag_delta_words(delta) for delta in step.action["changes"].values())
    return f"{step.kind} {step.action.get('type', '')}".strip()


def _moot_by(
    ruleset: RuleSet,
    rule: Rule,
    timeline: Timeline,
    match: Match,
    at: datetime,
    changes: Sequence[tuple[datetime, str]],
    latency: timedelta,
) -> str | None:
    for t, kind in changes:
        if not at < t <= at + latency:
            continue
        again = evaluate(ruleset, timeline.at(t), t, with_reasons=False).matches
        if not any(m.rule_id == rule.id and m.firing_key == match.firing_key for m in again):
            return f"{kind} at {t.isoformat()}"
    return None


def is_sla_breach_rule(rule: Rule) -> bool:
    """A rule whose firings are SLA breaches (see the module docstring)."""
    conditions = [leaf.cond for leaf in rule.when.leaves()]
    keys = {cond.key for cond in conditions}
    if "sla" in keys:
        return any(isinstance(cond, SlaCondition) and cond.elapsed_share >= 1 for cond in conditions)
    return bool(keys & SLA_CONDITIONS) and not keys & ROUTING_CONDITIONS


def _waited(rule: Rule, conversation: Conversation, at: datetime) -> float | None:
    if not is_sla_breach_rule(rule):
        return None
    start = utc(conversation.last_inbound_at) or utc(conversation.created_at)
    if conversation.last_outbound_at is None:
        start = utc(conversation.created_at) or start
    return None if start is None else (at - start).total_seconds()


# --- output ----------------------------------------------------------------------------------


def format_table(report: Report, *, detail: int = 20) -> str:
    lines = [
        f"backtest {report.since.isoformat()} .. {report.until.isoformat()}: "
        f"{report.conversations} conversations, {len(report.firings)} firings, {len(report.moot())} moot",
        "",
        f"{'rule':<36} {'firings':>7} {'moot':>5} {'convs':>6}",
    ]
    for rule, row in sorted(report.per_rule().items()):
        lines.append(f"{rule:<36} {row['firings']:>7} {row['moot']:>5} {len(row['conversations']):>6}")
    lines += ["", "per day:"]
    for day, counts in report.per_day().items():
        lines.append(f"  {day}  " + ", ".join(f"{r} {n}" for r, n in sorted(counts.items())))
    breaches = report.breaches()
    lines += ["", f"SLA breaches caught: {len(breaches)}"]
    lines += [
        f"  c{f.conversation_id} {f.rule_id} at {f.at.isoformat()} (waited {_hm(f.waited_s)})"
        for f in breaches[:detail]
    ]
    lines += _more(len(breaches), detail)
    moot = report.moot()
    lines += ["", f"moot (a person acted first): {len(moot)}"]
    lines += [f"  c{f.conversation_id} {f.rule_id} at {f.at.isoformat()}: {f.moot_by}" for f in moot[:detail]]
    lines += _more(len(moot), detail)
    return "\n".join(lines)


def _more(total: int, shown: int) -> list[str]:
    return [f"  … and {total - shown} more (--json lists them all)"] if total > shown else []


def _hm(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes = int(seconds // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m"
