"""Replies with a file: which file, whether the channel can carry it, and uploading it once.

`reply: {text: ..., attachment: files/price-list.pdf}` names a file next to the
rules (`worker/rules/attachments.py` checks it at load). At send time:

1. the file is read and hashed again (the content sent is the content now);
2. a channel that cannot carry its category (`CHANNEL_CATEGORIES`: SMS carries
   none, Instagram images and video only) falls back per `if_unsupported`:
   `text` sends the text alone, `skip` sends nothing (the item is skipped);
   a note or template sent outside the 24-hour window carries no file;
3. right before the send, the stored object and the conversation's file record
   come from `worker/state/uploads.py` when an earlier attempt made them; only
   what is missing is made: sign + `PUT` once per content hash, one
   `/conversation-files` record per (conversation, content hash), each call with
   an `Idempotency-Key` from the hash. The send itself is read back like any
   reply, before any upload, so a retry after a send whose answer was lost
   uploads nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from worker.api.errors import NotFound
from worker.api.models import Conversation
from worker.execution.runs import Run, StepError, idempotency_key
from worker.execution.uploads import upload_file
from worker.logs import get_logger
from worker.rules.actions import NoteAction, ReplyAction
from worker.rules.attachments import AttachmentError, AttachmentFile, Category, carries, resolve
from worker.rules.predefined import ATTACHMENT_FIELDS  # what `predefined sync` stores
from worker.runtime import Runtime
from worker.state.locks import item_locks
from worker.state.uploads import Uploads

log = get_logger(__name__)


@dataclass(frozen=True)
class Outgoing:
    """A file a reply carries: a file next to the rules, or one a canned reply already stored."""

    ref: str
    sha256: str
    file_name: str
    file_type: str
    category: str
    size: int
    local: AttachmentFile | None = None
    stored: Mapping[str, Any] | None = None

    @classmethod
    def of_file(cls, file: AttachmentFile) -> Outgoing:
        return cls(
            file.ref, file.sha256, file.file_name, file.file_type, file.category, file.size, local=file
        )


def attachment_for(
    runtime: Runtime, action: ReplyAction | NoteAction, run: Run, channel: str, message_type: str
) -> tuple[Outgoing | None, str | None]:
    """(the file to attach, None) or (None, why the reply is skipped); (None, None): text alone."""
    if not isinstance(action, ReplyAction) or message_type != "text":
        return None, None
    outgoing = _rule_file(runtime, action, run) if action.attachment else _predefined_file(runtime, action)
    if outgoing is None or carries(channel, outgoing.category):
        return outgoing, None
    why = f"attachment: {channel} cannot carry {outgoing.category} files ({outgoing.file_name})"
    if action.if_unsupported == "skip":
        return None, why
    log.info("attachment_not_sent", key=run.item.key, reason=why)
    return None, None


def _rule_file(runtime: Runtime, action: ReplyAction, run: Run) -> Outgoing | None:
    rule = runtime.rulebook.ruleset.get(run.item.rule_id)
    if rule is None or action.attachment is None:  # the re-check skips it as moot
        return None
    try:
        return Outgoing.of_file(resolve(Path(rule.source.rpartition(":")[0]).parent, action.attachment))
    except AttachmentError as exc:
        raise StepError(f"attachment: {exc}") from None


def _predefined_file(runtime: Runtime, action: ReplyAction) -> Outgoing | None:
    """The file a canned reply carries (stored by `predefined sync`): one more read of the record."""
    ref = action.predefined
    if ref is None:
        return None
    try:
        api = runtime.api.predefined
        record = api.get(ref) if isinstance(ref, int) else api.get_by_title(str(ref))
    except NotFound:
        return None  # the text lookup fails the firing with the reason
    stored = record.extra_fields() if record is not None else {}
    if not all(stored.get(name) for name in ATTACHMENT_FIELDS):
        return None
    return Outgoing(
        f"predefined {ref!r}: {stored['file_name']}",
        str(stored["content_sha256"]),
        str(stored["file_name"]),
        str(stored["file_type"]),
        str(stored["file_category"]),
        int(stored["file_size"]),
        stored={name: stored[name] for name in ATTACHMENT_FIELDS},
    )


UPLOAD_LOCK_TTL_MS = 60_000


def upload_fields(runtime: Runtime, file: Outgoing, conversation: Conversation) -> dict[str, Any]:
    """The send's media fields, uploading and recording only what no earlier attempt did."""
    uploads = Uploads(runtime.redis)
    stored = file.stored or uploads.stored_object(file.sha256)
    if stored is None:
        assert file.local is not None  # a file without a stored object is a file next to the rules
        # Two sends of one content at once (a firing's reply queued for many conversations
        # when their first action is done) upload it once: the other retries (ItemBusy).
        with item_locks(runtime.redis, [f"upload:{file.sha256}"], UPLOAD_LOCK_TTL_MS):
            stored = uploads.stored_object(file.sha256)
            if stored is None:
                stored = upload_file(runtime.api, file.local)
                uploads.remember_object(file.sha256, stored)
    file_id = uploads.conversation_file(conversation.id, file.sha256)
    if file_id is None:
        record = runtime.api.files.create_file(
            conversation.id,
            file_name=file.file_name,
            file_type=file.file_type,
            file_size=file.size,
            s3_key=str(stored["s3_key"]),
            s3_path=str(stored["s3_path"]),
            file_category=_category(file.category),
            idempotency_key=idempotency_key("conversation-file", str(conversation.id), file.sha256),
        )
        file_id = record.id
        uploads.remember_conversation_file(conversation.id, file.sha256, file_id)
    return {"conversation_file_id": file_id, "s3_path": stored["s3_path"], "file_size": file.size}


def _category(value: str) -> Category:
    if value not in ("image", "audio", "video", "file"):
        raise StepError(f"attachment: unknown file category {value!r}")
    return cast(Category, value)
