"""Canned replies kept as code: `rules/predefined/*.yaml`, and how they differ from the API's.

A file holds one canned reply or a list of them::

    title: Price list
    text: "Hi {{ contact.first_name }}, here is our price list."
    attachment: files/price-list.pdf     # optional, relative to the rules folder

Titles are the identity (rules name them: `reply: {predefined: "Price list"}`) and
must be unique across the folder. `diff` compares the folder with the API's records
by title; `worker/execution/predefined_sync.py` applies the result.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from worker.rules.attachments import AttachmentError, AttachmentFile, resolve
from worker.rules.errors import RuleError
from worker.rules.loader import parse_yaml
from worker.rules.loading.positions import Pos, child_pos, locate, node_pos, to_plain
from worker.rules.loading.report import Report
from worker.rules.model import Rule
from worker.rules.templates import check_template

FOLDER = "predefined"
# Fields the worker keeps on a predefined record with an attachment (the contract names
# none: the project's choice, and `content_sha256` is what tells an unchanged file).
ATTACHMENT_FIELDS = (
    "file_name",
    "file_type",
    "file_size",
    "file_category",
    "s3_key",
    "s3_path",
    "content_sha256",
)


class CannedReplySpec(BaseModel):
    """One entry of a `predefined/*.yaml` file."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    title: str = Field(min_length=1, max_length=200)
    text: str = Field(min_length=1)
    attachment: str | None = Field(default=None, min_length=1)

    @field_validator("text")
    @classmethod
    def _renders(cls, text: str) -> str:
        problem = check_template(text)
        if problem:
            raise ValueError(problem)
        return text


@dataclass(frozen=True)
class CannedReply:
    title: str
    text: str
    attachment: AttachmentFile | None
    source: str  # file:line


@dataclass(frozen=True)
class Change:
    """One difference: create, patch (with the fields that change), remove, or keep (pruning off)."""

    kind: Literal["create", "patch", "remove", "keep"]
    title: str
    record_id: int | None = None
    fields: Mapping[str, Any] = field(default_factory=dict)
    old: Mapping[str, Any] = field(default_factory=dict)
    attachment: AttachmentFile | None = None


def find_folder(paths: Sequence[Path]) -> Path | None:
    """The `predefined/` folder of the rules at `paths`: next to them, or in a parent folder."""
    for raw in paths:
        start = raw if raw.is_dir() else raw.parent
        for folder in (start, *start.resolve().parents):
            if (folder / FOLDER).is_dir():
                return folder / FOLDER
    return None


def load_folder(folder: Path) -> tuple[list[CannedReply], list[RuleError]]:
    """Every canned reply in `folder`, or located errors (a bad entry is left out)."""
    errors: list[RuleError] = []
    replies: list[CannedReply] = []
    files = sorted(p for ext in ("yaml", "yml") for p in folder.glob(f"*.{ext}") if p.is_file())
    for path in files:
        doc = parse_yaml(str(path), path.read_text(encoding="utf-8"), errors)
        if doc is None:
            continue
        report = Report(errors, str(path))
        for raw, pos in _entries(doc.data, report):
            reply = _entry(raw, pos, report, folder.parent)
            if reply is not None:
                replies.append(reply)
    _check_unique(replies, errors)
    return replies, errors


def _entries(data: Any, report: Report) -> list[tuple[Any, Pos]]:
    if isinstance(data, CommentedMap):
        return [(data, node_pos(data))]
    if isinstance(data, CommentedSeq):
        return [(item, child_pos(data, i, node_pos(data))) for i, item in enumerate(data)]
    report.add(node_pos(data), "", "a predefined file holds {title, text, attachment?} or a list of them")
    return []


def _entry(raw: Any, pos: Pos, report: Report, rules_folder: Path) -> CannedReply | None:
    try:
        spec = CannedReplySpec.model_validate(to_plain(raw))
    except ValidationError as exc:
        report.validation(exc, CannedReplySpec, raw, pos, "")
        return None
    attachment = None
    if spec.attachment is not None:
        try:
            attachment = resolve(rules_folder, spec.attachment)
        except AttachmentError as exc:
            report.add(locate(raw, ("attachment",), pos), "attachment", str(exc))
            return None
    return CannedReply(spec.title, spec.text, attachment, f"{report.file}:{pos[0]}")


def _check_unique(replies: list[CannedReply], errors: list[RuleError]) -> None:
    seen: dict[str, str] = {}
    for reply in list(replies):
        if reply.title in seen:
            file, line = reply.source.rsplit(":", 1)
            message = f"duplicate title {reply.title!r} (first defined at {seen[reply.title]})"
            errors.append(RuleError(file, int(line), 1, None, "title", message))
            replies.remove(reply)
        else:
            seen[reply.title] = reply.source


def diff(
    desired: Sequence[CannedReply], existing: Sequence[Mapping[str, Any]], *, prune: bool
) -> list[Change]:
    """What to do so the API's canned replies match `desired` (matched by title, lowest id first)."""
    by_title: dict[str, Mapping[str, Any]] = {}
    for record in sorted(existing, key=lambda r: int(r.get("id") or 0)):
        by_title.setdefault(str(record.get("title")), record)
    changes = [_change(reply, by_title.get(reply.title)) for reply in desired]
    wanted = {reply.title for reply in desired}
    for title, record in by_title.items():
        if title not in wanted:
            changes.append(Change("remove" if prune else "keep", title, _id(record)))
    return [c for c in changes if c is not None]


def _change(reply: CannedReply, record: Mapping[str, Any] | None) -> Change | None:
    if record is None:
        return Change("create", reply.title, fields={"message_text": reply.text}, attachment=reply.attachment)
    fields: dict[str, Any] = {}
    if record.get("message_text") != reply.text:
        fields["message_text"] = reply.text
    sha = reply.attachment.sha256 if reply.attachment else None
    if record.get("content_sha256") != sha:
        fields["attachment"] = reply.attachment.ref if reply.attachment else None
    if not fields:
        return None
    old = {name: record.get(name) for name in ("message_text", "file_name")}
    return Change("patch", reply.title, _id(record), fields, old, reply.attachment)


def _id(record: Mapping[str, Any]) -> int | None:
    value = record.get("id")
    return int(value) if isinstance(value, int) else None


def unknown_references(
    rules: Sequence[Rule], titles: Collection[str], ids: Collection[int] | None = None
) -> list[RuleError]:
    """`reply: {predefined: ...}` naming no canned reply: titles always, ids when `ids` is known."""
    errors = []
    for rule in rules:
        for index, action in enumerate(rule.then):
            ref = getattr(action, "predefined", None)
            if ref is None or (isinstance(ref, str) and ref in titles):
                continue
            if isinstance(ref, int) and (ids is None or ref in ids):
                continue
            file, _, line = rule.source.rpartition(":")
            where = "the API" if ids is not None else "the predefined/ folder"
            known = ", ".join(repr(t) for t in sorted(titles)) or "none"
            message = f"no predefined message {ref!r} in {where} (known: {known})"
            errors.append(RuleError(file, int(line), 1, rule.id, f"then[{index}].reply.predefined", message))
    return errors
