"""The chaos scenario of issue 16: a rule that tags, replies with a PDF and closes.

Each conversation asks for prices (and, once answered and closed, asks again: a
second situation). Judged from the simulator's audit log, under the same faults
as the default run (commit-then-fail on the upload `PUT`, the file record and the
send included):

- one stored object for the one file content (a `PUT` retried to the same key
  rewrites that object; a second key for the same content is a duplicate);
- one `/conversation-files` record per conversation (the second situation reuses it);
- one tag `PATCH` per conversation (the second situation finds the tag there);
- one reply with the file per situation (its text names the situation), and as
  many closes as situations.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from tests.chaos.harness import (
    BULK_ACTIONS,
    ROOT,
    SCENARIOS,
    SEND_PATH,
    Admin,
    ChaosReport,
    Expected,
    Ledgerless,
    Scenario,
)

RULES = """
rules:
  - id: chaos-price
    description: Someone asks for prices; tag it, send the price list, close.
    once: per_inbound_message
    when: {status: open, message_text: price}
    then:
      - tag: priced
      - reply:
          text: "prices {{ conversation.id }} @ {{ conversation.last_inbound_at }}"
          attachment: files/price-list.pdf
      - set_status: closed
"""
PDF = ROOT / "rules" / "files" / "price-list.pdf"


def prepare(workdir: Path) -> None:
    (workdir / "files").mkdir(exist_ok=True)
    shutil.copy(PDF, workdir / "files" / "price-list.pdf")


class BreadthSeen(Ledgerless):
    """Applied effects by kind; closes and objects counted apart (their keys are not situations)."""

    def __init__(self, admin: Admin) -> None:
        super().__init__(admin)
        self.objects: dict[str, set[str]] = {}
        self.closes: Counter[str] = Counter()
        self.signings = 0
        self.lost_answers: Counter[str] = Counter()  # applied writes whose answer was a fault

    def _count(self, entry: dict[str, Any]) -> None:
        body = entry["body"] if isinstance(entry["body"], dict) else {}
        path, method = entry["path"], entry["method"]
        if entry.get("fault"):
            self.lost_answers[_kind(method, path)] += 1
        if method == "PUT" and path.startswith("/__uploads/"):
            self.objects.setdefault(str(body.get("sha256")), set()).add(path)
        elif method == "PATCH" and path.startswith("/conversations/"):
            self.applied[("tag", path.rsplit("/", 1)[1])] += 1
        elif path == "/conversation-files":
            self.applied[("file", str(body.get("conversation_id")))] += 1
        elif path == "/s3-url-signing":
            self.signings += 1
        elif path == BULK_ACTIONS and body.get("action") == "update_status":
            for cid in body.get("conversation_ids") or []:
                self.closes[str(cid)] += 1
        elif path == SEND_PATH and body.get("conversation_file_id"):
            key = ("reply", str(body.get("conversation_id")), str(body.get("message_text")))
            self.applied[key] += 1
        else:
            self.other.append(f"{method} {path} {str(body)[:120]}")

    def acks(self, cid: str) -> int:
        return sum(1 for key in self.applied if key[0] == "reply" and key[1] == cid)


def _kind(method: str, path: str) -> str:
    kinds = {
        "/__uploads/": "upload",
        "/conversation-files": "file",
        SEND_PATH: "send",
        "/conversations/": "tag",
    }
    return next((kind for prefix, kind in kinds.items() if path.startswith(prefix)), path.strip("/"))


class BreadthExpected(Expected):
    def total(self) -> int:
        return sum(2 + 2 * n for n in self.rounds.values()) + 1  # tag, file, replies, closes; the object

    def missing(self, seen: Ledgerless) -> list[str]:
        assert isinstance(seen, BreadthSeen)
        out = [] if seen.objects else ["object: the PDF was never uploaded"]
        for cid, rounds in self.rounds.items():
            out += [f"{kind} {cid}" for kind in ("tag", "file") if not seen.applied[(kind, cid)]]
            out += [f"reply {cid} ({n + 1})" for n in range(seen.acks(cid), rounds)]
            out += [f"close {cid} ({n + 1})" for n in range(seen.closes[cid], rounds)]
        return out


def breadth_verdict(expected: Expected, seen: Ledgerless, report: ChaosReport) -> None:
    assert isinstance(seen, BreadthSeen)
    report.expected = expected.total()
    report.applied = sum(seen.applied.values()) + sum(seen.closes.values()) + len(seen.objects)
    extra_objects = sum(len(paths) - 1 for paths in seen.objects.values())
    report.duplicates = sum(n - 1 for n in seen.applied.values() if n > 1) + extra_objects
    report.details += [f"duplicate x{n}: {key}" for key, n in seen.applied.items() if n > 1]
    report.details += [
        f"{len(p)} objects for content {sha[:12]}" for sha, p in seen.objects.items() if len(p) > 1
    ]
    missing = expected.missing(seen)
    report.lost = len(missing)
    report.details += [f"lost: {m}" for m in missing]
    extra_replies = sum(max(0, seen.acks(cid) - n) for cid, n in expected.rounds.items())
    extra_closes = sum(max(0, seen.closes[cid] - n) for cid, n in expected.rounds.items())
    strangers = {key[1] for key in seen.applied} - set(expected.rounds)
    report.unexpected = extra_replies + extra_closes + len(strangers) + len(seen.other)
    report.details += [f"unexpected: {line}" for line in seen.other]
    report.details += [f"closes beyond the situations: {extra_closes}"] if extra_closes else []
    report.faults.update({f"lost_answer_{kind}": n for kind, n in seen.lost_answers.items()})


def _answered(seen: Ledgerless, cid: str) -> bool:
    """Replied and closed: the customer's next message is a new situation on a closed conversation."""
    return isinstance(seen, BreadthSeen) and seen.acks(cid) >= 1 and seen.closes[cid] >= 1


SCENARIOS["breadth"] = Scenario(
    RULES,
    BreadthSeen,
    BreadthExpected,
    breadth_verdict,
    _answered,
    first_text=lambda n: f"what is the price? #{n}",
    followup_text=lambda cid: f"and the price for teams? #{cid}",
    prepare=prepare,
    # Rare calls (one upload per content) would seldom draw a fault by rate alone: the first
    # write of each kind is always applied and answered with a 503 or a dropped connection.
    faults={"commit_then_fail_first": ["/__uploads/", "/conversation-files", SEND_PATH, "/conversations/"]},
)
