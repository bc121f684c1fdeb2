"""What the worker has uploaded: stored objects by content hash, file records by conversation.

A reply with an attachment needs a stored object (`POST /s3-url-signing` + `PUT`,
once per file content) and, per conversation, a `/conversation-files` record whose
`_id` the send carries. Remembering both here is what keeps a retried reply from
uploading again: the retry finds them and goes straight to the send.

=============================================  ======  ===========================================
key                                            type    content / TTL
=============================================  ======  ===========================================
``inboxpilot:upload:<sha256>``                 STRING  JSON of the object: s3_key, s3_path,
                                                       file_name, file_type, file_size,
                                                       file_category; TTL ``UPLOAD_TTL_S``
``inboxpilot:convfile:<conversation>:<sha>``   STRING  the ``conversation_file_id``;
                                                       TTL ``UPLOAD_TTL_S``
=============================================  ======  ===========================================

Losing these (Redis without its data) costs at most one more upload and one more
file record, never a second send: the send is read back from the conversation.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import redis

UPLOAD_PREFIX = "inboxpilot:upload:"
CONVFILE_PREFIX = "inboxpilot:convfile:"
UPLOAD_TTL_S = 30 * 86_400


class Uploads:
    def __init__(self, client: redis.Redis, ttl_s: int = UPLOAD_TTL_S) -> None:
        self._redis = client
        self._ttl_s = ttl_s

    def stored_object(self, sha256: str) -> dict[str, Any] | None:
        raw = self._redis.get(UPLOAD_PREFIX + sha256)
        return None if raw is None else dict(json.loads(raw))

    def remember_object(self, sha256: str, stored: Mapping[str, Any]) -> None:
        self._redis.set(UPLOAD_PREFIX + sha256, json.dumps(dict(stored)), ex=self._ttl_s)

    def conversation_file(self, conversation_id: int, sha256: str) -> str | None:
        raw = self._redis.get(f"{CONVFILE_PREFIX}{conversation_id}:{sha256}")
        return None if raw is None else raw.decode() if isinstance(raw, bytes) else str(raw)

    def remember_conversation_file(self, conversation_id: int, sha256: str, file_id: str) -> None:
        self._redis.set(f"{CONVFILE_PREFIX}{conversation_id}:{sha256}", file_id, ex=self._ttl_s)
