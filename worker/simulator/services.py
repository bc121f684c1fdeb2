"""The Feathers services of the contract: one class per service, REST verbs as methods.

A service method takes a `Call` and returns a record (or an envelope) with
Python datetimes; the app serialises it. Methods a service lacks answer 405.
Callers hold the store lock.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from worker.simulator.errors import BadRequest, MethodNotAllowed, NotFound, Unprocessable
from worker.simulator.query import FindParams, matches, parse_find, project
from worker.simulator.store import CHANNELS, WINDOWED_CHANNELS, Collection, Rec, Store
from worker.simulator.validate import (
    check_organization,
    check_stage,
    is_int,
    optional_int,
    pop_organization,
    require_choice,
    require_int,
    require_str,
)

WINDOW = timedelta(hours=24)
MESSAGE_TYPES = ("text", "note", "template", "image", "audio", "video", "file")
FILE_CATEGORIES = ("image", "audio", "file", "video")
META_SEND_CHANNELS = ("whatsapp", "instagram", "messenger", "webchat")
UPLOAD_SECRET = b"inboxpilot-simulator-upload-signing"


@dataclass(frozen=True)
class Call:
    """One REST call as a service sees it."""

    id: str | None = None
    query: dict[str, Any] = field(default_factory=dict)
    body: dict[str, Any] = field(default_factory=dict)
    base_url: str = "http://127.0.0.1/"


class Service:
    """A Feathers service; every method answers 405 unless overridden."""

    def __init__(self, name: str, store: Store) -> None:
        self.name = name
        self.store = store

    def _unsupported(self, method: str) -> MethodNotAllowed:
        return MethodNotAllowed(f"Method '{method}' not allowed on service '{self.name}'")

    def find(self, call: Call) -> Any:
        raise self._unsupported("find")

    def get(self, call: Call) -> Any:
        raise self._unsupported("get")

    def create(self, call: Call) -> Any:
        raise self._unsupported("create")

    def patch(self, call: Call) -> Any:
        raise self._unsupported("patch")

    def remove(self, call: Call) -> Any:
        raise self._unsupported("remove")


def find_page(store: Store, collection: Collection, query: dict[str, Any]) -> dict[str, Any]:
    params: FindParams = parse_find(pop_organization(store, query))
    total, page = collection.find(params)
    data = [project(record, params.select, collection.id_field) for record in page]
    return {"total": total, "limit": params.limit, "skip": params.skip, "data": data}


class CollectionService(Service):
    """find/get over a collection; subclasses opt in to writes."""

    def __init__(self, name: str, store: Store, collection: Collection) -> None:
        super().__init__(name, store)
        self.collection = collection

    def find(self, call: Call) -> Any:
        return find_page(self.store, self.collection, call.query)

    def get(self, call: Call) -> Any:
        pop_organization(self.store, call.query)
        return self.collection.get(self._key(call.id))

    def _key(self, raw: str | None) -> Any:
        if self.collection.id_field == "_id":
            return raw
        try:
            return int(raw or "")
        except ValueError:
            raise NotFound(f"No record found for id '{raw}'") from None


# --- conversations --------------------------------------------------------------------

READ_ONLY_FIELDS = frozenset(
    {
        "id",
        "channel",
        "created_at",
        "updated_at",
        "last_message_at",
        "last_inbound_at",
        "last_outbound_at",
        "stage_entered_at",
        "assigned_at",
        "initiated_by",
    }
)


def _check_tags(body: Mapping[str, Any], name: str) -> None:
    value = body[name]
    if not isinstance(value, list) or not all(isinstance(tag, str) for tag in value):
        raise BadRequest("'tags' must be a list of strings", errors={"tags": "list of strings"})


def _check_unread(body: Mapping[str, Any], name: str) -> None:
    if not is_int(body[name]) or body[name] < 0:
        raise BadRequest("'unread_count' must be a non-negative integer")


PATCH_CHECKS: dict[str, Callable[[Mapping[str, Any], str], object]] = {
    "status": lambda body, name: require_choice(body, name, ("open", "closed")),
    "owner_id": optional_int,
    "ai_assistant_id": optional_int,
    "contact_id": optional_int,
    "pipeline_id": require_int,
    "pipeline_stage_id": require_int,
    "unread_count": _check_unread,
    "tags": _check_tags,
}


class ConversationsService(CollectionService):
    def patch(self, call: Call) -> Any:
        record = self.collection.get(self._key(call.id))
        changes = self._validated(call.body)
        check_stage(
            changes.get("pipeline_id", record.get("pipeline_id")),
            changes.get("pipeline_stage_id", record.get("pipeline_stage_id")),
        )
        self.store.change_conversation(record, changes)
        return record

    def _validated(self, body: Mapping[str, Any]) -> dict[str, Any]:
        check_organization(self.store, body.get("organization_id"))
        changes = {key: value for key, value in body.items() if key != "organization_id"}
        read_only = sorted(READ_ONLY_FIELDS & changes.keys())
        if read_only:
            raise BadRequest(
                f"Field '{read_only[0]}' is read-only", errors={f: "read-only" for f in read_only}
            )
        for name in changes.keys() & PATCH_CHECKS.keys():
            PATCH_CHECKS[name](changes, name)
        return changes

    def remove(self, call: Call) -> Any:
        record = self.collection.remove(self._key(call.id))
        messages = self.store.messages[record["channel"]]
        for message in messages.candidates({"conversation_id": record["id"]}):
            messages.remove(message["_id"])
        return record


# --- bulk actions ---------------------------------------------------------------------


def _assign(body: Mapping[str, Any]) -> dict[str, Any]:
    return {"owner_id": require_int(body, "owner_id")}


def _update_status(body: Mapping[str, Any]) -> dict[str, Any]:
    return {"status": require_choice(body, "status", ("open", "closed"))}


def _assign_ai(body: Mapping[str, Any]) -> dict[str, Any]:
    return {"ai_assistant_id": require_int(body, "ai_assistant_id")}


def _move(body: Mapping[str, Any]) -> dict[str, Any]:
    pipeline_id, stage_id = require_int(body, "pipeline_id"), require_int(body, "pipeline_stage_id")
    check_stage(pipeline_id, stage_id)
    return {"pipeline_id": pipeline_id, "pipeline_stage_id": stage_id}


BULK_ACTIONS: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    "assign": _assign,
    "unassign": lambda body: {"owner_id": None},
    "update_status": _update_status,
    "assign_ai_assistant": _assign_ai,
    "unassign_ai_assistant": lambda body: {"ai_assistant_id": None},
    "move": _move,
}
TARGETING = ("conversation_ids", "view_id", "filter")
FILTER_FIELDS = frozenset({"organization_id", "pipeline_id", "pipeline_stage_id", "status", "channel"})


class BulkActionsService(Service):
    def create(self, call: Call) -> Any:
        body = call.body
        check_organization(self.store, body.get("organization_id"))
        action = require_choice(body, "action", tuple(BULK_ACTIONS))
        changes = BULK_ACTIONS[action](body)
        targets = self._targets(body)
        updated = sum(self.store.change_conversation(record, changes) for record in targets)
        return {
            "action": action,
            "processed_count": len(targets),
            "updated_count": updated,
            "conversation_ids": [record["id"] for record in targets],
        }

    def _targets(self, body: Mapping[str, Any]) -> list[Rec]:
        given = [name for name in TARGETING if body.get(name) is not None]
        if len(given) != 1:
            raise BadRequest(
                "Exactly one of conversation_ids, view_id or filter is required"
                f" (got {', '.join(given) or 'none'})",
                data={"targeting": given},
            )
        return TARGET_RESOLVERS[given[0]](self.store, body[given[0]])


def _by_ids(store: Store, ids: Any) -> list[Rec]:
    if not isinstance(ids, list) or not all(is_int(item) for item in ids):
        raise BadRequest("'conversation_ids' must be a list of integers")
    records = store.conversations.records
    return [records[item] for item in dict.fromkeys(ids) if item in records]


def _by_view(store: Store, view_id: Any) -> list[Rec]:
    if not is_int(view_id):
        raise BadRequest("'view_id' must be an integer")
    view = store.views.get(view_id)
    if view is None:
        raise NotFound(f"No record found for id '{view_id}'", data={"service": "views"})
    return _matching(store, view)


def _by_filter(store: Store, raw: Any) -> list[Rec]:
    if not isinstance(raw, dict):
        raise BadRequest("'filter' must be an object")
    unknown = sorted(raw.keys() - FILTER_FIELDS)
    if unknown:
        raise BadRequest(f"Unknown filter field '{unknown[0]}'", data={"allowed": sorted(FILTER_FIELDS)})
    if raw.get("organization_id") is None:
        raise BadRequest("'filter.organization_id' is required")
    check_organization(store, raw["organization_id"])
    if "status" in raw:
        require_choice(raw, "status", ("open", "closed"))
    if "channel" in raw:
        require_choice(raw, "channel", CHANNELS)
    return _matching(store, {key: value for key, value in raw.items() if key != "organization_id"})


def _matching(store: Store, filters: dict[str, Any]) -> list[Rec]:
    return [record for record in store.conversations.records.values() if matches(record, filters)]


TARGET_RESOLVERS: dict[str, Callable[[Store, Any], list[Rec]]] = {
    "conversation_ids": _by_ids,
    "view_id": _by_view,
    "filter": _by_filter,
}


# --- messages and sends ---------------------------------------------------------------


def window_open(store: Store, conversation: Rec) -> bool:
    """Meta's 24-hour customer-service window: open within 24 h of the last inbound."""
    last_inbound = conversation.get("last_inbound_at")
    return last_inbound is not None and store.now() - last_inbound <= WINDOW


def check_window(store: Store, conversation: Rec, message_type: str) -> None:
    """Refuse a customer-facing send on a Meta channel outside the window (422)."""
    if conversation["channel"] not in WINDOWED_CHANNELS or message_type == "note":
        return
    if message_type == "template" and conversation["channel"] == "whatsapp":
        return
    if window_open(store, conversation):
        return
    raise Unprocessable(
        f"The 24-hour customer service window is closed for conversation {conversation['id']}"
        " (no customer message in the last 24 hours); send a note, or a template on WhatsApp",
        data={"reason": "window_closed", "conversation_id": conversation["id"]},
    )


MEDIA_FIELDS = ("s3_path", "conversation_file_id", "file_size")


def send(store: Store, channel: str, body: Mapping[str, Any], sender: Mapping[str, Any]) -> Rec:
    """Validate and store an outbound message on `channel`; apply its timestamp effects."""
    check_organization(store, body.get("organization_id"))
    conversation = store.conversation(require_int(body, "conversation_id"))
    if conversation["channel"] != channel:
        raise BadRequest(f"Conversation {conversation['id']} is on channel {conversation['channel']}")
    message_type = require_choice({"t": body.get("message_type", "text")}, "t", MESSAGE_TYPES)
    extra = _send_extra(channel, body, message_type)
    _check_file(store, conversation, extra.get("conversation_file_id"))
    if channel == "playground":
        _check_playground(store, body, conversation)
    check_window(store, conversation, message_type)
    fields = {"direction": "outbound", "message_type": message_type, "status": "sent", **extra, **sender}
    fields["message_text"] = body.get("message_text")
    return store.add_message(conversation, fields)


def _send_extra(channel: str, body: Mapping[str, Any], message_type: str) -> dict[str, Any]:
    extra = {name: body[name] for name in MEDIA_FIELDS if body.get(name) is not None}
    if message_type == "template":
        if channel != "whatsapp":
            raise BadRequest("Templates can only be sent on whatsapp")
        extra["template_name"] = require_str(body, "template_name")
        return extra
    text = body.get("message_text")
    if text is not None and not isinstance(text, str):
        raise BadRequest("'message_text' must be a string")
    if not text and not extra.get("s3_path") and not extra.get("conversation_file_id"):
        raise BadRequest("'message_text' is required unless the message carries media")
    return extra


def _check_file(store: Store, conversation: Rec, file_id: Any) -> None:
    """A send's `conversation_file_id` names a file record of this conversation."""
    if file_id is None:
        return
    record = store.files.records.get(file_id) if isinstance(file_id, str) else None
    if record is None or record.get("conversation_id") != conversation["id"]:
        raise BadRequest(
            f"conversation_file_id {file_id!r} is not a file of conversation {conversation['id']}"
        )


def _check_playground(store: Store, body: Mapping[str, Any], conversation: Rec) -> None:
    if body.get("organization_id") is None:
        raise BadRequest("'organization_id' is required on the playground channel")
    contact_id = require_int(body, "contact_id")
    if contact_id != conversation.get("contact_id"):
        raise BadRequest(f"contact_id {contact_id} is not the contact of conversation {conversation['id']}")


API_SENDER = {"sender_type": "api"}


class MessagesService(CollectionService):
    """`/conversation-messages-{channel}`: find/get/remove; create (a send) on sms and playground."""

    def __init__(self, store: Store, channel: str, *, can_send: bool) -> None:
        super().__init__(f"conversation-messages-{channel}", store, store.messages[channel])
        self.channel = channel
        self.can_send = can_send

    def create(self, call: Call) -> Any:
        if not self.can_send:
            raise self._unsupported("create")
        return send(self.store, self.channel, call.body, API_SENDER)

    def remove(self, call: Call) -> Any:
        message = self.collection.remove(self._key(call.id))
        conversation = self.store.conversations.records.get(message["conversation_id"])
        if conversation is not None:
            self.store.touch(conversation)
        return message


class TransformOutgoingService(Service):
    """`/conversation-messages-transform-outgoing-{channel}`: create = send."""

    def __init__(self, store: Store, channel: str) -> None:
        super().__init__(f"conversation-messages-transform-outgoing-{channel}", store)
        self.channel = channel

    def create(self, call: Call) -> Any:
        return send(self.store, self.channel, call.body, API_SENDER)


# --- the rest -------------------------------------------------------------------------


class PredefinedService(CollectionService):
    def create(self, call: Call) -> Any:
        check_organization(self.store, call.body.get("organization_id"))
        now = self.store.now()
        record = {
            **call.body,
            "id": self.store.next_id("predefined"),
            "organization_id": self.store.organization_id,
            "title": require_str(call.body, "title"),
            "message_text": require_str(call.body, "message_text"),
            "created_at": now,
            "updated_at": now,
        }
        return self.collection.insert(record)

    def patch(self, call: Call) -> Any:
        record = self.collection.get(self._key(call.id))
        check_organization(self.store, call.body.get("organization_id"))
        changes = {k: v for k, v in call.body.items() if k not in ("id", "organization_id", "created_at")}
        for name in ("title", "message_text"):
            if name in changes:
                require_str(changes, name)
        record.update(changes, updated_at=self.store.now())
        return record

    def remove(self, call: Call) -> Any:
        return self.collection.remove(self._key(call.id))


class ExecutionsService(CollectionService):
    """Stores the body of each run; find/get are a simulator extension for read-back."""

    def create(self, call: Call) -> Any:
        body = call.body
        if body.get("organization_id") is None:
            raise BadRequest("'organization_id' is required")
        check_organization(self.store, body["organization_id"])
        if not is_int(body.get("automation_id")) and not isinstance(body.get("automation_id"), str):
            raise BadRequest("'automation_id' is required")
        self.store.conversation(require_int(body, "conversation_id"))
        _check_initial_payload(body.get("initial_payload"))
        record = {
            **body,
            "_id": self.store.next_object_id(),
            "status": "queued",
            "created_at": self.store.now(),
        }
        return self.collection.insert(record)


def _check_initial_payload(payload: Any) -> None:
    if not isinstance(payload, dict):
        raise BadRequest("'initial_payload' must be an object {conversation, contact, messages}")
    if not isinstance(payload.get("conversation"), dict):
        raise BadRequest("'initial_payload.conversation' must be an object")
    if "contact" not in payload or not isinstance(payload["contact"], dict | None):
        raise BadRequest("'initial_payload.contact' must be an object or null")
    if not isinstance(payload.get("messages"), list):
        raise BadRequest("'initial_payload.messages' must be a list")


FILE_FIELDS_STR = ("file_name", "file_type", "s3_key", "s3_path")


class FilesService(CollectionService):
    def create(self, call: Call) -> Any:
        body = call.body
        if body.get("organization_id") is None:
            raise BadRequest("'organization_id' is required")
        check_organization(self.store, body["organization_id"])
        self.store.conversation(require_int(body, "conversation_id"))
        for name in FILE_FIELDS_STR:
            require_str(body, name)
        require_int(body, "file_size")
        require_choice(body, "file_category", FILE_CATEGORIES)
        if body["s3_key"] not in self.store.uploads:
            raise BadRequest(
                f"No uploaded object at s3_key {body['s3_key']!r}: PUT the file to its signed URL first"
            )
        record = {**body, "_id": self.store.next_object_id(), "created_at": self.store.now()}
        return self.collection.insert(record)


def upload_signature(key: str) -> str:
    return hmac.new(UPLOAD_SECRET, key.encode(), hashlib.sha256).hexdigest()


class SigningService(Service):
    """`/s3-url-signing`: a URL on the simulator itself (`PUT /__uploads/<key>`) so uploads work."""

    def create(self, call: Call) -> Any:
        check_organization(self.store, call.body.get("organization_id"))
        file_name = re.sub(r"[^A-Za-z0-9._-]", "_", require_str(call.body, "file_name"))
        key = f"org-{self.store.organization_id}/uploads/{self.store.next_object_id()}/{file_name}"
        expires_at = self.store.now() + timedelta(minutes=15)
        return {
            "url": f"{call.base_url}__uploads/{key}?X-Amz-Signature={upload_signature(key)}",
            "method": "PUT",
            "s3_key": key,
            "s3_path": f"s3://inboxpilot-sandbox/{key}",
            "expires_at": expires_at,
        }


class ContactsService(CollectionService):
    """`/contacts`: get (and find)."""


def build_services(store: Store) -> dict[str, Service]:
    """Service name (the URL path without `/`) -> service."""
    services: list[Service] = [
        ConversationsService("conversations", store, store.conversations),
        BulkActionsService("conversations-bulk-actions", store),
        PredefinedService("conversation-predefined-messages", store, store.predefined),
        ExecutionsService("automations-executions", store, store.executions),
        ContactsService("contacts", store, store.contacts),
        FilesService("conversation-files", store, store.files),
        SigningService("s3-url-signing", store),
    ]
    services += [MessagesService(store, ch, can_send=ch in ("sms", "playground")) for ch in CHANNELS]
    services += [TransformOutgoingService(store, ch) for ch in META_SEND_CHANNELS]
    return {service.name: service for service in services}
