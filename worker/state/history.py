"""The firing history: what fired, on which conversation, when, with what outcome and why.

Read from what the ledger already keeps (worker/state/ledger.py), nothing new
is written: the audit stream ``inboxpilot:audit`` holds one entry per final
action outcome (done, skipped as done + ``result``, failed + ``reason``), the
ledger entries hold each action's step (what it was to do) and the re-drive
set names the actions still pending.

Retention: an entry older than the ledger TTL (``INBOXPILOT_LEDGER_TTL_S``,
30 days by default) is left out: its ledger record, and with it the action's
details, is gone. The stream also keeps at most about ``AUDIT_MAXLEN`` (100,000)
outcomes, so a very busy worker's history may be shorter.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

import redis

from worker.clock import from_epoch
from worker.rules.firing import action_index, firing_of
from worker.state.ledger import AUDIT_STREAM, ENTRY_PREFIX, REDRIVE_KEY

Outcome = Literal["done", "skipped", "failed", "pending"]
OUTCOMES: tuple[Outcome, ...] = ("done", "skipped", "failed", "pending")
PAGE = 1000
# Once enough firings are found, read this many older entries for their other actions
# (the actions of one firing finish within seconds of each other).
SIBLING_SLACK = 200


@dataclass(frozen=True)
class ActionRecord:
    """One action of a firing: its outcome, when it got it, why (skipped/failed), what it was."""

    key: str
    index: int
    outcome: Outcome
    at: datetime
    reason: str = ""
    detail: dict[str, Any] = field(default_factory=dict)
    step: dict[str, Any] | None = None  # the queued step, while the ledger holds it

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "index": self.index,
            "outcome": self.outcome,
            "at": self.at.isoformat(),
            "reason": self.reason or None,
            "detail": self.detail,
            "step": self.step,
        }


@dataclass
class FiringRecord:
    """All the actions of one firing seen in the history."""

    key: str
    rule_id: str
    conversation_id: str
    actions: dict[int, ActionRecord] = field(default_factory=dict)

    @property
    def at(self) -> datetime:
        return min(a.at for a in self.actions.values())

    @property
    def outcome(self) -> Outcome:
        """failed if any action failed, else pending if any waits, else done if any was done."""
        seen = {a.outcome for a in self.actions.values()}
        for outcome in ("failed", "pending", "done"):
            if outcome in seen:
                return outcome  # type: ignore[return-value]  # one of the literals above
        return "skipped"

    def ordered(self) -> list[ActionRecord]:
        return [self.actions[i] for i in sorted(self.actions)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "firing_key": self.key,
            "rule": self.rule_id,
            "conversation": self.conversation_id,
            "at": self.at.isoformat(),
            "outcome": self.outcome,
            "actions": [a.to_dict() for a in self.ordered()],
        }


@dataclass(frozen=True)
class HistoryQuery:
    """Which firings to show; None = any."""

    rule: str | None = None
    conversation: int | None = None
    outcome: Outcome | None = None
    since: datetime | None = None
    limit: int = 50

    def wants(self, rule_id: str, conversation_id: str) -> bool:
        return (self.rule is None or rule_id == self.rule) and (
            self.conversation is None or conversation_id == str(self.conversation)
        )


def read_history(client: redis.Redis, query: HistoryQuery, now: datetime, ttl_s: int) -> list[FiringRecord]:
    """The newest `query.limit` matching firings, oldest first."""
    cutoff = now - timedelta(seconds=ttl_s)
    if query.since is not None:
        cutoff = max(cutoff, query.since)
    firings: dict[str, FiringRecord] = {}
    for fields in _newest_first(client, query, firings):
        action = _from_audit(fields)
        if action is None or action.at < cutoff:
            continue
        _add(firings, fields.get("rule_id", ""), fields.get("conversation_id", ""), action)
    for key, rule_id, conversation_id, action in _pending(client):
        if action.at >= cutoff and query.wants(rule_id, conversation_id):
            _add(firings, rule_id, conversation_id, action, key)
    _attach_steps(client, firings.values())
    wanted = [f for f in firings.values() if query.outcome is None or _has(f, query.outcome)]
    wanted.sort(key=lambda f: (f.at, f.key))
    return wanted[-query.limit :] if query.limit > 0 else wanted


def _has(firing: FiringRecord, outcome: Outcome) -> bool:
    return any(a.outcome == outcome for a in firing.actions.values())


def _newest_first(
    client: redis.Redis, query: HistoryQuery, firings: dict[str, FiringRecord]
) -> Iterator[dict[str, str]]:
    """Matching audit entries, newest first, until the stream ends or enough firings were found."""
    upper = "+"
    slack = None
    while True:
        page = client.xrevrange(AUDIT_STREAM, max=upper, min="-", count=PAGE) or []
        for entry_id, raw in page:
            fields = {_text(k): _text(v) for k, v in (raw or {}).items()}
            if query.wants(fields.get("rule_id", ""), fields.get("conversation_id", "")):
                yield fields
            if slack is None and query.outcome is None and len(firings) >= query.limit > 0:
                slack = SIBLING_SLACK
            if slack is not None:
                slack -= 1
                if slack <= 0:
                    return
            upper = f"({_text(entry_id)}"
        if len(page) < PAGE:
            return


def _from_audit(fields: dict[str, str]) -> ActionRecord | None:
    key = fields.get("key", "")
    try:
        at = from_epoch(float(fields.get("at", "")))
    except ValueError:
        return None
    if fields.get("state") == "failed":
        return ActionRecord(key, action_index(key), "failed", at, fields.get("reason", ""))
    detail = _json(fields.get("outcome", ""))
    result: Outcome = "skipped" if detail.get("result") == "skipped" else "done"
    return ActionRecord(key, action_index(key), result, at, str(detail.get("reason") or ""), detail)


def _pending(client: redis.Redis) -> Iterable[tuple[str, str, str, ActionRecord]]:
    keys = [_text(k) for k in client.zrange(REDRIVE_KEY, 0, -1)]
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hmget(ENTRY_PREFIX + key, "state", "rule_id", "conversation_id", "claimed_at", "attempts")
    for key, values in zip(keys, pipe.execute(), strict=True):
        state, rule_id, conversation_id, claimed_at, attempts = (_text(v) if v else "" for v in values)
        if state != "pending" or not claimed_at:
            continue
        reason = f"waiting: {attempts or 0} attempt(s) so far"
        action = ActionRecord(key, action_index(key), "pending", from_epoch(float(claimed_at)), reason)
        yield key, rule_id, conversation_id, action


def _add(
    firings: dict[str, FiringRecord], rule_id: str, conversation_id: str, action: ActionRecord, key: str = ""
) -> None:
    firing_key = firing_of(key or action.key)
    firing = firings.setdefault(firing_key, FiringRecord(firing_key, rule_id, conversation_id))
    known = firing.actions.get(action.index)
    if known is None or known.at < action.at:  # a reopened action: its latest outcome counts
        firing.actions[action.index] = action


def _attach_steps(client: redis.Redis, firings: Iterable[FiringRecord]) -> None:
    """The step of each action (what it was to do), in one round trip."""
    actions = [(f, i, a) for f in firings for i, a in f.actions.items()]
    pipe = client.pipeline(transaction=False)
    for _, _, action in actions:
        pipe.hget(ENTRY_PREFIX + action.key, "payload")
    for (firing, index, action), payload in zip(actions, pipe.execute(), strict=True):
        if payload:
            firing.actions[index] = ActionRecord(
                action.key, action.index, action.outcome, action.at, action.reason, action.detail,
                _json(_text(payload)),
            )  # fmt: skip


def _json(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
