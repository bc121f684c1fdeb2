"""The backtest's fast path gives exactly the report of a straightforward replay.

`worker.backtest` reads 50 conversations of one channel per message find and replays
each history incrementally (one evaluation per instant, message-derived state reused
between messages). The reference below is the backtest as it was before (issue 14):
every conversation's messages read on their own, the state rebuilt from all messages
at every instant, each instant evaluated once for its due time and once for its
matches (with reasons). Both run on the shipped rules over a seeded sandbox plus
edge cases; their `Report.to_dict()` must be identical.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from worker.api.client import ApiClient
from worker.api.errors import NotFound
from worker.api.models import Conversation
from worker.api.services import Services
from worker.backtest import (
    MAX_STEPS_PER_GAP,
    Firing,
    History,
    IdleCheck,
    Report,
    _planned,
    _waited,
    events,
    fetch_histories,
    pauses_at,
    replay,
)
from worker.config import load_settings
from worker.rules.context import Pauses, utc
from worker.rules.evaluator import InMemoryState, Snapshot, evaluate
from worker.rules.loader import load_rules
from worker.rules.model import RuleSet
from worker.scheduling.snapshots import rule_window
from worker.simulator.testing import SimulatorHandle

# The shipped rules: SLA policies, follow-ups, routing, quiet hours.
RULES_DIR = Path(__file__).resolve().parent.parent / "rules"
# Beside them: a cap (what has fired counts) and an SLA clock that pauses around the clock.
EXTRA_RULES = """
calendars:
  all_day:
    timezone: UTC
    hours: {mon: ["00:00-24:00"], tue: ["00:00-24:00"], wed: ["00:00-24:00"], thu: ["00:00-24:00"],
            fri: ["00:00-24:00"], sat: ["00:00-24:00"], sun: ["00:00-24:00"]}
  noon:
    timezone: UTC
    hours: {mon: ["12:00-13:00"], tue: ["12:00-13:00"], wed: ["12:00-13:00"], thu: ["12:00-13:00"],
            fri: ["12:00-13:00"], sat: ["12:00-13:00"], sun: ["12:00-13:00"]}
sla_policies:
  all_day:
    calendar: all_day
    first_response: 1h
    tiers:
      - at: 100%
        then: [{note: "late, around the clock"}]
rules:
  # On a closed conversation: hold-closed-young holds the owner slot until it is 6 h old, then
  # take-closed wins it at the next instant the replay evaluates (a due time of noon-note).
  - id: hold-closed-young
    priority: 90
    when: {status: closed, age: {shorter_than: 6h}}
    then: [{assign: 101}]
  - id: take-closed
    priority: 80
    when: {status: closed, channel: messenger}
    then: [{assign: 102}]
  - id: noon-note
    when: {status: closed, in_business_hours: noon}
    then: [{note: "closed, seen at noon"}]
  - id: closed-2h
    when: {status: closed, age: {longer_than: 2h}}
    then: [{note: "closed, 2 h old"}]
  - id: capped-nag
    once: per_inbound_message
    max_per_conversation: 2
    when: {status: open, waiting_for_reply: {longer_than: 5m}}
    then: [{note: "still waiting"}]
"""
MIN = timedelta(minutes=1)
ALL_DAY_BREACH = "sla-all_day-first-response-100"
LATENCY = timedelta(seconds=60)


# --- the reference: the backtest before issue 14, kept here on purpose ---------------------------


def reference_histories(api: Services, pauses: Mapping[int, Pauses]) -> Iterator[History]:
    """Every conversation, changed in the window or not, each with its messages read on their own."""
    for c in api.conversations.find():
        messages = tuple(api.messages.all_for(c.channel, c.id))
        try:
            contact = api.contacts.get(c.contact_id) if c.contact_id is not None else None
        except NotFound:
            contact = None
        yield History(c, messages, contact, pauses.get(c.id, {}))


def reference_state_at(history: History, t: datetime, customer_text: bool) -> Snapshot:
    conv = history.conversation
    seen = [m for m in history.messages if (utc(m.created_at) or t) <= t]
    inbound = [utc(m.created_at) for m in seen if m.direction == "inbound"]
    replies = [utc(m.created_at) for m in seen if m.direction == "outbound" and m.message_type != "note"]
    last_in = max((x for x in inbound if x), default=None)
    last_out = max((x for x in replies if x), default=None)
    assigned = utc(conv.assigned_at)
    owned = assigned is None or t >= assigned
    updated = utc(conv.updated_at)
    closed = conv.status == "closed" and updated is not None and t >= updated
    record = conv.model_copy(
        update={
            "last_inbound_at": last_in,
            "last_outbound_at": last_out,
            "last_message_at": max((x for x in (last_in, last_out) if x), default=None),
            "unread_count": sum(1 for x in inbound if x and (last_out is None or x > last_out)),
            "status": "closed" if closed else "open",
            "owner_id": conv.owner_id if owned else None,
            "assigned_at": assigned if owned else None,
            "updated_at": t,
        }
    )
    window = rule_window(record, tuple(reversed(seen)), customer_text)
    return Snapshot(record, window, history.contact, pauses_at(history.pauses, t))


def reference_replay(
    ruleset: RuleSet, histories: Sequence[History], since: datetime, until: datetime
) -> Report:
    report = Report(since, until, 0)
    for history in histories:
        report.conversations += 1
        report.firings.extend(_reference_one(ruleset, history, since, until))
    report.firings.sort(key=lambda f: (f.at, f.conversation_id, f.rule_id))
    return report


def _reference_one(ruleset: RuleSet, history: History, since: datetime, until: datetime) -> list[Firing]:
    text = ruleset.reads_customer_text
    state, fired, out = InMemoryState(), set(), []
    changes = events(history)
    for index, (t, _kind) in enumerate(changes):
        end = changes[index + 1][0] if index + 1 < len(changes) else until
        for at in _reference_instants(ruleset, history, t, min(end, until)):
            for match in evaluate(ruleset, reference_state_at(history, at, text), at, state).matches:
                if match.firing_key in fired:
                    continue
                fired.add(match.firing_key)
                if at < since:
                    continue
                state.record(match.rule_id, history.conversation.id)
                record = reference_state_at(history, at, text).conversation
                rule = ruleset.get(match.rule_id)
                assert rule is not None
                moot = None
                for t2, kind in changes:
                    if at < t2 <= at + LATENCY:
                        again = evaluate(ruleset, reference_state_at(history, t2, text), t2).matches
                        if not any(m.rule_id == rule.id and m.firing_key == match.firing_key for m in again):
                            moot = f"{kind} at {t2.isoformat()}"
                            break
                out.append(
                    Firing(match.rule_id, history.conversation.id, at, match.firing_key,
                           tuple(a.label() for a in match.actions), _planned(match, record), moot,
                           _waited(rule, record, at))
                )  # fmt: skip
    return out


def _reference_instants(
    ruleset: RuleSet, history: History, start: datetime, end: datetime
) -> Iterator[datetime]:
    at = start
    for _ in range(MAX_STEPS_PER_GAP):
        if at >= end and at != start:
            return
        yield at
        snapshot = reference_state_at(history, at, ruleset.reads_customer_text)
        due = evaluate(ruleset, snapshot, at).earliest_due
        if due is None or due >= end or due <= at:
            return
        at = due


# --- the data: a seeded sandbox plus the edge cases --------------------------------------------


def _edge_cases(handle: SimulatorHandle) -> tuple[datetime, dict[str, int]]:
    """Around `since`, three days into the seeded fortnight; returns `since` and the edge cases' ids."""
    sim, clock = handle.sim, handle.clock
    seeded_until = clock.now()
    since = seeded_until - timedelta(days=3)
    ids: dict[str, int] = {}
    # A long conversation: 81 messages and 10 notes, 60 of them inside the window; it ends unanswered.
    clock.set(since - 100 * MIN)
    ids["long"] = sim.new_conversation(channel="webchat", text="first")["id"]
    for n in range(40):
        sim.customer_message(ids["long"], f"question {n}")
        clock.advance(7 * MIN)
        sim.team_reply(ids["long"], f"answer {n}")
        if n % 4 == 0:
            sim.team_reply(ids["long"], f"note {n}", message_type="note")
        clock.advance(3 * MIN)
    sim.customer_message(ids["long"], "and one more thing")
    # Changed just before `since`: a customer message 30 s before (its deadlines fall after it).
    clock.set(since - 3 * 60 * MIN)
    ids["before"] = sim.new_conversation(channel="sms")["id"]
    ids["just_before"] = sim.new_conversation(channel="whatsapp")["id"]
    clock.set(since - timedelta(seconds=30))
    sim.customer_message(ids["just_before"], "still waiting")
    sim.team_reply(ids["before"], "hello")  # its last change, before the window
    # Idle since before `since`, never answered: the all-day SLA (1 h) breaches 30 min into the
    # window (reported) or 2 h before it (used up before the window: not reported).
    clock.set(since - 30 * MIN)
    ids["idle_due_in_window"] = sim.new_conversation(channel="webchat", text="anyone there?")["id"]
    clock.set(since - 3 * 60 * MIN)
    ids["idle_due_before"] = sim.new_conversation(channel="webchat", text="hello?")["id"]
    # Idle, and out of every shipped rule's reach (stage 13 pauses the standard SLA, owner 201 is
    # no frontline agent): only the all-day SLA can fire. Its deadline is `since` itself, or falls
    # 110 min into the window because a recorded pause ends inside it (see _pauses).
    for name, start in (("idle_due_at_since", since - 60 * MIN), ("idle_paused", since - 120 * MIN)):
        clock.set(start)
        ids[name] = sim.new_conversation(channel="sms", pipeline_stage_id=13)["id"]
        clock.advance(10 * MIN)
        sim.reassign(ids[name], 201)
    # Closed before `since` at noon: every rule that fires on it fires before the window but
    # take-closed, which wins the owner slot at the next noon (inside the window). `since` is 09:00.
    clock.set(since - 22 * 60 * MIN)
    ids["idle_closed"] = sim.new_conversation(channel="messenger")["id"]
    clock.advance(90 * MIN)
    sim.human_change(ids["idle_closed"], {"status": "closed"})
    clock.set(since + 5 * 60 * MIN)
    sim.team_reply(ids["just_before"], "sorry", message_type="note")
    # SLA pauses (their records are passed in below) and a pause stage (13), reassigned mid-window.
    ids["paused"] = sim.new_conversation(channel="instagram")["id"]
    clock.advance(20 * MIN)
    sim.human_change(ids["paused"], {"pipeline_stage_id": 13})
    sim.reassign(ids["paused"], 102)
    # A pause recorded from +10 to +40 min; a note at +20 min is the last event (pauses below).
    clock.set(since + 60 * MIN)
    ids["quiet_pause"] = sim.new_conversation(channel="messenger")["id"]
    clock.advance(20 * MIN)
    sim.team_reply(ids["quiet_pause"], "looking", message_type="note")
    clock.set(seeded_until + timedelta(hours=6))
    return since, ids


def _pauses(since: datetime, ids: dict[str, int], seeded: Sequence[Conversation]) -> dict[int, Pauses]:
    intervals = [(since - 3 * 60 * MIN, since - 60 * MIN), (since + 60 * MIN, since + 90 * MIN)]
    out: dict[int, Pauses] = {
        ids[name]: {"standard": intervals} for name in ("paused", "just_before", "long")
    }
    out[ids["quiet_pause"]] = {"all_day": [(since + 70 * MIN, since + 100 * MIN)]}
    out[ids["idle_paused"]] = {"all_day": [(since - 110 * MIN, since + 60 * MIN)]}
    for c in seeded[::3]:  # a third of the seeded ones: paused across `since`, one still open
        out[c.id] = {"standard": [(since - 2 * 60 * MIN, since + 30 * MIN), (since + 6 * 60 * MIN, None)]}
    return out


@pytest.fixture
def sandbox(
    simulator: SimulatorHandle, tmp_path: Path
) -> Iterator[tuple[Services, RuleSet, datetime, dict[str, int]]]:
    simulator.sim.seed(150, seed=7)
    since, ids = _edge_cases(simulator)
    settings = load_settings(api_url=simulator.url, api_token=simulator.token)
    api = Services(ApiClient.from_settings(settings, clock=simulator.clock))
    extra = tmp_path / "extra.yaml"
    extra.write_text(EXTRA_RULES)
    loaded = load_rules([RULES_DIR, extra])
    assert not loaded.errors, loaded.errors
    ruleset = loaded.ruleset
    try:
        yield api, ruleset, since, ids
    finally:
        api.client.close()


def test_the_fast_backtest_gives_the_reference_report(
    sandbox: tuple[Services, RuleSet, datetime, dict[str, int]], simulator: SimulatorHandle
) -> None:
    api, ruleset, since, ids = sandbox
    now = simulator.clock.now()
    seeded = list(api.conversations.find({"id": {"$lte": 150}}))
    recorded = _pauses(since, ids, seeded)

    def pause_reader(batch: Sequence[Conversation]) -> Mapping[int, Pauses]:
        return {c.id: recorded[c.id] for c in batch if c.id in recorded}

    idle_check = IdleCheck(ruleset, since, now)
    read = list(fetch_histories(api, since, contacts=True, pauses=pause_reader, idle=idle_check))
    fast = replay(ruleset, read, since, now)
    histories = list(reference_histories(api, recorded))
    reference = reference_replay(ruleset, histories, since, now)
    assert fast.to_dict() == reference.to_dict()

    # Idle conversations: a deadline inside the window fires there, one before it does not.
    breaches = {(f.conversation_id, f.at) for f in fast.firings if f.rule_id == ALL_DAY_BREACH}
    assert (ids["idle_due_in_window"], since + 30 * MIN) in breaches
    assert ids["idle_due_before"] not in {c for c, _ in breaches}
    assert (ids["idle_due_at_since"], since) in breaches
    assert (ids["idle_paused"], since + 110 * MIN) in breaches
    took = [(f.conversation_id, f.at) for f in fast.firings if f.rule_id == "take-closed"]
    assert (ids["idle_closed"], since + 3 * 60 * MIN) in took  # no rule but take-closed can fire anew
    idle = [h for h in read if h.idle]
    assert idle and not any(h.messages for h in idle)  # ruled out by the record: nothing read
    replayed_idle = {h.conversation.id for h in read if not h.idle and _unchanged(h, since)}
    assert {f.conversation_id for f in fast.firings} & replayed_idle

    # The data exercises what the fast path takes shortcuts on.
    long = next(h for h in histories if h.conversation.id == ids["long"])
    assert sum(since <= utc(m.created_at) for m in long.messages) > 50  # type: ignore[operator]
    fired = {f.conversation_id for f in fast.firings}
    assert {ids["long"], ids["just_before"], ids["paused"], ids["quiet_pause"]} <= fired
    nags = [f for f in fast.firings if f.rule_id == "capped-nag" and f.conversation_id == ids["long"]]
    assert len(nags) == 2  # the cap holds: 30 of its customer messages waited longer than 5 min
    assert len(fast.firings) > 100 and fast.breaches() and len(fast.per_rule()) > 5
    unpaused = replay(
        ruleset, [History(h.conversation, h.messages, h.contact) for h in histories], since, now
    )
    assert unpaused.to_dict() != fast.to_dict()  # the pauses change what fires


def _unchanged(history: History, since: datetime) -> bool:
    updated = utc(history.conversation.updated_at)
    return updated is not None and updated < since
