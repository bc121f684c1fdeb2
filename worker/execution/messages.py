"""Message steps (reply / note): render, respect the 24-hour window, read back, send once."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from dramatiq.errors import Retry
from jinja2 import TemplateError

from worker.api.errors import ApiError, NotFound
from worker.api.models import WINDOWED_CHANNELS, Conversation, Message
from worker.execution.attachments import Outgoing, attachment_for, upload_fields
from worker.execution.policy import outcomes
from worker.execution.recheck import (
    MAX_RECHECKS,
    Fresh,
    StepStates,
    moot_reason,
    observe_staleness,
    out_of_redrives,
)
from worker.execution.registry import executor
from worker.execution.runs import Run, StepError, finish, finish_all, idempotency_key
from worker.metrics import RECONCILIATIONS
from worker.rules.actions import ACTIONS as ACTION_TYPES
from worker.rules.actions import NoteAction, ReplyAction
from worker.rules.context import utc
from worker.rules.firing import Step, situation_start
from worker.rules.templates import TemplateRenderError, render, uses_contact
from worker.runtime import Runtime
from worker.state.locks import BUSY_RETRY_MS
from worker.state.own_writes import OwnWrites

WINDOW = timedelta(hours=24)
STEP_BUDGET_SHARE = 0.25  # of the actor time limit: how long one message step keeps sending
# Read-back tolerance between our clock (claimed_at) and the API's (created_at).
CLOCK_SKEW = timedelta(seconds=30)


@dataclass(frozen=True)
class SendPlan:
    """What to send: text and type, extra body fields; `skip` set when nothing is sent."""

    text: str = ""
    message_type: Literal["text", "note", "template"] = "text"
    fields: Mapping[str, Any] = field(default_factory=dict)
    skip: str | None = None
    # Types an earlier attempt may have sent (the window can close between attempts).
    could_have_sent: frozenset[str] = frozenset()
    attachment: Outgoing | None = None  # uploaded right before the send (attachments.py)


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


def raw_text(runtime: Runtime, action: ReplyAction | NoteAction) -> str:
    """The template to render: the action's text or its predefined message (read once per step)."""
    raw = action.text
    if raw is None and isinstance(action, ReplyAction):
        raw = _predefined_text(runtime, action.predefined)
    if raw is None:
        raise StepError("reply without text or predefined message")
    return raw


def reply_text(runtime: Runtime, raw: str, fresh: Fresh) -> str:
    """The final text: `raw` rendered for the conversation; never `{{ }}`."""
    # The step reads contacts (in one batch) only when the text uses them.
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


def send_plan(runtime: Runtime, action: ReplyAction | NoteAction, raw: str, fresh: Fresh) -> SendPlan:
    text = reply_text(runtime, raw, fresh)
    if isinstance(action, NoteAction):
        return SendPlan(text, "note", could_have_sent=frozenset({"note"}))
    possible = frozenset({"text", FALLBACK_TYPES[action.outside_window]})
    plan = windowed(action, fresh.conversation, text, runtime.clock.now())
    return replace(plan, could_have_sent=possible)


def windowed(action: ReplyAction, conversation: Conversation, text: str, now: datetime) -> SendPlan:
    """What a reply becomes under the 24-hour window rule (`inboxpilot plan` shows the same)."""
    if window_closed(conversation, now):
        return OUTSIDE_WINDOW[action.outside_window](action, conversation, text)
    return SendPlan(text, "text")


BEGINNING = datetime.min.replace(tzinfo=UTC)


def read_back_since(runtime: Runtime, run: Run, conversation: Conversation) -> datetime:
    """The earliest creation time a message of this firing can have.

    From the situation's start rather than the ledger's claim, so that a send
    made before the ledger lost its data still counts.
    """
    rule = runtime.rulebook.ruleset.get(run.item.rule_id)
    if rule is not None:
        return utc(situation_start(rule.once, conversation)) or BEGINNING
    entry = runtime.ledger.get(run.item.key)
    return (entry.claimed_at if entry else runtime.clock.now()) - CLOCK_SKEW


def already_sent(runtime: Runtime, run: Run, fresh: Fresh, plan: SendPlan) -> bool:
    """Read-back: is there an outbound message with our text, made since the situation began,
    that no other firing has already counted as its own?

    Two situations of one rule send the same text; without the attribution a late
    send of the first would satisfy the second, which would then never be sent.
    """
    since = read_back_since(runtime, run, fresh.conversation)
    return any(
        runtime.sent.attribute_if_free(fresh.conversation.id, m.id, run.item.key)
        for m in fresh.messages
        if m.direction == "outbound"
        and m.message_type in plan.could_have_sent
        and m.message_text == plan.text
        and (utc(m.created_at) or since) >= since
    )


@executor("message")
def execute_message(runtime: Runtime, step: Step, runs: list[Run]) -> None:
    """The step's conversations, messages and contacts read in batches of 50, then one send per item."""
    action = message_action(step.action)
    raw = raw_text(runtime, action)
    # Every attempt reads back, not only retries: attempt 1 may follow a send the
    # ledger forgot (Redis restarted without its data). So messages are read as far
    # back as each firing's situation began.
    states = StepStates(
        runtime,
        runs,
        read_back=lambda run, conv: read_back_since(runtime, run, conv),
        contacts=_may_use_contact(raw),
    )
    sent: list[tuple[Conversation, Message]] = []
    retry: ApiError | Retry | None = None
    # A step sends up to 50 messages: on a slow API it must still end well inside the actor's
    # time limit and a shutdown's grace, so it stops starting sends after a quarter of the
    # limit and hands the rest to its next attempt (those already sent are finished).
    deadline = time.monotonic() + runtime.settings.actor_time_limit_s * STEP_BUDGET_SHARE
    try:
        for run in runs:
            if run.finished:
                continue  # gone: ended as skipped
            if time.monotonic() > deadline:
                retry = Retry("the step's time budget is spent: the rest in its next attempt", delay=0)
                break
            try:
                with outcomes(runtime, [run]):
                    message = _send_one(runtime, action, raw, run, states)
                    if message is not None:
                        sent.append(message)
            except ApiError as exc:  # retryable (outcomes settled the rest): the others go on
                retry = retry or exc
    finally:
        # The loop need not read our own replies back (worker/state/own_writes.py).
        OwnWrites(runtime.redis).record(sent)
    if retry is not None:
        # One send's transient failure must not hold back the step's other sends: they were
        # made; this attempt's retry finds them finished and tries the failed ones again.
        raise retry


def _send_one(
    runtime: Runtime, action: ReplyAction | NoteAction, raw: str, run: Run, states: StepStates
) -> tuple[Conversation, Message] | None:
    for _ in range(MAX_RECHECKS):
        fresh = states.get(run)
        if fresh is None:
            return None
        plan = _checked_plan(runtime, action, raw, run, fresh)
        if plan is None:
            return None
        # Uploads (once per content, recorded once per conversation) come before the last
        # change check, so the send still follows that check immediately.
        media = upload_fields(runtime, plan.attachment, fresh.conversation) if plan.attachment else {}
        if states.moved(run):  # the conversation changed while we checked it: check it again
            continue
        sent = runtime.api.sends.send_message(
            fresh.conversation,
            plan.text,
            plan.message_type,
            idempotency_key=idempotency_key(run.item.key),
            **plan.fields,
            **media,
        )
        staleness_ms = observe_staleness(runtime, plan.message_type, fresh.read_at)
        # Durable before the next send, in one round trip: the outcome and the message's
        # attribution to this item (the read-back's proof), in one ledger script.
        finish_all(
            runtime,
            [run],
            "done",
            attributed=(fresh.conversation.id, sent.id),
            message_id=sent.id,
            message_type=plan.message_type,
            staleness_ms=staleness_ms,
            **_attached(plan),
        )
        return fresh.conversation, sent
    raise Retry("the conversation kept changing right before the send", delay=BUSY_RETRY_MS)


def _checked_plan(
    runtime: Runtime, action: ReplyAction | NoteAction, raw: str, run: Run, fresh: Fresh
) -> SendPlan | None:
    """What to send after the read-back and the re-check; None when the item finished instead."""
    # Every attempt reads back, not only retries: attempt 1 may follow a send the
    # ledger forgot (Redis restarted without its data).
    plan = send_plan(runtime, action, raw, fresh)
    if plan.skip is None:
        file, skip = attachment_for(runtime, action, run, fresh.conversation.channel, plan.message_type)
        plan = replace(plan, attachment=file, skip=skip)
    if plan.skip is None and already_sent(runtime, run, fresh, plan):
        RECONCILIATIONS.labels(result="already_applied").inc()
        finish(runtime, run, "done", reconciled=True, message_type=plan.message_type)
        return None
    if run.attempt > 1:
        RECONCILIATIONS.labels(result="not_applied").inc()
    reason = moot_reason(runtime, run, fresh) or plan.skip
    if reason is not None:
        finish(runtime, run, "skipped", reason=reason)
        return None
    return None if out_of_redrives(runtime, run) else plan


def _attached(plan: SendPlan) -> dict[str, Any]:
    return {"attachment": plan.attachment.ref} if plan.attachment is not None else {}
