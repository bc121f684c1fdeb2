"""Uploading a file the API can attach: `POST /s3-url-signing`, then `PUT` the bytes.

The signing call carries an `Idempotency-Key` made from the content hash, so a
retry after a lost answer gets the same object key back (where the API honours
the key) and the `PUT` rewrites the same object: one stored object per content.
"""

from __future__ import annotations

from typing import Any

from worker.api.services import Services
from worker.execution.runs import idempotency_key
from worker.rules.attachments import AttachmentFile


def upload_file(api: Services, file: AttachmentFile) -> dict[str, Any]:
    """Sign and PUT `file`; the object's fields as a file record or a predefined message keeps them."""
    key = idempotency_key("upload", file.sha256)
    signed = api.files.sign_upload(file.file_name, file.file_type, idempotency_key=key, file_size=file.size)
    api.files.put(signed, file.read(), file.file_type)
    return {
        "file_name": file.file_name,
        "file_type": file.file_type,
        "file_size": file.size,
        "file_category": file.category,
        "s3_key": signed.s3_key,
        "s3_path": signed.s3_path,
        "content_sha256": file.sha256,
    }
