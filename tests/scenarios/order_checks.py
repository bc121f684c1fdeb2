"""Actions in the order the rules write them, restated from the scenario rule files.

Each multi-action scenario rule is a pair (earlier effect, later effect) on one
conversation; every later effect the API received must have its earlier effect
before it, in the order the simulator applied them (audit `seq`: the fake clock
does not move while the workers run, so time alone cannot tell). A firing's actions
all land in the tick that carries them out, so they share their audit time.

- scn-route-after-hours: `assign_ai_assistant: 7`, then the `[scn-after-hours]` note
- scn-route-back-from-ai: `unassign_ai_assistant`, then the assignment to a person
- sla-scn-first-response-100: the `[scn-sla-breach]` note, then the lead's assignment
- scn-close: the `[scn-close]` note, then the status `closed`
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tests.scenarios.properties import Verdict
from tests.scenarios.timeline import BULK, SENDS
from worker.simulator.audit import AuditEntry

Effect = tuple[str, Any]  # ("bulk", body) or ("send", text)
Test = Callable[[Effect], bool]


@dataclass(frozen=True)
class Pair:
    rule: str
    earlier: Test
    later: Test
    only_rule: bool = True  # the later effect comes from this rule alone (else: may be another's)


def _bulk(action: str, **fields: Any) -> Test:
    return lambda e: (
        e[0] == "bulk" and e[1].get("action") == action and all(e[1].get(k) == v for k, v in fields.items())
    )


def _note(marker: str) -> Test:
    return lambda e: e[0] == "send" and str(e[1]).startswith(marker)


PAIRS = (
    Pair("scn-route-after-hours", _bulk("assign_ai_assistant"), _note("[scn-after-hours]")),
    Pair("scn-route-back-from-ai", _bulk("unassign_ai_assistant"), _bulk("assign"), only_rule=False),
    Pair("sla-scn-first-response-100", _note("[scn-sla-breach]"), _bulk("assign", owner_id=401)),
    Pair("scn-close", _note("[scn-close]"), _bulk("update_status", status="closed")),
)


Seen = list[tuple[int, datetime, Effect]]


def effects(audit: list[AuditEntry]) -> dict[int, Seen]:
    """The bot's applied effects per conversation, as (seq, time, effect), in the order applied."""
    out: dict[int, Seen] = {}
    for entry in sorted(audit, key=lambda e: e.seq):
        body = entry.body if isinstance(entry.body, dict) else {}
        if not entry.applied or entry.method != "POST":
            continue
        if entry.path == BULK:
            for cid in body.get("conversation_ids", []):
                out.setdefault(int(cid), []).append((entry.seq, entry.time, ("bulk", body)))
        elif entry.path.startswith(SENDS) and body.get("conversation_id") is not None:
            text = str(body.get("message_text") or "")
            out.setdefault(int(body["conversation_id"]), []).append((entry.seq, entry.time, ("send", text)))
    return out


def check_order(audit: list[AuditEntry]) -> Verdict:
    """Every later effect of a multi-action rule comes after its earlier effect."""
    v = Verdict("order")
    counts = dict.fromkeys((p.rule for p in PAIRS), 0)
    for cid, seen in effects(audit).items():
        for pair in PAIRS:
            _check_pair(cid, seen, pair, v, counts)
    v.counts = counts
    v.expected = v.fired = sum(counts.values())
    return v


def _check_pair(cid: int, seen: Seen, pair: Pair, v: Verdict, counts: dict[str, int]) -> None:
    for seq, at, effect in seen:
        if not pair.later(effect):
            continue
        firsts = [s for s, t, e in seen if t == at and pair.earlier(e)]
        if not firsts and not pair.only_rule:
            continue  # another rule's one-action firing
        if not firsts:
            v.violations.append(f"c{cid}: {pair.rule}: its later action (seq {seq}) came without its first")
        elif min(firsts) > seq:
            v.violations.append(f"c{cid}: {pair.rule}: its later action (seq {seq}) came before its first")
        else:
            counts[pair.rule] += 1
