"""`Simulator`: the store, its services, audit log, faults and the admin controls.

The admin methods are what tests, demos and chaos runs use to play the other
side: a customer writing, a new conversation arriving, a human agent replying
or reassigning, time passing. The HTTP app exposes the same methods under
`/__admin/`.
"""

from __future__ import annotations

import copy
import hmac
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from worker.clock import Clock, FakeClock, SystemClock
from worker.simulator.app import build_app
from worker.simulator.audit import AuditEntry, AuditLog, IdempotencyCache
from worker.simulator.errors import Conflict
from worker.simulator.faults import FaultConfig, FaultInjector
from worker.simulator.seeding import generate
from worker.simulator.services import build_services, check_window
from worker.simulator.store import PIPELINES, Rec, Store
from worker.simulator.validate import check_stage

if TYPE_CHECKING:
    from starlette.applications import Starlette

DEFAULT_TOKEN = "sandbox-token"
HUMAN_AGENT_ID = 101
# Conversation fields the simulator keeps but the documented contract does not list
# (/work/shared/api-contract.md): a strict simulator never serves them.
EXTENSION_FIELDS = ("assigned_at", "stage_entered_at", "initiated_by")


class Simulator:
    """An in-memory Conversations API for one organization and one bearer token."""

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        token: str = DEFAULT_TOKEN,
        organization_id: int = 1,
        faults: FaultConfig | None = None,
        fault_seed: int = 0,
        strict: bool = False,
        array_limit: int | None = None,
    ) -> None:
        if not token:
            raise ValueError("Simulator needs a non-empty bearer token")
        self.clock: Clock = clock or SystemClock()
        self._token = token
        self.store = Store(self.clock, organization_id)
        self.services = build_services(self.store)
        self.audit = AuditLog()
        self.idempotency = IdempotencyCache()
        self.faults = FaultInjector(self.clock, faults, fault_seed)
        # Strict: serve only the contract's conversation fields (the worker must not need more).
        self.strict = strict
        if array_limit is not None and array_limit < 1:
            raise ValueError(f"array_limit must be at least 1 (or None: no limit), got {array_limit}")
        # Longest array a query may carry, like qs's `arrayLimit` (20 in a real Feathers server);
        # None: any length. A longer one is a 400 BadRequest, as Feathers answers it.
        self.array_limit = array_limit
        self.refused_arrays = 0  # queries answered 400 for an array over `array_limit`
        self._app: Starlette | None = None

    def __repr__(self) -> str:
        size = len(self.store.conversations)
        return f"Simulator(organization_id={self.organization_id}, conversations={size})"

    @property
    def token(self) -> str:
        return self._token

    @property
    def organization_id(self) -> int:
        return self.store.organization_id

    @property
    def lock(self) -> Any:
        return self.store.lock

    @property
    def app(self) -> Starlette:
        """The ASGI app (built once)."""
        if self._app is None:
            self._app = build_app(self)
        return self._app

    def served(self, service: str, body: Any) -> Any:
        """`body` as the API serves it: in strict mode without the extension fields."""
        if not self.strict or service != "conversations":
            return body
        if isinstance(body, dict) and isinstance(body.get("data"), list):
            return {**body, "data": [_documented(record) for record in body["data"]]}
        return _documented(body)

    def check_token(self, presented: str) -> bool:
        return hmac.compare_digest(presented.encode(), self._token.encode())

    # --- data -------------------------------------------------------------------------

    def seed(self, n: int, *, seed: int = 0) -> None:
        """Replace all data with n generated conversations (deterministic for n, seed, now)."""
        with self.lock:
            self.store.reset()
            data = generate(n, seed=seed, now=self.store.now(), organization_id=self.organization_id)
            self.store.conversations.load(data.conversations)
            for contact in data.contacts:
                self.store.contacts.insert(contact)
            for message in data.messages:
                self.store.messages[message["channel"]].insert(message)
            for record in data.predefined:
                self.store.predefined.insert(record)
            self.store.bump_counters(
                conversation=n, contact=n, predefined=len(data.predefined), objects=len(data.messages)
            )

    def reset(self) -> None:
        """Empty store, audit log and idempotency keys; faults off."""
        with self.lock:
            self.store.reset()
            self.audit.clear()
            self.idempotency.clear()
            self.faults.reset()

    def conversation(self, conversation_id: int) -> Rec:
        """A copy of the stored conversation (datetimes as datetime)."""
        with self.lock:
            return copy.deepcopy(self.store.conversation(conversation_id))

    def messages(self, conversation_id: int) -> list[Rec]:
        """Copies of a conversation's messages, oldest first."""
        with self.lock:
            channel = self.store.conversation(conversation_id)["channel"]
            found = self.store.messages[channel].candidates({"conversation_id": conversation_id})
            return sorted((copy.deepcopy(m) for m in found), key=lambda m: (m["created_at"], m["_id"]))

    def predefined_message(self, title: str, text: str, **fields: Any) -> Rec:
        """A canned reply someone made in the app."""
        with self.lock:
            now = self.store.now()
            record = {
                **fields,
                "id": self.store.next_id("predefined"),
                "organization_id": self.organization_id,
                "title": title,
                "message_text": text,
                "created_at": now,
                "updated_at": now,
            }
            return copy.deepcopy(self.store.predefined.insert(record))

    def add_view(self, view_id: int, filters: dict[str, Any]) -> None:
        """A saved view that bulk actions can target by `view_id`."""
        with self.lock:
            self.store.views[view_id] = dict(filters)

    # --- the other side of the conversation ---------------------------------------------

    def customer_message(self, conversation_id: int, text: str = "Hello?") -> Rec:
        """The customer writes: inbound message; reopens a closed conversation."""
        with self.lock:
            conversation = self.store.conversation(conversation_id)
            message = self.store.add_message(
                conversation,
                {"direction": "inbound", "message_text": text, "sender_type": "contact"},
            )
            return copy.deepcopy(message)

    def new_conversation(
        self,
        *,
        channel: str = "whatsapp",
        text: str = "Hi, I need help",
        contact_id: int | None = None,
        contact: dict[str, Any] | None = None,
        pipeline_id: int = 1,
        pipeline_stage_id: int | None = None,
        tags: list[str] | None = None,
    ) -> Rec:
        """A customer starts a conversation (with its first inbound message)."""
        stage = pipeline_stage_id if pipeline_stage_id is not None else PIPELINES.get(pipeline_id, (None,))[0]
        check_stage(pipeline_id, stage)
        with self.lock:
            if channel not in self.store.messages:
                raise ValueError(f"unknown channel {channel!r}")
            contact_id = contact_id if contact_id is not None else self._new_contact(contact or {})
            record = self._insert_conversation(channel, contact_id, pipeline_id, stage, tags or [])
            self.store.add_message(
                record, {"direction": "inbound", "message_text": text, "sender_type": "contact"}
            )
            return copy.deepcopy(record)

    def _new_contact(self, fields: dict[str, Any]) -> int:
        now = self.store.now()
        contact_id = self.store.next_id("contact")
        record = {"name": f"Customer {contact_id}", **fields, "id": contact_id}
        record |= {"organization_id": self.organization_id, "created_at": now, "updated_at": now}
        self.store.contacts.insert(record)
        return contact_id

    def _insert_conversation(
        self, channel: str, contact_id: int, pipeline_id: int, stage: int | None, tags: list[str]
    ) -> Rec:
        now = self.store.now()
        record: Rec = {
            "id": self.store.next_id("id"),
            "organization_id": self.organization_id,
            "channel": channel,
            "status": "open",
            "owner_id": None,
            "ai_assistant_id": None,
            "pipeline_id": pipeline_id,
            "pipeline_stage_id": stage,
            "contact_id": contact_id,
            "created_at": now,
            "updated_at": now,
            "last_message_at": None,
            "last_inbound_at": None,
            "last_outbound_at": None,
            "unread_count": 0,
            "tags": list(tags),
            "stage_entered_at": now,
            "assigned_at": None,
            "initiated_by": "customer",
        }
        return self.store.conversations.insert(record)

    def team_reply(
        self,
        conversation_id: int,
        text: str = "Thanks, looking into it.",
        *,
        user_id: int = HUMAN_AGENT_ID,
        message_type: str = "text",
        template_name: str | None = None,
    ) -> Rec:
        """A human agent replies in the app (not via the worker); the window rule applies."""
        with self.lock:
            conversation = self.store.conversation(conversation_id)
            check_window(self.store, conversation, message_type)
            fields: dict[str, Any] = {
                "direction": "outbound",
                "message_type": message_type,
                "message_text": text,
                "sender_type": "user",
                "user_id": user_id,
                "status": "sent",
            }
            if template_name is not None:
                fields["template_name"] = template_name
            message = self.store.add_message(conversation, fields)
            if message_type != "note":  # the agent has read the conversation
                self.store.change_conversation(conversation, {"unread_count": 0})
            return copy.deepcopy(message)

    def reassign(self, conversation_id: int, owner_id: int | None) -> Rec:
        """A human moves the conversation to another owner (or unassigns it)."""
        return self.human_change(conversation_id, {"owner_id": owner_id})

    def human_change(self, conversation_id: int, changes: dict[str, Any]) -> Rec:
        """Any field change made by a person in the app (status, stage, tags...)."""
        with self.lock:
            conversation = self.store.conversation(conversation_id)
            self.store.change_conversation(conversation, changes)
            return copy.deepcopy(conversation)

    # --- time, audit, faults ------------------------------------------------------------

    def _fake_clock(self) -> FakeClock:
        if not isinstance(self.clock, FakeClock):
            raise Conflict("The simulator's clock is the system clock; it cannot be moved")
        return self.clock

    def advance_clock(self, seconds: float | timedelta) -> datetime:
        return self._fake_clock().advance(seconds)

    def set_clock(self, when: datetime) -> datetime:
        self._fake_clock().set(when)
        return self.clock.now()

    def audit_log(self, since: int = 0) -> list[AuditEntry]:
        return self.audit.entries(since)

    def set_faults(
        self, config: FaultConfig | None = None, *, seed: int | None = None, **changes: Any
    ) -> None:
        """Replace or change the fault config, e.g. `set_faults(error_rate=0.2, seed=7)`."""
        for name in ("paths", "commit_then_fail_first"):
            if name in changes:
                changes[name] = tuple(changes[name])
        self.faults.configure(config, seed=seed, **changes)

    def fault_counts(self) -> dict[str, int]:
        return self.faults.counts()


def _documented(record: Any) -> Any:
    if not isinstance(record, dict):
        return record
    return {key: value for key, value in record.items() if key not in EXTENSION_FIELDS}
