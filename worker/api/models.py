"""Typed records of the Conversations API.

Records keep fields they do not know (`extra="allow"`): the server may add
fields at any time and the worker must not fail on them. Fields beyond the
contract's part B (`stage_entered_at`, `assigned_at`, `initiated_by`) are
optional: the simulator provides them, a real server may not, and rules that
need them treat a missing value as "unknown" (the condition is false).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

Channel = Literal["whatsapp", "instagram", "messenger", "webchat", "sms", "playground"]
CHANNELS: tuple[Channel, ...] = ("whatsapp", "instagram", "messenger", "webchat", "sms", "playground")
# Channels that enforce Meta's 24-hour customer-service window.
WINDOWED_CHANNELS: frozenset[str] = frozenset({"whatsapp", "instagram", "messenger"})
Status = Literal["open", "closed"]
Direction = Literal["inbound", "outbound"]


class Record(BaseModel):
    """Base for API records: unknown fields are kept, not rejected."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, frozen=False)

    def extra_fields(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Conversation(Record):
    id: int
    organization_id: int | None = None
    channel: str
    status: str = "open"
    owner_id: int | None = None
    ai_assistant_id: int | None = None
    pipeline_id: int | None = None
    pipeline_stage_id: int | None = None
    contact_id: int | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    last_message_at: datetime | None = None
    last_inbound_at: datetime | None = None
    last_outbound_at: datetime | None = None
    unread_count: int = 0
    tags: list[str] = Field(default_factory=list)
    # Simulator-provided extensions (see the module docstring).
    stage_entered_at: datetime | None = None
    assigned_at: datetime | None = None
    initiated_by: str | None = None


class Message(Record):
    id: str = Field(alias="_id")
    conversation_id: int
    direction: str
    message_type: str = "text"
    message_text: str | None = None
    created_at: datetime | None = None


class Contact(Record):
    id: int
    organization_id: int | None = None
    name: str | None = None
    phone: str | None = None
    email: str | None = None
    timezone: str | None = None


class PredefinedMessage(Record):
    id: int
    title: str
    message_text: str
    organization_id: int | None = None


class Page(BaseModel):
    """Feathers' paginated envelope; `data` holds only the items that are JSON objects."""

    total: int
    limit: int
    skip: int
    data: list[dict[str, Any]]
    # Set by the client: items the server sent, objects or not (paging advances by
    # these), and the server's `Date` when it sent the page.
    _received: int | None = PrivateAttr(default=None)
    _served_at: datetime | None = PrivateAttr(default=None)

    @property
    def received(self) -> int:
        """How many items the server sent (skipped non-objects included)."""
        return len(self.data) if self._received is None else self._received

    @property
    def served_at(self) -> datetime | None:
        """The server's clock when it answered (its `Date` header), if it said."""
        return self._served_at


class AutomationExecution(Record):
    """An automation run; its id field is not fixed by the contract, so all fields are kept."""

    id: int | str | None = Field(default=None, alias="_id")
    automation_id: int | str | None = None
    conversation_id: int | None = None
    status: str | None = None


class ConversationFile(Record):
    """File metadata after an upload; `id` is the `conversation_file_id` a send may carry."""

    id: str = Field(alias="_id")
    conversation_id: int | None = None
    file_name: str | None = None
    s3_path: str | None = None


class SignedUpload(Record):
    """A signed URL to `PUT` a file to, with the key/path to record afterwards."""

    url: str
    s3_key: str | None = None
    s3_path: str | None = None
