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
