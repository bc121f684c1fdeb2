"""Snapshots: a conversation plus what the rules need beside it (messages, contact).

Messages are fetched only when some enabled rule needs them, and contacts only
when some rule needs contact fields: once per conversation per tick. A
conversation whose extra reads fail is reported and left out of this tick (the
next poll or the resync retries it); it never stops the others.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from worker.api.errors import ApiError, NotFound
from worker.api.models import Contact, Conversation
from worker.api.services import Services
from worker.logs import get_logger
from worker.rules.evaluator import Snapshot
from worker.rules.model import RuleSet

log = get_logger(__name__)


SnapshotErrorHook = Callable[[Conversation, Exception], None]
"""on_error(conversation, error): told about each conversation left out (e.g. to quarantine it)."""


def read_snapshots(
    api: Services,
    ruleset: RuleSet,
    conversations: Iterable[Conversation],
    on_error: SnapshotErrorHook | None = None,
    on_read: Callable[[], None] | None = None,
) -> list[Snapshot]:
    snapshots = []
    for conversation in conversations:
        snapshot = read_snapshot(api, ruleset, conversation, on_error)
        if snapshot is not None:
            snapshots.append(snapshot)
        if on_read is not None:
            on_read()
    return snapshots


def read_snapshot(
    api: Services, ruleset: RuleSet, conversation: Conversation, on_error: SnapshotErrorHook | None = None
) -> Snapshot | None:
    try:
        messages = (
            api.messages.latest(conversation.channel, conversation.id) if ruleset.needs_messages else None
        )
        contact = _contact(api, conversation) if ruleset.needs_contact else None
    except (ApiError, ValueError) as exc:
        log.error("snapshot_read_failed", conversation_id=conversation.id, error=str(exc))
        if on_error is not None:
            on_error(conversation, exc)
        return None
    return Snapshot(conversation, messages, contact)


def _contact(api: Services, conversation: Conversation) -> Contact | None:
    if conversation.contact_id is None:
        return None
    try:
        return api.contacts.get(conversation.contact_id)
    except NotFound:
        return None
