"""The one snapshot reader (worker/scheduling/snapshots.py) against the simulator: batched reads
equal one-by-one reads, the cache never serves a stale entry, our own replies are not read back,
and the loop, the re-check, `explain` and `backtest` evaluate the same snapshot."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import worker.rules.evaluator as evaluator
import worker.scheduling.tick as tick
from tests.e2e.conftest import CountingTransport, RuntimeFactory
from tests.support.dispatchers import Collector
from worker.api.errors import NotFound
from worker.api.models import Conversation, Message
from worker.api.services import NEWEST_FIRST, Services, messages_path
from worker.backtest import fetch_histories, state_at
from worker.cli import app, inspect_cmds
from worker.execution.recheck import StepStates
from worker.execution.runs import Run
from worker.rules.cycles import messages_needed_since
from worker.rules.evaluator import Snapshot
from worker.rules.firing import Item
from worker.runtime import Runtime
from worker.scheduling.snapshots import SnapshotCache, SnapshotReader
from worker.scheduling.tick import Loop
from worker.simulator.testing import SimulatorHandle
from worker.state.own_writes import OwnWrites
from worker.state.sla_pauses import SlaPauses

RULES = """
sla_policies:
  std:
    first_response: 1h
    next_response: 1h
    pause: {stages: [13]}
    tiers:
      - {at: 100%, then: [{note: "[breach]"}]}
rules:
  - id: refund
    when: {status: open, message_text: {keywords: [refund]}, contact: {field: name, set: true}}
    then:
      - note: "refund asked"
  - id: nudge
    once: per_inbound_message
    when: {status: open, silent_after_reply: 4h}
    then:
      - reply: "Anything else?"
"""
WED_10 = datetime(2026, 3, 4, 10, 0, tzinfo=UTC)


def one_by_one(api: Services, runtime: Runtime, conversations: list[Conversation]) -> list[Snapshot]:
    """The reference: each conversation's window read alone (paged), each contact by get."""
    out = []
    for conv in conversations:
        window = messages_needed_since(conv, runtime.rulebook.ruleset.reads_customer_text)
        query: dict[str, Any] = {"conversation_id": conv.id, "message_type": {"$ne": "note"}}
        if window.start is not None:
            query["created_at"] = {"$gt" if window.strict else "$gte": window.start}
        messages = tuple(
            api.client.find_all_as(
                Message, messages_path(conv.channel), query, sort=NEWEST_FIRST, id_key="_id"
            )
        )
        try:
            contact = api.contacts.get(conv.contact_id) if conv.contact_id is not None else None
        except NotFound:
            contact = None
        pauses = SlaPauses(runtime.redis).read(runtime.rulebook.ruleset, [conv], runtime.clock.now())
        out.append(Snapshot(conv, messages, contact, pauses.get(conv.id, {})))
    return out


def _scene(simulator: SimulatorHandle) -> dict[str, int]:
    """Conversations in every message state, one with 60 customer messages after a reply."""
    sim = simulator.sim
    simulator.clock.set(WED_10)
    ids = {}
    for n in range(70):
        channel = ("whatsapp", "sms", "webchat")[n % 3]
        ids[f"c{n}"] = sim.new_conversation(channel=channel, text=f"refund please {n}")["id"]
        simulator.clock.advance(1)
        if n % 4 == 0:
            sim.team_reply(ids[f"c{n}"])
        if n % 5 == 0:
            sim.team_reply(ids[f"c{n}"], "internal", message_type="note")
    chatty = ids["c0"]
    for k in range(60):
        simulator.clock.advance(1)
        sim.customer_message(chatty, f"refund? {k}")
    ids["chatty"] = chatty
    return ids


NO_TEXT_RULES = RULES.replace("message_text: {keywords: [refund]}, ", "")


@pytest.mark.parametrize("rules", [RULES, NO_TEXT_RULES], ids=["customer-text", "no-customer-text"])
def test_batched_reader_returns_what_one_by_one_reads_return(
    simulator: SimulatorHandle, make_runtime: RuntimeFactory, rules: str
) -> None:
    ids = _scene(simulator)
    counting = CountingTransport()
    runtime = make_runtime(rules, transport=counting)
    assert runtime.rulebook.ruleset.reads_customer_text is (rules == RULES)
    conversations = list(runtime.api.conversations.find({"status": "open"}))
    assert len(conversations) == 70
    counting.requests.clear()
    batched = SnapshotReader(runtime.api, SlaPauses(runtime.redis)).read(
        runtime.rulebook.ruleset, conversations, runtime.clock.now()
    )
    reads = len(counting.requests)
    assert batched == one_by_one(runtime.api, runtime, conversations)
    chatty = next(s for s in batched if s.conversation.id == ids["chatty"])
    assert chatty.messages is not None and len(chatty.messages) == 60  # all 60 since the reply, not 50
    # 3 channels x (1 or 2 message pages) + 2 contact finds, not 2 x 70 reads.
    assert reads <= 3 * 2 + 1 + 2, counting.requests


def test_a_stale_cache_entry_is_never_used_after_the_conversation_changed(
    simulator: SimulatorHandle, make_runtime: RuntimeFactory
) -> None:
    ids = _scene(simulator)
    counting = CountingTransport()
    runtime = make_runtime(RULES, transport=counting)
    reader = SnapshotReader(runtime.api, cache=SnapshotCache())
    ruleset = runtime.rulebook.ruleset

    def read_all() -> list[Snapshot]:
        conversations = list(runtime.api.conversations.find({"status": "open"}))
        counting.requests.clear()
        return reader.read(ruleset, conversations, runtime.clock.now(), refresh_contacts=False)

    read_all()
    again = read_all()
    assert not [r for r in counting.requests if "messages" in r[1]]  # nothing moved: no read
    simulator.clock.advance(5)
    simulator.sim.customer_message(ids["c3"], "and a refund for this too")
    simulator.sim.team_reply(ids["c7"], "a person answers")
    simulator.sim.team_reply(ids["c8"], "a note", message_type="note")
    after = read_all()
    assert [r for r in counting.requests if "messages" in r[1]]
    fresh = SnapshotReader(runtime.api).read(ruleset, [s.conversation for s in after], runtime.clock.now())
    assert after == fresh  # never the stale entry
    changed = {s.conversation.id: s for s in after}
    assert changed[ids["c3"]].messages != next(s for s in again if s.conversation.id == ids["c3"]).messages
    assert (changed[ids["c3"]].messages or ())[0].message_text == "and a refund for this too"


def test_our_own_reply_is_not_read_back(simulator: SimulatorHandle, make_runtime: RuntimeFactory) -> None:
    simulator.clock.set(WED_10)
    cid = simulator.sim.new_conversation(channel="sms", text="hello")["id"]
    counting = CountingTransport()
    runtime = make_runtime(RULES, transport=counting)
    reader = SnapshotReader(runtime.api, cache=SnapshotCache(), own_writes=OwnWrites(runtime.redis))
    ruleset = runtime.rulebook.ruleset
    before = runtime.api.conversations.get(cid)
    reader.read(ruleset, [before], runtime.clock.now())
    simulator.clock.advance(2)
    sent = runtime.api.sends.send_message(before, "our reply")
    OwnWrites(runtime.redis).record([(before, sent)])
    now = runtime.api.conversations.get(cid)
    counting.requests.clear()
    (snap,) = reader.read(ruleset, [now], runtime.clock.now(), refresh_contacts=False)
    assert counting.requests == []  # neither messages nor contact read
    assert snap == SnapshotReader(runtime.api).read(ruleset, [now], runtime.clock.now())[0]


def test_loop_recheck_explain_and_backtest_evaluate_the_same_snapshot(
    simulator: SimulatorHandle, make_runtime: RuntimeFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    sim = simulator.sim
    simulator.clock.set(WED_10)
    cid = sim.new_conversation(channel="webchat", text="refund please")["id"]
    sim.team_reply(cid, "a note no rule reads", message_type="note")  # the re-check reads it back
    runtime = make_runtime(RULES)
    loop = Loop(runtime, Collector())
    simulator.clock.advance(timedelta(minutes=10))
    sim.human_change(cid, {"pipeline_stage_id": 13})
    loop.poll_once()  # the loop sees the pause begin ...
    simulator.clock.advance(timedelta(minutes=15))
    sim.human_change(cid, {"pipeline_stage_id": 12})
    seen: list[Snapshot] = []
    real = tick.evaluate
    monkeypatch.setattr(
        tick, "evaluate", lambda rs, snap, *a, **k: (seen.append(snap), real(rs, snap, *a, **k))[1]
    )
    loop.poll_once()  # ... and end: the record holds one closed pause
    loop_snapshot = next(s for s in seen if s.conversation.id == cid)
    assert loop_snapshot.sla_pauses["std"] and loop_snapshot.sla_pauses["std"][0][1] is not None

    rule = runtime.rulebook.ruleset.get("refund")
    assert rule is not None
    run = Run(Item(f"refund:{cid}:c#0", "refund", cid), 1, "note")
    fresh = StepStates(runtime, [run]).get(run)
    assert fresh is not None
    recheck = fresh.snapshot(rule)
    assert recheck.conversation == loop_snapshot.conversation
    assert recheck.messages == loop_snapshot.messages and recheck.contact == loop_snapshot.contact
    assert recheck.sla_pauses == loop_snapshot.sla_pauses

    seen.clear()
    monkeypatch.setattr(
        evaluator, "evaluate", lambda rs, snap, *a, **k: (seen.append(snap), real(rs, snap, *a, **k))[1]
    )
    monkeypatch.setattr(inspect_cmds, "connect", lambda url: runtime.redis)
    rules = tmp_path / "explain.yaml"
    rules.write_text(RULES)
    env = {
        "INBOXPILOT_API_URL": simulator.url,
        "INBOXPILOT_API_TOKEN": simulator.token,
        "INBOXPILOT_RULES_PATH": str(rules),
        "INBOXPILOT_REDIS_URL": "redis://127.0.0.1:1/0",  # connect() is the test's Redis
    }
    at = runtime.clock.now().isoformat()
    result = CliRunner().invoke(app, ["explain", "-c", str(cid), "--at", at], env=env)
    assert result.exit_code == 0, result.output
    assert seen == [loop_snapshot]

    pauses = SlaPauses(runtime.redis)
    now = runtime.clock.now()
    (history,) = fetch_histories(
        runtime.api,
        WED_10 - timedelta(days=1),
        contacts=True,
        pauses=lambda convs: pauses.read(runtime.rulebook.ruleset, convs, now),
    )
    replayed = state_at(history, now, runtime.rulebook.ruleset.reads_customer_text)
    assert replayed.sla_pauses == loop_snapshot.sla_pauses
    assert replayed.messages == loop_snapshot.messages and replayed.contact == loop_snapshot.contact


REPLY_ALL = """
rules:
  - id: ack
    once: per_inbound_message
    when: {status: open, waiting_for_reply: {longer_than: 1m}}
    then:
      - reply: "We got your message."
"""


def test_a_step_of_k_replies_costs_k_posts_and_about_two_reads_per_50(
    simulator: SimulatorHandle, make_runtime: RuntimeFactory
) -> None:
    from worker.execution.execute import execute

    simulator.clock.set(WED_10)
    k = 120
    for n in range(k):
        simulator.sim.new_conversation(channel="sms", text=f"hello {n}")
    simulator.clock.advance(timedelta(minutes=5))
    counting = CountingTransport()
    runtime = make_runtime(REPLY_ALL, transport=counting)
    collector = Collector()
    Loop(runtime, collector).poll_once()
    assert sum(len(s.items) for s in collector.steps) == k
    assert len(collector.steps) == 3  # replies with the same action share a step, 50 at most
    audit_before = len(simulator.sim.audit_log())
    counting.requests.clear()
    for step in collector.steps:
        execute(runtime, step)
    posts = [e for e in simulator.sim.audit_log()[audit_before:] if e.method == "POST" and e.applied]
    reads = [r for r in counting.requests if r[0] == "GET"]
    assert len(posts) == k
    assert len(counting.requests) <= k + 2 * -(-k // 50), reads


# --- packed message reads (a channel costs about ceil(messages / 50) finds) ----------------------


def _message_finds(counting: CountingTransport) -> int:
    return sum(1 for _, path in counting.requests if "conversation-messages" in path)


def _windows_of(simulator: SimulatorHandle, sizes: list[int], *, same_instant: bool = False) -> None:
    """sms conversations answered by the team, then `sizes[i]` customer messages each (the
    window: every customer message after the reply), a second apart or all at one instant."""
    sim = simulator.sim
    for n, size in enumerate(sizes):
        cid = sim.new_conversation(channel="sms", text=f"refund {n}")["id"]
        simulator.clock.advance(1)
        sim.team_reply(cid)
        simulator.clock.advance(1)
        for k in range(size):
            if not same_instant:
                simulator.clock.advance(1)
            sim.customer_message(cid, f"refund? {k}")


def _read_all(runtime: Runtime) -> tuple[list[Conversation], list[Snapshot]]:
    conversations = list(runtime.api.conversations.find({"status": "open"}))
    reader = SnapshotReader(runtime.api, SlaPauses(runtime.redis))
    return conversations, reader.read(runtime.rulebook.ruleset, conversations, runtime.clock.now())


def test_packed_reads_equal_one_by_one_reads_across_page_cuts(
    simulator: SimulatorHandle, make_runtime: RuntimeFactory
) -> None:
    """Windows of 0 to 120 messages cut by page boundaries anywhere: the same snapshots as
    reading each alone, in ceil(messages / 50) finds, not one short page per 50 conversations
    (each 50 here hold 59 messages: unpacked, 2 finds each)."""
    simulator.clock.set(WED_10)
    _windows_of(simulator, ([10] + [1] * 49) * 4 + [0, 3, 17, 49, 50, 51, 120, 99, 33])
    counting = CountingTransport()
    runtime = make_runtime(RULES, transport=counting)
    counting.requests.clear()
    conversations, batched = _read_all(runtime)
    finds = _message_finds(counting)
    assert batched == one_by_one(runtime.api, runtime, conversations)
    lengths = [len(s.messages or ()) for s in batched]
    assert max(lengths) == 120 and sum(lengths) > 600
    assert finds <= -(-sum(lengths) // 50) + 1, (finds, sum(lengths))


def test_a_window_with_more_than_50_messages_at_one_instant(
    simulator: SimulatorHandle, make_runtime: RuntimeFactory
) -> None:
    """A range cannot split 60 messages created at one instant: after the cut makes no
    progress, that conversation is paged by $skip; the snapshots stay exact."""
    simulator.clock.set(WED_10)
    _windows_of(simulator, [60], same_instant=True)
    _windows_of(simulator, [3, 70, 0, 1])
    runtime = make_runtime(RULES)
    conversations, batched = _read_all(runtime)
    assert batched == one_by_one(runtime.api, runtime, conversations)
    assert sorted(len(s.messages or ()) for s in batched) == [1, 2, 3, 60, 70]


def test_a_server_that_ignores_the_packed_sort_still_gives_exact_snapshots(
    simulator: SimulatorHandle, make_runtime: RuntimeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pages not sorted by conversation would make the packing wrong: the reader notices and
    reads those conversations the unpacked way."""
    from worker.api import services

    ids = _scene(simulator)
    runtime = make_runtime(RULES)
    monkeypatch.setattr(services, "BY_CONVERSATION", {"created_at": -1, "_id": -1})
    conversations = list(runtime.api.conversations.find({"status": "open"}))
    batched = SnapshotReader(runtime.api).read(runtime.rulebook.ruleset, conversations, runtime.clock.now())
    reference = one_by_one(runtime.api, runtime, conversations)
    assert [s.messages for s in batched] == [s.messages for s in reference]
    assert len(next(s for s in batched if s.conversation.id == ids["chatty"]).messages or ()) == 60


# --- reads only where a rule that uses them can match (worker/rules/needs.py) --------------------

STAGE_RULES = """
rules:
  - id: refund-in-stage
    when: {status: open, pipeline_stage: 5, waiting_for_reply: 1m, message_text: {keywords: [refund]}}
    then:
      - note: "refund asked in stage 5"
"""


def test_a_rule_ruled_out_by_the_record_reads_no_messages_until_the_stage_moves(
    simulator: SimulatorHandle, make_runtime: RuntimeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = simulator.sim
    simulator.clock.set(WED_10)
    cid = sim.new_conversation(channel="sms", text="I want a refund")["id"]
    sim.human_change(cid, {"pipeline_stage_id": 4})
    counting = CountingTransport()
    runtime = make_runtime(STAGE_RULES.replace("pipeline_stage", "stage"), transport=counting)
    collector = Collector()
    loop = Loop(runtime, collector)
    seen: list[Snapshot] = []
    real = tick.evaluate
    monkeypatch.setattr(
        tick, "evaluate", lambda rs, snap, *a, **k: (seen.append(snap), real(rs, snap, *a, **k))[1]
    )
    simulator.clock.advance(timedelta(minutes=5))
    counting.requests.clear()
    loop.poll_once()
    assert _message_finds(counting) == 0 and not collector.steps
    assert [s.messages for s in seen if s.conversation.id == cid] == [None]  # not read, not "none"
    sim.human_change(cid, {"pipeline_stage_id": 5})
    simulator.clock.advance(timedelta(seconds=30))
    seen.clear()
    loop.poll_once()
    assert _message_finds(counting) == 1
    (snapshot,) = [s for s in seen if s.conversation.id == cid]
    assert snapshot.messages is not None and snapshot.messages[0].message_text == "I want a refund"
    assert [s.items[0].key.split(":")[0] for s in collector.steps] == ["refund-in-stage"]


def test_skipped_reads_give_the_same_decisions_on_seeded_data(
    simulator: SimulatorHandle, make_runtime: RuntimeFactory
) -> None:
    """The shipped rules over 600 seeded conversations, at three instants: the pruned reader's
    snapshots decide exactly what full snapshots decide, with fewer reads."""
    from tests.rules.test_needs import SHIPPED

    simulator.sim.seed(600)
    counting = CountingTransport()
    runtime = make_runtime(SHIPPED, transport=counting)
    ruleset = runtime.rulebook.ruleset
    conversations = list(runtime.api.conversations.find({"status": "open"}))
    reader = SnapshotReader(runtime.api, SlaPauses(runtime.redis))
    for hours in (0, 9, 30):
        now = runtime.clock.now() + timedelta(hours=hours)
        counting.requests.clear()
        pruned = reader.read(ruleset, conversations, now, only_needed=True)
        fewer = len(counting.requests)
        counting.requests.clear()
        full = reader.read(ruleset, conversations, now)
        assert fewer < len(counting.requests)
        for a, b in zip(pruned, full, strict=True):
            ea = evaluator.evaluate(ruleset, a, now, with_reasons=False)
            eb = evaluator.evaluate(ruleset, b, now, with_reasons=False)
            assert [(m.rule_id, m.firing_key) for m in ea.matches] == [
                (m.rule_id, m.firing_key) for m in eb.matches
            ]
            assert ea.next_due == eb.next_due


FOLLOWUP_ONLY = """
rules:
  - id: nudge
    once: per_team_reply
    when: {status: open, silent_after_reply: 4h}
    then:
      - reply: "Anything else?"
"""


@pytest.mark.parametrize("person_first", [False, True], ids=["only-ours", "a-person-replied-first"])
def test_our_reply_to_a_never_read_conversation_is_its_window(
    simulator: SimulatorHandle, make_runtime: RuntimeFactory, person_first: bool
) -> None:
    """The customer waits: no rule needs the messages, none are read. Our reply makes the
    follow-up possible; its window (after the customer's last message) holds only our reply,
    so it is not read back. A person's reply before ours is in the window: then it is read."""
    simulator.clock.set(WED_10)
    cid = simulator.sim.new_conversation(channel="sms", text="hello")["id"]
    if person_first:
        simulator.clock.advance(1)
        simulator.sim.team_reply(cid, "a person answers")
    counting = CountingTransport()
    runtime = make_runtime(FOLLOWUP_ONLY, transport=counting)
    ruleset = runtime.rulebook.ruleset
    reader = SnapshotReader(runtime.api, cache=SnapshotCache(), own_writes=OwnWrites(runtime.redis))
    before = runtime.api.conversations.get(cid)
    counting.requests.clear()
    reader.read(ruleset, [before], runtime.clock.now(), only_needed=True)
    assert _message_finds(counting) == (1 if person_first else 0)
    simulator.clock.advance(2)
    sent = runtime.api.sends.send_message(before, "our reply")
    OwnWrites(runtime.redis).record([(before, sent)])
    now = runtime.api.conversations.get(cid)
    counting.requests.clear()
    (snap,) = reader.read(ruleset, [now], runtime.clock.now(), only_needed=True)
    assert _message_finds(counting) == 0
    assert snap == SnapshotReader(runtime.api).read(ruleset, [now], runtime.clock.now())[0]
    assert [m.message_text for m in snap.messages or ()] == (
        ["our reply", "a person answers"] if person_first else ["our reply"]
    )
