"""Attachment references: a file next to the rules, checked when the rules load.

A reference is a relative path inside the rules folder (`files/price-list.pdf`):
no URL, no absolute path, no `..`. Reading the file here is the one I/O the rule
layer does besides reading the rule files themselves, and it happens at load
time only: type (by extension, and by content for PDF/PNG/JPEG) and size are
checked so `validate` reports a bad attachment with its line and column.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

Category = Literal["image", "audio", "video", "file"]
MB = 1024 * 1024

# Extension -> (MIME type, the API's file_category).
FILE_TYPES: dict[str, tuple[str, Category]] = {
    ".pdf": ("application/pdf", "file"),
    ".txt": ("text/plain", "file"),
    ".csv": ("text/csv", "file"),
    ".docx": ("application/vnd.openxmlformats-officedocument.wordprocessingml.document", "file"),
    ".xlsx": ("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", "file"),
    ".png": ("image/png", "image"),
    ".jpg": ("image/jpeg", "image"),
    ".jpeg": ("image/jpeg", "image"),
    ".webp": ("image/webp", "image"),
    ".mp3": ("audio/mpeg", "audio"),
    ".ogg": ("audio/ogg", "audio"),
    ".mp4": ("video/mp4", "video"),
}
# The strictest limit of the channels that carry the category (WhatsApp's media limits).
MAX_BYTES: dict[Category, int] = {"image": 5 * MB, "audio": 16 * MB, "video": 16 * MB, "file": 16 * MB}
# What each channel can carry; a reply on another channel falls back (`if_unsupported`).
CHANNEL_CATEGORIES: dict[str, frozenset[Category]] = {
    "whatsapp": frozenset({"image", "audio", "video", "file"}),
    "messenger": frozenset({"image", "audio", "video", "file"}),
    "instagram": frozenset({"image", "video"}),
    "webchat": frozenset({"image", "audio", "video", "file"}),
    "playground": frozenset({"image", "audio", "video", "file"}),
    "sms": frozenset(),
}
# Content sniffing for the types a wrong extension is most likely to hide behind.
MAGIC: dict[str, bytes] = {
    ".pdf": b"%PDF-",
    ".png": b"\x89PNG\r\n\x1a\n",
    ".jpg": b"\xff\xd8",
    ".jpeg": b"\xff\xd8",
}


@dataclass(frozen=True)
class AttachmentFile:
    """A checked attachment: where it is, what it is, and its content hash."""

    ref: str
    path: Path
    file_name: str
    file_type: str
    category: Category
    size: int
    sha256: str

    def read(self) -> bytes:
        return self.path.read_bytes()


class AttachmentError(ValueError):
    """An attachment reference that cannot be sent (the message says why)."""


def carries(channel: str, category: str) -> bool:
    return category in CHANNEL_CATEGORIES.get(channel, frozenset())


def check_reference(ref: str) -> PurePosixPath:
    """The reference as a relative path inside the rules folder, or AttachmentError."""
    if "://" in ref or ref.startswith(("/", "\\")) or ":" in ref.split("/", 1)[0]:
        raise AttachmentError(f"{ref!r}: give a path relative to the rules folder, like files/price-list.pdf")
    path = PurePosixPath(ref)
    if ".." in path.parts or not path.parts:
        raise AttachmentError(f"{ref!r}: the file must be inside the rules folder (no '..')")
    return path


def resolve(base: Path, ref: str) -> AttachmentFile:
    """Check `ref` against the rules folder `base`: it exists, its type is known and it fits."""
    path = base / check_reference(ref)
    if not path.is_file():
        raise AttachmentError(f"{ref!r}: no such file in {base}")
    ext = path.suffix.lower()
    if ext not in FILE_TYPES:
        raise AttachmentError(
            f"{ref!r}: unsupported file type {ext or '(none)'} (allowed: {', '.join(FILE_TYPES)})"
        )
    file_type, category = FILE_TYPES[ext]
    data = path.read_bytes()
    if not data:
        raise AttachmentError(f"{ref!r}: the file is empty")
    if len(data) > MAX_BYTES[category]:
        limit = MAX_BYTES[category] // MB
        raise AttachmentError(f"{ref!r}: {len(data)} bytes is over the {limit} MB limit for {category} files")
    magic = MAGIC.get(ext)
    if magic is not None and not data.startswith(magic):
        raise AttachmentError(f"{ref!r}: the content is not a {ext[1:].upper()} file")
    digest = hashlib.sha256(data).hexdigest()
    return AttachmentFile(ref, path, path.name, file_type, category, len(data), digest)
