"""`inboxpilot predefined sync`: make the API's canned replies match `rules/predefined/`.

Reads every `/conversation-predefined-messages` record, diffs by title
(`worker/rules/predefined.py`) and applies the changes: create, patch only the
fields that differ, remove with `prune`. Idempotent: a second sync finds no
difference and sends nothing. A file attachment is uploaded only when its
content hash differs from the record's `content_sha256`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from worker.api.services import PREDEFINED, Services
from worker.execution.runs import idempotency_key
from worker.execution.uploads import upload_file
from worker.rules.predefined import ATTACHMENT_FIELDS, CannedReply, Change, diff


def existing(api: Services) -> list[dict[str, Any]]:
    return list(api.client.find_all(PREDEFINED, {"organization_id": api.client.organization_id}))


def plan_sync(api: Services, desired: Sequence[CannedReply], *, prune: bool) -> list[Change]:
    return diff(desired, existing(api), prune=prune)


def apply(api: Services, changes: Sequence[Change]) -> None:
    for change in changes:
        APPLY[change.kind](api, change)


def _attachment_fields(api: Services, change: Change) -> dict[str, Any]:
    if change.attachment is None:
        return dict.fromkeys(ATTACHMENT_FIELDS)  # a removed attachment clears the record's fields
    return upload_file(api, change.attachment)


def _create(api: Services, change: Change) -> None:
    extra = _attachment_fields(api, change) if change.attachment is not None else {}
    text = str(change.fields["message_text"])
    key = idempotency_key("predefined-create", change.title, text, json.dumps(extra, sort_keys=True))
    api.predefined.create(change.title, text, idempotency_key=key, **extra)


def _patch(api: Services, change: Change) -> None:
    assert change.record_id is not None
    body: dict[str, Any] = {k: v for k, v in change.fields.items() if k == "message_text"}
    if "attachment" in change.fields:
        body |= _attachment_fields(api, change)
    key = idempotency_key("predefined-patch", str(change.record_id), json.dumps(body, sort_keys=True))
    api.predefined.patch(change.record_id, body, idempotency_key=key)


def _remove(api: Services, change: Change) -> None:
    assert change.record_id is not None
    api.predefined.remove(change.record_id)


APPLY: dict[str, Callable[[Services, Change], None]] = {
    "create": _create,
    "patch": _patch,
    "remove": _remove,
    "keep": lambda api, change: None,
}
