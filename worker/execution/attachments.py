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

from pathlib import Path
from typing import Any

from worker.api.models import Conversation
from worker.execution.runs import Run, StepError, idempotency_key
from worker.execution.uploads import upload_file
from worker.logs import get_logger
from worker.rules.actions import NoteAction, ReplyAction
from worker.rules.attachments import AttachmentError, AttachmentFile, carries, resolve
from worker.runtime import Runtime
from worker.state.uploads import Uploads

log = get_logger(__name__)


def attachment_for(
    runtime: Runtime, action: ReplyAction | NoteAction, run: Run, channel: str, message_type: str
) -> tuple[AttachmentFile | None, str | None]:
    """(the file to attach, None) or (None, why the reply is skipped); (None, None): text alone."""
    if not isinstance(action, ReplyAction) or action.attachment is None or message_type != "text":
        return None, None
    rule = runtime.rulebook.ruleset.get(run.item.rule_id)
    if rule is None:  # the re-check skips it as moot
        return None, None
    try:
        file = resolve(Path(rule.source.rpartition(":")[0]).parent, action.attachment)
    except AttachmentError as exc:
        raise StepError(f"attachment: {exc}") from None
    if carries(channel, file.category):
        return file, None
    why = f"attachment: {channel} cannot carry {file.category} files ({file.file_name})"
    if action.if_unsupported == "skip":
        return None, why
    log.info("attachment_not_sent", key=run.item.key, reason=why)
    return None, None


def upload_fields(runtime: Runtime, file: AttachmentFile, conversation: Conversation) -> dict[str, Any]:
    """The send's media fields, uploading and recording only what no earlier attempt did."""
    uploads = Uploads(runtime.redis)
    stored = uploads.stored_object(file.sha256)
    if stored is None:
        stored = upload_file(runtime.api, file)
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
            file_category=file.category,
            idempotency_key=idempotency_key("conversation-file", str(conversation.id), file.sha256),
        )
        file_id = record.id
        uploads.remember_conversation_file(conversation.id, file.sha256, file_id)
    return {"conversation_file_id": file_id, "s3_path": stored["s3_path"], "file_size": file.size}
