"""Typed helpers for every service of the Conversations API, built on `ApiClient`.

`Services(client)` groups them: `.conversations`, `.contacts`, `.messages`,
`.bulk`, `.sends`, `.predefined`, `.automations`, `.files`. Each helper knows
its path, the query the app itself would send, and where `organization_id` goes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple

from worker.api.client import ApiClient, parse_record
from worker.api.errors import MalformedResponse, NotFound
from worker.api.models import (
    AutomationExecution,
    Contact,
    Conversation,
    ConversationFile,
    Message,
    PredefinedMessage,
    SignedUpload,
)
from worker.config import MAX_PAGE_SIZE

MAX_BULK_IDS = 50  # the app's own "select all" works in pages of 50; so do we
MessageType = Literal["text", "note", "template"]
BulkAction = Literal[
    "assign", "unassign", "update_status", "assign_ai_assistant", "unassign_ai_assistant", "move"
]

CONVERSATIONS = "/conversations"
CONTACTS = "/contacts"
BULK_ACTIONS = "/conversations-bulk-actions"
PREDEFINED = "/conversation-predefined-messages"
AUTOMATION_EXECUTIONS = "/automations-executions"
CONVERSATION_FILES = "/conversation-files"
S3_URL_SIGNING = "/s3-url-signing"
# Where customer-facing content is sent, per channel (contract A, "Sending").
SEND_PATHS: dict[str, str] = {
    "whatsapp": "/conversation-messages-transform-outgoing-whatsapp",
    "instagram": "/conversation-messages-transform-outgoing-instagram",
    "messenger": "/conversation-messages-transform-outgoing-messenger",
    "webchat": "/conversation-messages-transform-outgoing-webchat",
    "sms": "/conversation-messages-sms",
    "playground": "/conversation-messages-playground",
}
NEWEST_FIRST = {"created_at": -1, "_id": -1}
OLDEST_FIRST = {"created_at": 1, "_id": 1}
# Packed message reads: conversation by conversation, each newest first.
BY_CONVERSATION = {"conversation_id": 1, "created_at": -1, "_id": -1}


class MessageRange(NamedTuple):
    """A conversation's messages created after `start` (at or after unless `strict`; None: from
    the first) and, when `until` is set, at or before `until`."""

    start: datetime | None
    strict: bool = False
    until: datetime | None = None


@dataclass(frozen=True)
class PackedPage:
    """One packed find (`MessagesService.packed_page`): the messages it read per conversation,
    the conversations it read to the end of their range, and the message where it cut the one
    conversation it could not finish (its range goes on at or before that message)."""

    messages: dict[int, list[Message]]
    complete: frozenset[int]
    cut: Message | None


def _within(message: Message, window: tuple[datetime | None, bool]) -> bool:
    start, strict = window
    at = message.created_at
    if start is None or at is None:
        return True
    at = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
    return at > start if strict else at >= start


def _in_range(message: Message, window: MessageRange) -> bool:
    at = message.created_at
    if at is None:
        return True
    at = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
    return _within(message, (window.start, window.strict)) and (window.until is None or at <= window.until)


def messages_path(channel: str) -> str:
    """The read service of a channel's messages."""
    if channel not in SEND_PATHS:
        raise ValueError(f"unknown channel {channel!r}; expected one of {', '.join(SEND_PATHS)}")
    return f"/conversation-messages-{channel}"


class ConversationsService:
    """`/conversations`: find (changed since), get, patch, remove."""

    def __init__(self, client: ApiClient) -> None:
        self._client = client

    def find(
        self, query: Mapping[str, Any] | None = None, *, sort: Mapping[str, int] | None = None
    ) -> Iterator[Conversation]:
        full = {"organization_id": self._client.organization_id, **(query or {})}
        return self._client.find_all_as(Conversation, CONVERSATIONS, full, sort=sort)

    def changed_since(
        self, since: datetime | str | None, query: Mapping[str, Any] | None = None
    ) -> Iterator[Conversation]:
        """Conversations with `updated_at >= since`, oldest change first (id breaks ties).

        Pages by `$skip`: a record updated mid-pass moves to the end (seen once,
        deduped), but the records behind it shift one place earlier, so one may be
        missed in this pass. The poller pages on a moving `updated_at` bound instead.
        """
        full = dict(query or {})
        if since is not None:
            full["updated_at"] = {"$gte": since}
        return self.find(full, sort={"updated_at": 1, "id": 1})

    def get(self, conversation_id: int) -> Conversation:
        return parse_record(Conversation, self._get_raw(conversation_id), CONVERSATIONS)

    def _get_raw(self, conversation_id: int) -> dict[str, Any]:
        query = {"organization_id": self._client.organization_id}
        return self._client.get(CONVERSATIONS, conversation_id, query)

    def patch(
        self, conversation_id: int, fields: Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> Conversation:
        body = self._client.patch(CONVERSATIONS, conversation_id, fields, idempotency_key=idempotency_key)
        return parse_record(Conversation, body, CONVERSATIONS)

    def remove(self, conversation_id: int) -> None:
        self._client.remove(CONVERSATIONS, conversation_id)


class ContactsService:
    """`/contacts`: get, and find by `id[$in]` (50 per request)."""

    def __init__(self, client: ApiClient) -> None:
        self._client = client

    def get(self, contact_id: int) -> Contact:
        return parse_record(Contact, self._client.get(CONTACTS, contact_id), CONTACTS)

    def by_ids(self, contact_ids: Iterable[int]) -> dict[int, Contact]:
        """Contacts by id, one `id[$in]` find per 50 ids (20 on a server that refuses more:
        `ApiClient.batch_limit`); ids not found are absent (deleted)."""
        wanted = sorted(set(contact_ids))
        found: dict[int, Contact] = {}
        size = self._client.batch_limit
        for start in range(0, len(wanted), size):
            query = {"id": {"$in": wanted[start : start + size]}}
            for contact in self._client.find_all_as(Contact, CONTACTS, query):
                found[contact.id] = contact
        return found


class MessagesService:
    """`/conversation-messages-{channel}`: read a conversation's messages."""

    def __init__(self, client: ApiClient) -> None:
        self._client = client

    def latest(self, channel: str, conversation_id: int, limit: int = MAX_PAGE_SIZE) -> list[Message]:
        """The newest `limit` messages, newest first (one page, as the app reads them)."""
        return [
            parse_record(Message, m, messages_path(channel))
            for m in self.latest_raw(channel, conversation_id, limit)
        ]

    def latest_raw(
        self, channel: str, conversation_id: int, limit: int = MAX_PAGE_SIZE
    ) -> list[dict[str, Any]]:
        if not 1 <= limit <= MAX_PAGE_SIZE:
            raise ValueError(f"limit must be between 1 and {MAX_PAGE_SIZE}, got {limit}")
        query = {"conversation_id": conversation_id, "$sort": NEWEST_FIRST, "$limit": limit}
        return self._client.find_page(messages_path(channel), query).data

    def since_many(
        self, channel: str, windows: Mapping[int, tuple[datetime | None, bool]], *, notes: bool = True
    ) -> dict[int, list[Message]]:
        """Messages of up to 50 conversations, each created after its own instant, newest first, in
        one find: ``$or`` of ``(conversation_id, created_at > or >= start)`` pairs (a window is
        ``(start, strict)``; start None: every message), paged until every match is read (a
        conversation may have more than 50 new ones). `notes=False` leaves internal notes out."""
        if not 1 <= len(windows) <= MAX_PAGE_SIZE:
            raise ValueError(f"since_many takes 1 to {MAX_PAGE_SIZE} conversations, got {len(windows)}")
        branches: list[dict[str, Any]] = []
        for cid, (start, strict) in sorted(windows.items()):
            branch: dict[str, Any] = {"conversation_id": cid}
            if start is not None:
                branch["created_at"] = {"$gt" if strict else "$gte": start}
            branches.append(branch)
        query: dict[str, Any] = {"$or": branches}
        if not notes:
            query["message_type"] = {"$ne": "note"}
        out: dict[int, list[Message]] = {cid: [] for cid in windows}
        path = messages_path(channel)
        # A malformed message fails the find (parse_record raises) rather than vanishing from
        # a snapshot: the reader then reads the batch one conversation at a time.
        found = self._client.find_all(path, query, sort=NEWEST_FIRST, id_key="_id")
        for message in (parse_record(Message, raw, path) for raw in found):
            # A server that ignores part of the filter must not mix conversations or windows.
            keep = notes or message.message_type != "note"
            if keep and message.conversation_id in out and _within(message, windows[message.conversation_id]):
                out[message.conversation_id].append(message)
        return out

    def packed_page(
        self, channel: str, windows: Mapping[int, MessageRange], *, notes: bool = True
    ) -> PackedPage:
        """One find over up to 50 conversations' ranges, sorted conversation by conversation
        (ascending id), each newest first, `$limit` 50 and no `$skip`: a full page finishes
        every conversation before the last one it holds and cuts that one; those after it are
        not read. The reader packs the next find with the cut conversation (its range ending
        at the cut) and the next conversations, so every page but a channel's last is full.
        A server that does not keep the order fails the find (MalformedResponse)."""
        if not 1 <= len(windows) <= MAX_PAGE_SIZE:
            raise ValueError(f"packed_page takes 1 to {MAX_PAGE_SIZE} conversations, got {len(windows)}")
        branches: list[dict[str, Any]] = []
        for cid, window in sorted(windows.items()):
            branch: dict[str, Any] = {"conversation_id": cid}
            bounds: dict[str, datetime] = {}
            if window.start is not None:
                bounds["$gt" if window.strict else "$gte"] = window.start
            if window.until is not None:
                bounds["$lte"] = window.until
            if bounds:
                branch["created_at"] = bounds
            branches.append(branch)
        query: dict[str, Any] = {"$or": branches, "$sort": BY_CONVERSATION, "$limit": MAX_PAGE_SIZE}
        if not notes:
            query["message_type"] = {"$ne": "note"}
        path = messages_path(channel)
        page = self._client.find_page(path, query)
        found = [parse_record(Message, raw, path) for raw in page.data]
        order = [m.conversation_id for m in found]
        if order != sorted(order):
            raise MalformedResponse("messages not sorted by conversation_id", method="GET", path=path)
        out: dict[int, list[Message]] = {cid: [] for cid in windows}
        for message in found:
            keep = notes or message.message_type != "note"
            if (
                keep
                and message.conversation_id in out
                and _in_range(message, windows[message.conversation_id])
            ):
                out[message.conversation_id].append(message)
        more = page.received >= max(1, min(page.limit, MAX_PAGE_SIZE)) and page.total > page.received
        if not more:
            return PackedPage(out, frozenset(windows), None)
        if not found:
            raise MalformedResponse("a full page of messages without a message", method="GET", path=path)
        cut = found[-1]
        return PackedPage(out, frozenset(c for c in windows if c < cut.conversation_id), cut)

    def of_conversations(self, channel: str, conversation_ids: Sequence[int]) -> Iterator[Message]:
        """Every message of up to 50 conversations, oldest first: one paged `conversation_id[$in]` find."""
        if not 1 <= len(conversation_ids) <= MAX_PAGE_SIZE:
            raise ValueError(f"of_conversations takes 1 to {MAX_PAGE_SIZE} ids, got {len(conversation_ids)}")
        query = {"conversation_id": {"$in": sorted(set(conversation_ids))}}
        return self._client.find_all_as(
            Message, messages_path(channel), query, sort=OLDEST_FIRST, id_key="_id"
        )

    def all_for(self, channel: str, conversation_id: int) -> Iterator[Message]:
        """Every message of a conversation, oldest first."""
        return self._client.find_all_as(
            Message,
            messages_path(channel),
            {"conversation_id": conversation_id},
            sort=OLDEST_FIRST,
            id_key="_id",
        )

    def get(self, channel: str, message_id: str) -> Message:
        path = messages_path(channel)
        return parse_record(Message, self._client.get(path, message_id), path)

    def remove(self, channel: str, message_id: str) -> None:
        self._client.remove(messages_path(channel), message_id)


class BulkActionsService:
    """`/conversations-bulk-actions`: one action on exactly one target set."""

    def __init__(self, client: ApiClient) -> None:
        self._client = client

    def bulk_action(
        self,
        action: BulkAction | str,
        *,
        conversation_ids: Sequence[int] | None = None,
        view_id: int | str | None = None,
        filter: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> int:
        """Apply `action` (with its `fields`, e.g. `owner_id=`) and return `processed_count`."""
        body: dict[str, Any] = {"action": action, **fields, **_target(conversation_ids, view_id, filter)}
        if "filter" in body:
            body["filter"] = {"organization_id": self._client.organization_id, **body["filter"]}
        result = self._client.create(BULK_ACTIONS, body, idempotency_key=idempotency_key)
        count = result.get("processed_count")
        if not isinstance(count, int):
            raise MalformedResponse("bulk action answer has no integer processed_count", path=BULK_ACTIONS)
        return count


def _target(
    conversation_ids: Sequence[int] | None, view_id: int | str | None, filter: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The one targeting mode, checked before anything is sent."""
    given = {
        name: value
        for name, value in (("conversation_ids", conversation_ids), ("view_id", view_id), ("filter", filter))
        if value is not None
    }
    if len(given) != 1:
        names = ", ".join(given) or "none"
        raise ValueError(
            f"a bulk action needs exactly one of conversation_ids, view_id, filter (got {names})"
        )
    if conversation_ids is not None:
        ids = [int(i) for i in conversation_ids]
        if not 1 <= len(ids) <= MAX_BULK_IDS:
            raise ValueError(f"conversation_ids must hold 1 to {MAX_BULK_IDS} ids, got {len(ids)}")
        return {"conversation_ids": ids}
    if filter is not None:
        return {"filter": dict(filter)}
    return {"view_id": view_id}


class SendsService:
    """Customer-facing sends and internal notes, to the right endpoint per channel."""

    def __init__(self, client: ApiClient) -> None:
        self._client = client

    def send_message(
        self,
        conversation: Conversation,
        text: str,
        message_type: MessageType = "text",
        *,
        media: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> Message:
        """Send `text` (or a note/template) into `conversation` through its channel's endpoint."""
        path = SEND_PATHS.get(conversation.channel)
        if path is None:
            raise ValueError(
                f"conversation {conversation.id}: no send endpoint for channel {conversation.channel!r}"
            )
        body: dict[str, Any] = {
            "conversation_id": conversation.id,
            "message_text": text,
            "message_type": message_type,
            **(media or {}),
            **fields,
        }
        if conversation.channel == "playground":
            body.update(self._playground_fields(conversation))
        return parse_record(Message, self._client.create(path, body, idempotency_key=idempotency_key), path)

    def _playground_fields(self, conversation: Conversation) -> dict[str, Any]:
        if conversation.contact_id is None:
            raise ValueError(f"conversation {conversation.id}: a playground send needs a contact_id")
        return {"organization_id": self._client.organization_id, "contact_id": conversation.contact_id}


class PredefinedMessagesService:
    """`/conversation-predefined-messages`: canned replies."""

    def __init__(self, client: ApiClient) -> None:
        self._client = client

    def find(self, query: Mapping[str, Any] | None = None) -> Iterator[PredefinedMessage]:
        full = {"organization_id": self._client.organization_id, **(query or {})}
        return self._client.find_all_as(PredefinedMessage, PREDEFINED, full)

    def get(self, message_id: int) -> PredefinedMessage:
        return parse_record(PredefinedMessage, self._client.get(PREDEFINED, message_id), PREDEFINED)

    def get_by_title(self, title: str) -> PredefinedMessage | None:
        """The canned reply with this exact title (lowest id if several), or None."""
        return next(iter(self.find({"title": title})), None)

    def create(
        self, title: str, message_text: str, *, idempotency_key: str | None = None, **fields: Any
    ) -> PredefinedMessage:
        body = {
            "organization_id": self._client.organization_id,
            "title": title,
            "message_text": message_text,
            **fields,
        }
        created = self._client.create(PREDEFINED, body, idempotency_key=idempotency_key)
        return parse_record(PredefinedMessage, created, PREDEFINED)

    def patch(
        self, message_id: int, fields: Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> PredefinedMessage:
        patched = self._client.patch(PREDEFINED, message_id, fields, idempotency_key=idempotency_key)
        return parse_record(PredefinedMessage, patched, PREDEFINED)

    def remove(self, message_id: int) -> None:
        self._client.remove(PREDEFINED, message_id)


class AutomationsService:
    """`/automations-executions`: run an automation with the context the app would build."""

    def __init__(self, client: ApiClient) -> None:
        self._client = client

    def build_initial_payload(self, conversation_id: int) -> dict[str, Any]:
        """`{conversation, contact, messages}` as the app builds it: raw records, messages newest first."""
        conversation = ConversationsService(self._client)._get_raw(conversation_id)
        contact = self._contact_or_none(conversation.get("contact_id"))
        channel = str(conversation.get("channel", ""))
        messages = MessagesService(self._client).latest_raw(channel, conversation_id, MAX_PAGE_SIZE)
        return {"conversation": conversation, "contact": contact, "messages": messages}

    def _contact_or_none(self, contact_id: Any) -> dict[str, Any] | None:
        if contact_id is None:
            return None
        try:
            return self._client.get(CONTACTS, contact_id)
        except NotFound:
            return None  # a deleted contact: the app passes null rather than failing the run

    def run(
        self,
        automation_id: int | str,
        conversation_id: int,
        *,
        initial_payload: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> AutomationExecution:
        if initial_payload is None:
            initial_payload = self.build_initial_payload(conversation_id)
        body = {
            "automation_id": automation_id,
            "organization_id": self._client.organization_id,
            "conversation_id": conversation_id,
            "initial_payload": dict(initial_payload),
        }
        created = self._client.create(AUTOMATION_EXECUTIONS, body, idempotency_key=idempotency_key)
        return parse_record(AutomationExecution, created, AUTOMATION_EXECUTIONS)

    def runs_since(
        self, automation_id: int | str, conversation_id: int, since: datetime | None
    ) -> list[AutomationExecution]:
        """Runs of `automation_id` for the conversation created at or after `since` (a read-back:
        a find the documentation does not promise, so callers treat an error as "cannot say")."""
        query: dict[str, Any] = {
            "organization_id": self._client.organization_id,
            "automation_id": automation_id,
            "conversation_id": conversation_id,
            "$limit": 1,
        }
        if since is not None:
            query["created_at"] = {"$gte": since}
        page = self._client.find_page(AUTOMATION_EXECUTIONS, query)
        return self._client.parse_records(AutomationExecution, page.data, AUTOMATION_EXECUTIONS)


class FilesService:
    """Attachments: upload signing and the file record a send may carry."""

    def __init__(self, client: ApiClient) -> None:
        self._client = client

    def sign_upload(
        self, file_name: str, file_type: str, *, idempotency_key: str | None = None, **fields: Any
    ) -> SignedUpload:
        body = {
            "organization_id": self._client.organization_id,
            "file_name": file_name,
            "file_type": file_type,
            **fields,
        }
        signed = self._client.create(S3_URL_SIGNING, body, idempotency_key=idempotency_key)
        return parse_record(SignedUpload, signed, S3_URL_SIGNING)

    def put(self, signed: SignedUpload, data: bytes, file_type: str) -> None:
        """Upload the file's bytes to the signed URL (no token: the signature is the permission)."""
        self._client.put_signed(signed.url, data, file_type)

    def create_file(
        self,
        conversation_id: int,
        *,
        file_name: str,
        file_type: str,
        file_size: int,
        s3_key: str,
        s3_path: str,
        file_category: Literal["image", "audio", "file", "video"],
        idempotency_key: str | None = None,
    ) -> ConversationFile:
        body = {
            "conversation_id": conversation_id,
            "organization_id": self._client.organization_id,
            "file_name": file_name,
            "file_type": file_type,
            "file_size": file_size,
            "s3_key": s3_key,
            "s3_path": s3_path,
            "file_category": file_category,
        }
        created = self._client.create(CONVERSATION_FILES, body, idempotency_key=idempotency_key)
        return parse_record(ConversationFile, created, CONVERSATION_FILES)


class Services:
    """Every service helper over one client."""

    def __init__(self, client: ApiClient) -> None:
        self.client = client
        self.conversations = ConversationsService(client)
        self.contacts = ContactsService(client)
        self.messages = MessagesService(client)
        self.bulk = BulkActionsService(client)
        self.sends = SendsService(client)
        self.predefined = PredefinedMessagesService(client)
        self.automations = AutomationsService(client)
        self.files = FilesService(client)
