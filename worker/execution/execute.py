"""Execution: perform one queued step exactly once per ledger item.

The actors are thin; this is where a step becomes API calls. Every item of a
step (one action of one firing on one conversation) goes through the same
pipeline:

1. a short Redis lock per item (``inboxpilot:exec:<item key>``) so two
   deliveries of the same message never run at once (dramatiq redelivers while
   a task still runs, the ledger re-drives a slow claim);
2. ``ledger.begin_attempt``: None means the item already finished (a duplicate
   delivery) and it is skipped silently;
3. fresh state: the conversation is read again (a bulk step reads all of its
   conversations with one ``id[$in]`` find); a conversation that is gone ends
   the item as skipped;
4. reconcile when ``attempt > 1`` (an earlier attempt may have been applied:
   a timeout, a 5xx after commit): read back the effect and count it as done
   when it is there. Replies and notes are read back on *every* attempt,
   against the messages created since the firing's situation began (the
   customer's message, the stage entry, the assignment): after a Redis that
   lost its data the ledger no longer knows a send happened, and the attempt
   number is 1 again. This comes *before* the re-check because our own earlier
   effect usually makes the rule false (our reply *is* the team's answer);
5. re-check: the item's rule, evaluated on the fresh snapshot, must still
   produce the item's firing key, else the item is skipped as moot (the team
   answered, someone else took the conversation, the rule was removed);
6. act with an ``Idempotency-Key`` derived from the item key(s);
7. record the outcome: done / skipped (``mark_done``), failed with a reason
   for errors that can never succeed (``mark_failed``), or left pending and
   re-raised for retryable errors so dramatiq's Retries middleware retries
   (a 429 becomes a quiet ``Retry`` after ``Retry-After``).

Each step kind ("bulk", "message", "automation") is a registered executor.

Automations cannot be read back through the API contract: a retry resends
with the same ``Idempotency-Key`` (the simulator replays it). A real API that
ignores the key could run the automation twice on that path; the ledger and
the per-item lock still exclude every other duplicate.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any, Literal

import redis
from dramatiq.errors import Retry
from jinja2 import TemplateError

from worker.api.errors import ApiError, NotFound, RateLimited
from worker.api.models import WINDOWED_CHANNELS, Contact, Conversation, Message
from worker.logs import get_logger
from worker.metrics import ACTIONS, FIRINGS, RECONCILIATIONS
from worker.queue.broker import TIME_LIMIT_MS
from worker.rules.actions import ACTIONS as ACTION_TYPES
from worker.rules.actions import NoteAction, ReplyAction
from worker.rules.context import utc
from worker.rules.evaluator import Snapshot, evaluate
from worker.rules.templates import TemplateRenderError, render, uses_contact
from worker.runtime import Runtime
from worker.scheduling.planning import BulkChange, Item, Step

log = get_logger(__name__)

EXEC_LOCK_PREFIX = "inboxpilot:exec:"
# Held for about one actor attempt: dramatiq's TimeLimit interrupts an attempt
# before the lock can expire under it.
EXEC_LOCK_TTL_MS = TIME_LIMIT_MS + 5_000
# A second delivery that finds the item busy retries quietly (`busy_retry_ms`),
# never sooner than this.
BUSY_RETRY_MS = 2_000
BUSY_MARGIN_MS = 250
WINDOW = timedelta(hours=24)
# Read-back tolerance between our clock (claimed_at) and the API's (created_at).
CLOCK_SKEW = timedelta(seconds=30)
MAX_REASON_CHARS = 300
IDEMPOTENCY_PREFIX = "inboxpilot-"

Result = Literal["done", "skipped", "failed"]


class StepError(ValueError):
    """A step that can never be executed (bad action data, unknown kind): fail its items."""


# --- per-item bookkeeping ------------------------------------------------------------------


@dataclass
class Run:
    """One item being executed: its attempt number and whether it has an outcome yet."""

    item: Item
    attempt: int
    action: str  # metric / log label: the bulk action, "reply", "note", "run_automation"
    started: float = field(default_factory=time.perf_counter)
    finished: bool = False
    retry_noted: bool = False

    @property
    def firing_key(self) -> str:
        return firing_key_of(self.item)


def firing_key_of(item: Item) -> str:
    """The firing key of an item: its ledger key without the `#<action index>` suffix."""
    return item.key.rsplit("#", 1)[0]


def finish(runtime: Runtime, run: Run, result: Result, **detail: Any) -> None:
    """Record the item's final outcome in the ledger, the metrics and one log line."""
    if run.finished:
        return
    run.finished = True
    if result == "failed":
        reason = str(detail.get("reason", "failed"))[:MAX_REASON_CHARS]
        runtime.ledger.mark_failed(run.item.key, reason)
    else:
        runtime.ledger.mark_done(run.item.key, {"result": result, **detail})
    FIRINGS.labels(rule=run.item.rule_id, outcome=result).inc()
    ACTIONS.labels(action=run.action, outcome=result).inc()
    _log_outcome(run, result, detail)


def note_retry(run: Run, error: ApiError) -> None:
    """The item stays pending: log and count the transient failure (dramatiq retries)."""
    ACTIONS.labels(action=run.action, outcome="retry").inc()
    _log_outcome(run, "retry", {"error": str(error)[:MAX_REASON_CHARS], "status": error.status})


def _log_outcome(run: Run, outcome: str, detail: Mapping[str, Any]) -> None:
    log.info(
        "firing_executed",
        rule=run.item.rule_id,
        conversation=run.item.conversation_id,
        action=run.action,
        key=run.item.key,
        outcome=outcome,
        attempt=run.attempt,
        latency_ms=round((time.perf_counter() - run.started) * 1000, 1),
        **detail,
    )


# --- the entry point -----------------------------------------------------------------------

Executor = Callable[[Runtime, Step, list[Run]], None]
EXECUTORS: dict[str, Executor] = {}


def executor(kind: str) -> Callable[[Executor], Executor]:
    def register(fn: Executor) -> Executor:
        if kind in EXECUTORS:
            raise ValueError(f"an executor for step kind {kind!r} is already registered")
        EXECUTORS[kind] = fn
        return fn

    return register


def execute(runtime: Runtime, step: Step) -> None:
    """Execute `step`: each item at most once, with its outcome recorded in the ledger."""
    with item_locks(runtime.redis, step.items):
        runs = _begin(runtime, step)
        if not runs:
            return
        run_executor = EXECUTORS.get(step.kind)
        if run_executor is None:
            for run in runs:
                finish(runtime, run, "failed", reason=f"unknown step kind {step.kind!r}")
            return
        with outcomes(runtime, runs):
            run_executor(runtime, step, runs)


def _begin(runtime: Runtime, step: Step) -> list[Run]:
    label = action_label(step)
    runs = []
    for item in step.items:
        attempt = runtime.ledger.begin_attempt(item.key)
        if attempt is None:
            log.debug("firing_already_finished", key=item.key)
            continue
        runs.append(Run(item, attempt, label))
    return runs


def action_label(step: Step) -> str:
    if step.bulk is not None:
        return step.bulk.action
    return str(step.action.get("type") or step.kind)


@contextmanager
def outcomes(runtime: Runtime, runs: Sequence[Run]) -> Iterator[None]:
    """Turn errors into outcomes for the runs that have none yet (the one error policy)."""
    try:
        yield
    except RateLimited as exc:
        _retry_all(runs, exc)
        delay_ms = int((exc.retry_after_s or BUSY_RETRY_MS / 1000) * 1000)
        raise Retry(f"rate limited: retry after {delay_ms} ms", delay=delay_ms) from None
    except ApiError as exc:
        if exc.retryable:
            _retry_all(runs, exc)
            raise
        _fail_all(runtime, runs, f"{exc.status or 'error'} {exc.name}: {exc.message}")
    except TemplateRenderError as exc:
        _fail_all(runtime, runs, f"template: {exc}")
    except ValueError as exc:  # StepError, a request the client refuses to build: deterministic
        _fail_all(runtime, runs, str(exc))


def _retry_all(runs: Sequence[Run], exc: ApiError) -> None:
    for run in runs:
        if not run.finished and not run.retry_noted:
            run.retry_noted = True
            note_retry(run, exc)


def _fail_all(runtime: Runtime, runs: Sequence[Run], reason: str) -> None:
    for run in runs:
        finish(runtime, run, "failed", reason=reason)


# --- the per-item lock ---------------------------------------------------------------------

_RELEASE = """
local n = 0
for _, key in ipairs(KEYS) do
  if redis.call('get', key) == ARGV[1] then redis.call('del', key); n = n + 1 end
end
return n
"""


@contextmanager
def item_locks(client: redis.Redis, items: Sequence[Item]) -> Iterator[None]:
    """Hold `inboxpilot:exec:<key>` for every item, or raise a quiet `Retry` when one is busy."""
    token = uuid.uuid4().hex
    keys = [EXEC_LOCK_PREFIX + item.key for item in items]
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.set(key, token, nx=True, px=EXEC_LOCK_TTL_MS)
    taken = [key for key, ok in zip(keys, pipe.execute(), strict=True) if ok]
    try:
        if len(taken) < len(keys):
            busy = next(k for k in keys if k not in set(taken))
            delay_ms = busy_retry_ms(client, busy)
            log.info("firing_busy", key=busy.removeprefix(EXEC_LOCK_PREFIX), retry_ms=delay_ms)
            raise Retry("another delivery is executing this item", delay=delay_ms)
        yield
    finally:
        if taken:
            client.register_script(_RELEASE)(keys=taken, args=[token])


def busy_retry_ms(client: redis.Redis, lock_key: str) -> int:
    """How long a delivery that found the item busy waits before trying again.

    Twice as long as the holder has held the lock, capped at when the lock
    expires. A live holder (a duplicate delivery, a slow attempt) finishes in
    seconds, so the wait stays short; a worker killed mid-task leaves a lock
    that only its TTL ends, and retrying every 2 s spent all of dramatiq's
    retries before then: the firing was dead-lettered without ever running.
    Doubling waits it out in about five retries.
    """
    remaining_ms = max(int(client.pttl(lock_key)), 0)
    held_ms = max(EXEC_LOCK_TTL_MS - remaining_ms, 0)
    return max(BUSY_RETRY_MS, min(2 * held_ms, remaining_ms + BUSY_MARGIN_MS))


# --- fresh state ---------------------------------------------------------------------------


class Fresh:
    """A conversation as re-read now; messages and contact fetched at most once, on demand."""

    def __init__(self, runtime: Runtime, conversation: Conversation) -> None:
        self._runtime = runtime
        self.conversation = conversation

    @cached_property
    def messages(self) -> list[Message]:
        conv = self.conversation
        return self._runtime.api.messages.latest(conv.channel, conv.id)

    @cached_property
    def contact(self) -> Contact | None:
        if self.conversation.contact_id is None:
            return None
        try:
            return self._runtime.api.contacts.get(self.conversation.contact_id)
        except NotFound:
            return None


def read_one(runtime: Runtime, run: Run) -> Fresh | None:
    """The item's conversation now, or None (and the item skipped) when it is gone."""
    try:
        conversation = runtime.api.conversations.get(run.item.conversation_id)
    except NotFound:
        finish(runtime, run, "skipped", reason="gone: the conversation no longer exists")
        return None
    return Fresh(runtime, conversation)


def read_many(runtime: Runtime, ids: Sequence[int]) -> dict[int, Conversation]:
    """Conversations by id with one `id[$in]` find (paged by 50); missing ids are gone."""
    found = runtime.api.conversations.find({"id": {"$in": sorted(set(ids))}})
    return {conversation.id: conversation for conversation in found}


def moot_reason(runtime: Runtime, run: Run, fresh: Fresh) -> str | None:
    """Why the item's firing no longer holds on the fresh state, or None when it still does.

    Only the item's own rule is evaluated (conflicts were settled when it was
    planned) and without firing caps (the item's own claim would count).
    """
    ruleset = runtime.rulebook.ruleset
    rule = ruleset.get(run.item.rule_id)
    if rule is None or not rule.enabled:
        state = "is no longer in the rule set" if rule is None else "is disabled"
        return f"moot: rule {run.item.rule_id!r} {state}"
    snapshot = Snapshot(
        fresh.conversation,
        fresh.messages if rule.needs_messages else None,
        fresh.contact if rule.needs_contact else None,
    )
    evaluation = evaluate(replace(ruleset, rules=(rule,)), snapshot, runtime.clock.now())
    keys = [m.firing_key for m in evaluation.matches]
    if run.firing_key in keys or firing_started(runtime, run, len(rule.then)):
        return None
    if keys:
        return f"moot: the rule now answers another situation ({keys[0]})"
    return "moot: the rule no longer holds"


def firing_started(runtime: Runtime, run: Run, actions: int) -> bool:
    """True when another action of the same firing was already carried out.

    A rule's own actions often make it false (`unassign_ai_assistant` then
    `assign`): once one action of a firing is done, the rest complete too.
    """
    for index in range(actions):
        key = f"{run.firing_key}#{index}"
        if key == run.item.key:
            continue
        entry = runtime.ledger.get(key)
        if entry is not None and entry.state == "done" and entry.outcome.get("result") == "done":
            return True
    return False


def idempotency_key(*parts: str) -> str:
    return IDEMPOTENCY_PREFIX + hashlib.sha256("\n".join(parts).encode()).hexdigest()


# --- bulk ----------------------------------------------------------------------------------

# Bulk actions that clear a field send no field of their own.
CLEARED_FIELDS: dict[str, str] = {"unassign": "owner_id", "unassign_ai_assistant": "ai_assistant_id"}


def target_fields(change: BulkChange) -> dict[str, Any]:
    """The conversation fields a bulk change sets (their names match the record's)."""
    target = change.as_fields()
    if change.action in CLEARED_FIELDS:
        target[CLEARED_FIELDS[change.action]] = None
    return target


def at_target(conversation: Conversation, target: Mapping[str, Any]) -> bool:
    return all(getattr(conversation, name, None) == value for name, value in target.items())


@executor("bulk")
def execute_bulk(runtime: Runtime, step: Step, runs: list[Run]) -> None:
    """One bulk call for every item that still needs it; the rest are done, gone or moot."""
    if step.bulk is None:
        raise StepError("bulk step without a change")
    change = step.bulk
    records = read_many(runtime, [run.item.conversation_id for run in runs])
    remaining = [run for run in runs if _bulk_needed(runtime, run, records, target_fields(change))]
    if not remaining:
        return
    ids = sorted({run.item.conversation_id for run in remaining})
    key = idempotency_key(
        *sorted(run.item.key for run in remaining),
        change.action,
        json.dumps(change.as_fields(), sort_keys=True, default=str),
    )
    count = runtime.api.bulk.bulk_action(
        change.action, conversation_ids=ids, idempotency_key=key, **change.as_fields()
    )
    for run in remaining:
        finish(runtime, run, "done", processed_count=count, batch=len(ids))


def _bulk_needed(
    runtime: Runtime, run: Run, records: Mapping[int, Conversation], target: Mapping[str, Any]
) -> bool:
    conversation = records.get(run.item.conversation_id)
    if conversation is None:
        finish(runtime, run, "skipped", reason="gone: the conversation no longer exists")
        return False
    if at_target(conversation, target):
        # Fields already there: our earlier attempt (or a person) applied it.
        if run.attempt > 1:
            RECONCILIATIONS.labels(result="already_applied").inc()
        finish(runtime, run, "done", already=True)
        return False
    if run.attempt > 1:
        RECONCILIATIONS.labels(result="not_applied").inc()
    reason = moot_reason(runtime, run, Fresh(runtime, conversation))
    if reason is not None:
        finish(runtime, run, "skipped", reason=reason)
        return False
    return True


# --- messages (reply / note) ----------------------------------------------------------------


@dataclass(frozen=True)
class SendPlan:
    """What to send: text and type, extra body fields; `skip` set when nothing is sent."""

    text: str = ""
    message_type: Literal["text", "note", "template"] = "text"
    fields: Mapping[str, Any] = field(default_factory=dict)
    skip: str | None = None
    # Types an earlier attempt may have sent (the window can close between attempts).
    could_have_sent: frozenset[str] = frozenset()


OutsideWindowFn = Callable[[ReplyAction, Conversation, str], SendPlan]
OUTSIDE_WINDOW: dict[str, OutsideWindowFn] = {
    "skip": lambda action, conv, text: SendPlan(skip="outside_window: the 24-hour window is closed"),
    "note": lambda action, conv, text: SendPlan(text, "note"),
    "template": lambda action, conv, text: (
        SendPlan(text, "template", {"template_name": action.template})
        if conv.channel == "whatsapp"
        else SendPlan(skip=f"outside_window: templates exist on whatsapp only, not {conv.channel}")
    ),
}
FALLBACK_TYPES = {"skip": "text", "note": "note", "template": "template"}


def window_closed(conversation: Conversation, now: datetime) -> bool:
    """Meta's 24-hour customer-service window, for the channels that enforce it."""
    if conversation.channel not in WINDOWED_CHANNELS:
        return False
    last_inbound = utc(conversation.last_inbound_at)
    return last_inbound is None or now - last_inbound > WINDOW


def message_action(data: Mapping[str, Any]) -> ReplyAction | NoteAction:
    kind = str(data.get("type", ""))
    if kind not in ("reply", "note"):
        raise StepError(f"message step with action type {kind!r}")
    fields = {k: v for k, v in data.items() if k != "type"}
    try:
        action = ACTION_TYPES.get(kind).model_validate(fields)
    except ValueError as exc:
        raise StepError(f"invalid {kind} action: {exc}") from None
    assert isinstance(action, ReplyAction | NoteAction)
    return action


def reply_text(runtime: Runtime, action: ReplyAction | NoteAction, fresh: Fresh) -> str:
    """The final text: a predefined message or the action's template, rendered; never `{{ }}`."""
    raw = action.text
    if raw is None and isinstance(action, ReplyAction):
        raw = _predefined_text(runtime, action.predefined)
    if raw is None:
        raise StepError("reply without text or predefined message")
    # The contact is one more API read per reply: fetch it only when the text uses it.
    contact = fresh.contact if _may_use_contact(raw) else None
    text = render(raw, fresh.conversation, contact, _agent(runtime, fresh.conversation))
    if "{{" in text or "}}" in text or not text.strip():
        raise TemplateRenderError("rendered text is empty or still holds '{{ }}'")
    return text


def _may_use_contact(text: str) -> bool:
    try:
        return uses_contact(text)
    except TemplateError:  # a broken predefined text: render reports it as a failed firing
        return True


def _predefined_text(runtime: Runtime, ref: int | str | None) -> str:
    try:
        found = (
            runtime.api.predefined.get(ref)
            if isinstance(ref, int)
            else runtime.api.predefined.get_by_title(str(ref))
        )
    except NotFound:
        found = None
    if found is None:
        raise StepError(f"predefined message {ref!r} not found")
    return found.message_text


def _agent(runtime: Runtime, conversation: Conversation) -> dict[str, Any] | None:
    if conversation.owner_id is None:
        return None
    agent = runtime.rulebook.ruleset.roster.agents.get(conversation.owner_id)
    return {"id": conversation.owner_id, "name": agent.name if agent else None}


def send_plan(runtime: Runtime, action: ReplyAction | NoteAction, fresh: Fresh) -> SendPlan:
    text = reply_text(runtime, action, fresh)
    if isinstance(action, NoteAction):
        return SendPlan(text, "note", could_have_sent=frozenset({"note"}))
    possible = frozenset({"text", FALLBACK_TYPES[action.outside_window]})
    if window_closed(fresh.conversation, runtime.clock.now()):
        plan = OUTSIDE_WINDOW[action.outside_window](action, fresh.conversation, text)
    else:
        plan = SendPlan(text, "text")
    return replace(plan, could_have_sent=possible)


# When the situation a firing answers began, by the rule's `once` (API time). A message
# answering the situation was created at or after it; `per_conversation` has no start.
SITUATION_START: dict[str, Callable[[Conversation], datetime | None]] = {
    "per_conversation": lambda c: None,
    "per_inbound_message": lambda c: c.last_inbound_at,
    "per_stage_entry": lambda c: c.stage_entered_at,
    "per_assignment": lambda c: c.assigned_at,
    # From the team's last reply: a response cycle opens after it; a follow-up step is sent
    # after the reply that anchors it (and becomes the last reply itself unless it is a
    # note), while an earlier sequence's identical nudge lies before it (worker/rules/cycles.py).
    "per_response_cycle": lambda c: c.last_outbound_at,
    "per_team_reply": lambda c: c.last_outbound_at,
}
BEGINNING = datetime.min.replace(tzinfo=UTC)


def read_back_since(runtime: Runtime, run: Run, fresh: Fresh) -> datetime:
    """The earliest creation time a message of this firing can have.

    From the situation's start rather than the ledger's claim, so that a send
    made before the ledger lost its data still counts.
    """
    rule = runtime.rulebook.ruleset.get(run.item.rule_id)
    if rule is not None:
        return utc(SITUATION_START[rule.once](fresh.conversation)) or BEGINNING
    entry = runtime.ledger.get(run.item.key)
    return (entry.claimed_at if entry else runtime.clock.now()) - CLOCK_SKEW


def already_sent(runtime: Runtime, run: Run, fresh: Fresh, plan: SendPlan) -> bool:
    """Read-back: is there an outbound message with our text, made since the situation began?"""
    since = read_back_since(runtime, run, fresh)
    return any(
        m.direction == "outbound"
        and m.message_type in plan.could_have_sent
        and m.message_text == plan.text
        and (utc(m.created_at) or since) >= since
        for m in fresh.messages
    )


@executor("message")
def execute_message(runtime: Runtime, step: Step, runs: list[Run]) -> None:
    action = message_action(step.action)
    for run in runs:
        with outcomes(runtime, [run]):
            _send_one(runtime, action, run)


def _send_one(runtime: Runtime, action: ReplyAction | NoteAction, run: Run) -> None:
    fresh = read_one(runtime, run)
    if fresh is None:
        return
    # Every attempt reads back, not only retries: attempt 1 may follow a send the
    # ledger forgot (Redis restarted without its data). The actor re-reads anyway.
    plan = send_plan(runtime, action, fresh)
    if plan.skip is None and already_sent(runtime, run, fresh, plan):
        RECONCILIATIONS.labels(result="already_applied").inc()
        finish(runtime, run, "done", reconciled=True, message_type=plan.message_type)
        return
    if run.attempt > 1:
        RECONCILIATIONS.labels(result="not_applied").inc()
    reason = moot_reason(runtime, run, fresh)
    if reason is not None:
        finish(runtime, run, "skipped", reason=reason)
        return
    if plan.skip is not None:
        finish(runtime, run, "skipped", reason=plan.skip)
        return
    sent = runtime.api.sends.send_message(
        fresh.conversation,
        plan.text,
        plan.message_type,
        idempotency_key=idempotency_key(run.item.key),
        **plan.fields,
    )
    finish(runtime, run, "done", message_id=sent.id, message_type=plan.message_type)


# --- automations ---------------------------------------------------------------------------


@executor("automation")
def execute_automation(runtime: Runtime, step: Step, runs: list[Run]) -> None:
    automation_id = step.action.get("automation_id")
    if automation_id is None:
        raise StepError("automation step without automation_id")
    for run in runs:
        with outcomes(runtime, [run]):
            _run_one(runtime, automation_id, run)


def _run_one(runtime: Runtime, automation_id: int | str, run: Run) -> None:
    fresh = read_one(runtime, run)
    if fresh is None:
        return
    if run.attempt > 1:
        # No read-back in the contract: the same key makes the server replay, not re-run.
        RECONCILIATIONS.labels(result="resent_with_key").inc()
    reason = moot_reason(runtime, run, fresh)
    if reason is not None:
        finish(runtime, run, "skipped", reason=reason)
        return
    automations = runtime.api.automations
    payload = automations.build_initial_payload(run.item.conversation_id)
    execution = automations.run(
        automation_id,
        run.item.conversation_id,
        initial_payload=payload,
        idempotency_key=idempotency_key(run.item.key),
    )
    finish(runtime, run, "done", execution_id=execution.id)
