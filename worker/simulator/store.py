"""The simulator's in-memory state and the rules of mutation.

Records are plain dicts holding `datetime` objects; they become JSON only at
the HTTP edge (`to_wire`). Every change to a conversation goes through
`Store.change_conversation` so `updated_at` and the index can never disagree.
Callers hold `Store.lock` (one lock around the whole store).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from worker.clock import Clock
from worker.simulator.errors import BadRequest, not_found
from worker.simulator.index import INDEX_ORDERS, UpdatedAtIndex
from worker.simulator.query import RANGE_OPERATORS, FindParams, coerce, find_in, matches

CHANNELS: tuple[str, ...] = ("whatsapp", "instagram", "messenger", "webchat", "sms", "playground")
WINDOWED_CHANNELS = frozenset({"whatsapp", "instagram", "messenger"})
# Pipeline 1: 11 New, 12 In progress, 13 Waiting on customer, 14 Escalated; pipeline 2: 21-23.
PIPELINES: dict[int, tuple[int, ...]] = {1: (11, 12, 13, 14), 2: (21, 22, 23)}
USERS: tuple[int, ...] = tuple(range(101, 111))
AI_ASSISTANTS: tuple[int, ...] = (7, 8)

Rec = dict[str, Any]


def to_wire(value: Any) -> Any:
    """JSON-ready copy: datetimes as ISO 8601 with milliseconds and `Z`."""
    if isinstance(value, datetime):
        utc = value.astimezone(UTC)
        return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"
    if isinstance(value, dict):
        return {key: to_wire(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_wire(item) for item in value]
    return value


def truncate_ms(when: datetime) -> datetime:
    """Stored times have millisecond precision, exactly what the wire shows."""
    return when.astimezone(UTC).replace(microsecond=when.microsecond // 1000 * 1000)


def _values(wanted: Any) -> list[Any] | None:
    """The values an equality or `$in` filter allows (None when it is neither)."""
    if isinstance(wanted, str | int) and not isinstance(wanted, bool):
        return [wanted]
    if isinstance(wanted, Mapping) and len(wanted) == 1 and isinstance(wanted.get("$in"), list):
        values = wanted["$in"]
        return values if all(isinstance(v, str | int) for v in values) else None
    return None


def _coerce_id(value: Any) -> Any:
    """Query values arrive as text; numeric record ids are ints."""
    return int(value) if isinstance(value, str) and value.isdigit() else value


class Collection:
    """Records of one service keyed by their id, with optional equality indexes."""

    def __init__(self, name: str, id_field: str = "id", eq_indexes: Iterable[str] = ()) -> None:
        self.name = name
        self.id_field = id_field
        self.records: dict[Any, Rec] = {}
        self._eq: dict[str, dict[str, dict[Any, None]]] = {field: {} for field in eq_indexes}

    def __len__(self) -> int:
        return len(self.records)

    def insert(self, record: Rec) -> Rec:
        self.records[record[self.id_field]] = record
        for field, index in self._eq.items():
            index.setdefault(str(record.get(field)), {})[record[self.id_field]] = None
        return record

    def get(self, record_id: Any) -> Rec:
        record = self.records.get(record_id)
        if record is None:
            raise not_found(self.name, record_id)
        return record

    def remove(self, record_id: Any) -> Rec:
        record = self.get(record_id)
        del self.records[record_id]
        for field, index in self._eq.items():
            index.get(str(record.get(field)), {}).pop(record_id, None)
        return record

    def clear(self) -> None:
        self.records.clear()
        for index in self._eq.values():
            index.clear()

    def candidates(self, filters: Mapping[str, Any]) -> Iterable[Rec]:
        """Records that may match: narrowed by the id or an equality index when the filter allows
        (a value, an `$in` list, or an `$or` whose every branch is narrowed); else every record."""
        ids = self._narrowed(filters)
        if ids is None:
            return self.records.values()
        return [self.records[i] for i in dict.fromkeys(ids) if i in self.records]

    def _narrowed(self, filters: Mapping[str, Any]) -> list[Any] | None:
        wanted = filters.get(self.id_field)
        if isinstance(wanted, Mapping) and isinstance(wanted.get("$in"), list) and len(wanted) == 1:
            return [_coerce_id(v) for v in wanted["$in"]]
        for field, index in self._eq.items():
            values = _values(filters.get(field))
            if values is not None:
                return [rid for v in values for rid in index.get(str(v), {})]
        branches = filters.get("$or")
        if isinstance(branches, list) and branches and all(isinstance(b, Mapping) for b in branches):
            found: list[Any] = []
            for branch in branches:
                part = self._narrowed(branch)
                if part is None:
                    return None
                found.extend(part)
            return found
        return None

    def find(self, params: FindParams) -> tuple[int, list[Rec]]:
        return find_in(self.candidates(params.filters), params)


class ConversationCollection(Collection):
    """Conversations, with the `(updated_at, id)` index kept in step."""

    def __init__(self) -> None:
        super().__init__("conversations", "id")
        self.index = UpdatedAtIndex()
        # The ids matching a filter, in id order, per filter, while no conversation changed: the
        # resync pages every open conversation by `$sort[id]=1` and `$skip` (2,000 pages at
        # 100k); filtering and sorting every record for each page made the simulator, not the
        # worker, what a benchmark measured. Every change goes through insert, remove, load,
        # clear or set_updated_at (a change always moves updated_at), which drop them.
        self._by_id: dict[str, list[Any]] = {}

    def insert(self, record: Rec) -> Rec:
        super().insert(record)
        self.index.add((record["updated_at"], record["id"]))
        self._by_id.clear()
        return record

    def load(self, records: Iterable[Rec]) -> None:
        for record in records:
            super().insert(record)
        self.index.load((record["updated_at"], record["id"]) for record in self.records.values())
        self._by_id.clear()

    def remove(self, record_id: Any) -> Rec:
        record = super().remove(record_id)
        self.index.discard((record["updated_at"], record["id"]))
        self._by_id.clear()
        return record

    def clear(self) -> None:
        super().clear()
        self.index = UpdatedAtIndex()
        self._by_id.clear()

    def candidates(self, filters: Mapping[str, Any]) -> Iterable[Rec]:
        """By primary key when the query names ids (`id=` or `id[$in]`): O(ids), not O(N)."""
        wanted = _named_ids(filters.get("id"))
        if wanted is None:
            return super().candidates(filters)
        # Ascending ids: the order a scan gives, since ids are handed out in insertion order.
        return [self.records[key] for key in sorted(set(wanted)) if key in self.records]

    def set_updated_at(self, record: Rec, when: datetime) -> None:
        self.index.discard((record["updated_at"], record["id"]))
        record["updated_at"] = when
        self.index.add((when, record["id"]))
        self._by_id.clear()

    def find(self, params: FindParams) -> tuple[int, list[Rec]]:
        """Use the index for an updated_at range and/or an (updated_at, id) sort."""
        if params.sort == BY_ID and "id" not in params.filters and "updated_at" not in params.filters:
            return self._by_id_page(params)
        filters = dict(params.filters)
        condition = filters.get("updated_at")
        ranged = isinstance(condition, dict) and condition and set(condition) <= RANGE_OPERATORS
        reverse = INDEX_ORDERS.get(params.sort)
        if not ranged and reverse is None:
            return super().find(params)
        lo, hi = self.index.bounds(self._range(condition) if ranged else {})
        if ranged:
            del filters["updated_at"]
        if reverse is None:
            slice_ = (self.records[rid] for rid in self.index.ids(lo, hi))
            return find_in(slice_, FindParams(filters, params.sort, params.limit, params.skip))
        return self._ordered_page(lo, hi, reverse, filters, params)

    def _by_id_page(self, params: FindParams) -> tuple[int, list[Rec]]:
        """A page of the records matching the filters in id order: one scan per filter until
        a conversation changes, then O(page) per page."""
        key = repr(sorted(params.filters.items(), key=lambda item: item[0]))
        ids = self._by_id.get(key)
        if ids is None:
            ids = sorted(rid for rid, record in self.records.items() if matches(record, params.filters))
            self._by_id[key] = ids
        page = ids[params.skip : params.skip + params.limit]
        return len(ids), [self.records[rid] for rid in page]

    def _range(self, condition: Any) -> dict[str, datetime]:
        sample = datetime.now(UTC)  # any datetime: tells `coerce` the field's type
        bounds = {op: coerce("updated_at", raw, sample) for op, raw in condition.items()}
        if any(not isinstance(value, datetime) for value in bounds.values()):
            raise BadRequest("Invalid value for updated_at: expected an ISO 8601 date-time")
        return bounds

    def _ordered_page(
        self, lo: int, hi: int, reverse: bool, filters: dict[str, Any], params: FindParams
    ) -> tuple[int, list[Rec]]:
        if not filters:  # total is the range size; the page is a slice: O(log N + page), any $skip
            page_ids = self.index.page_ids(lo, hi, params.skip, params.limit, reverse=reverse)
            return hi - lo, [self.records[rid] for rid in page_ids]
        ids = self.index.ids(lo, hi, reverse=reverse)
        total, page = 0, []
        for rid in ids:
            record = self.records[rid]
            if not matches(record, filters):
                continue
            if params.skip <= total < params.skip + params.limit:
                page.append(record)
            total += 1
        return total, page


BY_ID = (("id", 1),)


def _named_ids(condition: Any) -> list[int] | None:
    """The ids an `id` filter names, or None when it is not a plain equality or `$in` of ints."""
    if isinstance(condition, dict) and set(condition) == {"$in"}:
        condition = condition["$in"]
    values = condition if isinstance(condition, list) else [condition]
    ids = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).isdigit():
            return None  # anything else is left to the generic scan (and its errors)
        ids.append(int(value))
    return ids


class Store:
    """All collections, id counters, saved views, and the clock that stamps changes."""

    def __init__(self, clock: Clock, organization_id: int) -> None:
        self.clock = clock
        self.organization_id = organization_id
        self.lock = threading.RLock()
        self.conversations = ConversationCollection()
        self.messages = {
            channel: Collection(f"conversation-messages-{channel}", "_id", ["conversation_id"])
            for channel in CHANNELS
        }
        self.contacts = Collection("contacts")
        self.predefined = Collection("conversation-predefined-messages")
        self.executions = Collection("automations-executions", "_id", ["conversation_id"])
        self.files = Collection("conversation-files", "_id")
        self.uploads: dict[str, int] = {}
        self.views: dict[int, dict[str, Any]] = {}
        self._counters: dict[str, Iterator[int]] = {}
        self.reset()

    def reset(self) -> None:
        for collection in self.all_collections():
            collection.clear()
        self.uploads.clear()
        self.views = default_views()
        self._counters = {name: itertools.count(1) for name in ("id", "contact", "predefined", "object")}

    def all_collections(self) -> list[Collection]:
        fixed = [self.conversations, self.contacts, self.predefined, self.executions, self.files]
        return fixed + list(self.messages.values())

    def now(self) -> datetime:
        return truncate_ms(self.clock.now())

    def next_id(self, kind: str) -> int:
        return next(self._counters[kind])

    def next_object_id(self) -> str:
        """MongoDB-looking `_id`: 24 hex digits, from a counter so runs are deterministic."""
        return f"{next(self._counters['object']):024x}"

    def bump_counters(self, *, conversation: int, contact: int, predefined: int, objects: int) -> None:
        """After seeding: continue numbering after the seeded records."""
        self._counters["id"] = itertools.count(conversation + 1)
        self._counters["contact"] = itertools.count(contact + 1)
        self._counters["predefined"] = itertools.count(predefined + 1)
        self._counters["object"] = itertools.count(objects + 1)

    # --- conversation mutation rules -----------------------------------------------------

    def change_conversation(self, record: Rec, changes: Mapping[str, Any]) -> bool:
        """Apply field changes with their side effects; bump updated_at when anything changed."""
        changed = {key: value for key, value in changes.items() if record.get(key) != value}
        if not changed:
            return False
        now = self.now()
        stage_moved = "pipeline_stage_id" in changed or "pipeline_id" in changed
        record.update(changed)
        if stage_moved:
            record["stage_entered_at"] = now
        if "owner_id" in changed:
            # When the assignment last changed, set or cleared: an unassignment is a new
            # assignment situation (`once: per_assignment`), so routing may act again.
            record["assigned_at"] = now
        self.conversations.set_updated_at(record, now)
        return True

    def touch(self, record: Rec) -> None:
        """A change that moves no field of its own (a note, a removed message)."""
        self.conversations.set_updated_at(record, self.now())

    def add_message(self, conversation: Rec, fields: Mapping[str, Any]) -> Rec:
        """Store a message and apply its effect on the conversation's timestamps."""
        now = self.now()
        message: Rec = {
            "_id": self.next_object_id(),
            "conversation_id": conversation["id"],
            "organization_id": conversation["organization_id"],
            "channel": conversation["channel"],
            "message_type": "text",
            "message_text": None,
            "created_at": now,
            "updated_at": now,
            **fields,
        }
        self.messages[conversation["channel"]].insert(message)
        self._apply_message_effect(conversation, message, now)
        return message

    def _apply_message_effect(self, conversation: Rec, message: Rec, now: datetime) -> None:
        if message["direction"] == "inbound":
            changes = {
                "last_inbound_at": now,
                "last_message_at": now,
                "unread_count": int(conversation.get("unread_count") or 0) + 1,
                "status": "open",  # a customer writing reopens a closed conversation
            }
        elif message["message_type"] == "note":
            changes = {}  # contract B: a note is not a reply
        else:
            changes = {"last_outbound_at": now, "last_message_at": now}
        if not self.change_conversation(conversation, changes):
            self.touch(conversation)

    def conversation(self, conversation_id: Any) -> Rec:
        """The conversation with this id (an int, or a string of digits) or 404."""
        try:
            key = int(conversation_id)
        except (TypeError, ValueError):
            raise not_found("conversations", conversation_id) from None
        return self.conversations.get(key)


def default_views() -> dict[int, dict[str, Any]]:
    """Saved views the bulk action's `view_id` can name (the contract leaves them open)."""
    return {
        1: {"status": "open"},
        2: {"status": "open", "owner_id": None},
        3: {"status": "closed"},
    }
