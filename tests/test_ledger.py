from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import redis

from tests.support.hostile_loop import capture_logs, events
from tests.support.redis_trips import round_trips
from worker.clock import FakeClock
from worker.rules.firing import firing_key, split_firing_key
from worker.state.ledger import (
    AUDIT_STREAM,
    ENTRY_PREFIX,
    VERDICT_REDRIVES,
    BrokerQueues,
    ClaimItem,
    ClaimResult,
    FiringClaim,
    Ledger,
    read_audit,
)

TTL_S = 3600


def make(redis_client: redis.Redis, clock: FakeClock, **kwargs: object) -> Ledger:
    return Ledger(redis_client, clock, ttl_s=TTL_S, redrive_after_s=60, **kwargs)  # type: ignore[arg-type]


def test_firing_key_round_trip() -> None:
    key = firing_key("sla", 42, "msg:abc")
    assert key == "sla:42:msg:abc"
    assert split_firing_key(key) == ("sla", "42")


def test_only_the_first_claim_wins(redis_client: redis.Redis, clock: FakeClock) -> None:
    ledger = make(redis_client, clock)
    assert ledger.claim("r1:7:s", {"action": "assign", "to": 3}, owner="a")
    assert not ledger.claim("r1:7:s", {"action": "assign", "to": 4}, owner="b")
    entry = ledger.get("r1:7:s")
    assert entry is not None
    assert entry.state == "pending"
    assert entry.payload == {"action": "assign", "to": 3}
    assert entry.owner == "a"
    assert (entry.rule_id, entry.conversation_id) == ("r1", "7")
    assert entry.claimed_at == clock.now()


def test_concurrent_claims_have_one_winner(redis_client: redis.Redis, clock: FakeClock) -> None:
    ledger = make(redis_client, clock)
    wins: list[bool] = []
    barrier = threading.Barrier(8)

    def contend() -> None:
        barrier.wait()
        wins.append(ledger.claim("r:1:x", {}))

    threads = [threading.Thread(target=contend) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False] * 7 + [True]


def test_attempts_and_done(redis_client: redis.Redis, clock: FakeClock) -> None:
    ledger = make(redis_client, clock)
    assert ledger.begin_attempt("r:1:x") is None  # never claimed: do not act
    ledger.claim("r:1:x", {"a": 1})
    assert ledger.begin_attempt("r:1:x") == 1
    assert ledger.begin_attempt("r:1:x") == 2
    assert not ledger.is_done("r:1:x")
    assert ledger.mark_done("r:1:x", {"status": 201})
    assert not ledger.mark_done("r:1:x", {"status": 201}), "second finish must be a no-op"
    assert not ledger.mark_failed("r:1:x", "late")
    assert ledger.is_done("r:1:x")
    assert ledger.begin_attempt("r:1:x") is None
    entry = ledger.get("r:1:x")
    assert entry is not None
    assert (entry.state, entry.attempts, entry.outcome) == ("done", 2, {"status": 201})


def test_failed_records_reason_and_can_be_reopened(redis_client: redis.Redis, clock: FakeClock) -> None:
    ledger = make(redis_client, clock)
    ledger.claim("r:1:x", {})
    assert ledger.mark_failed("r:1:x", "outside_24h_window")
    entry = ledger.get("r:1:x")
    assert entry is not None and (entry.state, entry.reason) == ("failed", "outside_24h_window")
    assert ledger.reopen("r:1:x")
    assert ledger.begin_attempt("r:1:x") == 1
    assert ledger.pending_count() == 1


def test_audit_has_one_line_per_final_outcome(redis_client: redis.Redis, clock: FakeClock) -> None:
    ledger = make(redis_client, clock)
    for i in range(3):
        ledger.claim(f"r:{i}:x", {})
    ledger.mark_done("r:0:x", {"id": "m1"})
    ledger.mark_done("r:0:x", {"id": "m1"})
    ledger.mark_failed("r:1:x", "422")
    audit = read_audit(redis_client)
    assert [(a["key"], a["state"]) for a in audit] == [("r:0:x", "done"), ("r:1:x", "failed")]
    assert audit[0]["outcome"] == '{"id":"m1"}'
    assert audit[1]["reason"] == "422"
    assert audit[1]["rule_id"] == "r" and audit[1]["conversation_id"] == "1"


def test_audit_stream_is_capped(redis_client: redis.Redis, clock: FakeClock) -> None:
    ledger = make(redis_client, clock, audit_maxlen=10)
    for i in range(500):
        ledger.claim(f"r:{i}:x", {})
        ledger.mark_done(f"r:{i}:x")
    # MAXLEN ~ trims by whole radix-tree nodes: bounded, not exact.
    assert redis_client.xlen(AUDIT_STREAM) < 500


def test_stuck_claim_is_redriven_until_finished(redis_client: redis.Redis, clock: FakeClock) -> None:
    ledger = make(redis_client, clock)
    ledger.claim("r:1:x", {"reply": "hi"})
    ledger.claim("r:2:x", {"reply": "yo"})
    ledger.mark_done("r:2:x")
    assert ledger.due_redrives() == []
    clock.advance(61)
    assert ledger.due_redrives() == [("r:1:x", {"reply": "hi"})]
    assert ledger.due_redrives() == [], "a re-driven claim is rescheduled, not handed out twice"
    clock.advance(61)
    assert ledger.due_redrives() == [("r:1:x", {"reply": "hi"})]
    ledger.mark_done("r:1:x")
    clock.advance(61)
    assert ledger.due_redrives() == []
    assert ledger.pending_count() == 0


def test_begin_attempt_postpones_redrive(redis_client: redis.Redis, clock: FakeClock) -> None:
    ledger = make(redis_client, clock)
    ledger.claim("r:1:x", {})
    clock.advance(50)
    ledger.begin_attempt("r:1:x")
    clock.advance(50)
    assert ledger.due_redrives() == []
    clock.advance(11)
    assert [k for k, _ in ledger.due_redrives()] == ["r:1:x"]


def test_out_of_redrives_a_firing_gets_a_verdict_delivery_then_fails(
    redis_client: redis.Redis, clock: FakeClock
) -> None:
    """After max_redrives a lost firing is handed out once more for a read-back (begin says
    so); only when those deliveries are lost too is it failed here."""
    ledger = make(redis_client, clock, max_redrives=2)
    ledger.claim("r:1:x", {})
    handed = []
    for _ in range(2 + VERDICT_REDRIVES + 2):
        clock.advance(61)
        handed.append(len(ledger.due_redrives()))
    assert handed == [1] * (2 + VERDICT_REDRIVES) + [0, 0]
    entry = ledger.get("r:1:x")
    assert entry is not None and (entry.state, entry.reason) == ("failed", "redrive_limit")
    assert read_audit(redis_client)[-1]["reason"] == "redrive_limit"


def test_the_verdict_delivery_is_marked(redis_client: redis.Redis, clock: FakeClock) -> None:
    ledger = make(redis_client, clock, max_redrives=1)
    ledger.claim("r:1:x", {})
    clock.advance(61)
    ledger.due_redrives()
    assert ledger.begin("r:1:x") == (1, False)
    clock.advance(200)
    assert len(ledger.due_redrives()) == 1
    assert ledger.begin("r:1:x") == (2, True)


QUEUES = BrokerQueues(("q.msgs",), "hb", "acks.", ("q",), heartbeat_timeout_ms=15_000)


def test_a_queued_message_is_not_redriven(redis_client: redis.Redis, clock: FakeClock) -> None:
    ledger = make(redis_client, clock, max_redrives=1)
    ledger.queued_in = QUEUES
    ledger.claim("r:1:x", {})
    ledger.note_queued(["r:1:x"], "m1")
    redis_client.hset("q.msgs", "m1", "{}")
    for _ in range(10):
        clock.advance(3600)
        assert ledger.due_redrives() == []
    redis_client.hdel("q.msgs", "m1")  # the broker lost it
    clock.advance(61)
    assert [k for k, _ in ledger.due_redrives()] == ["r:1:x"]


def test_a_message_held_by_a_dead_worker_or_already_started_goes_by_time(
    redis_client: redis.Redis, clock: FakeClock
) -> None:
    """The broker requeues a dead worker's messages only when its maintenance runs; a
    started item's retry may sit in a dead worker's delay queue: the ledger re-drives both."""
    ledger = make(redis_client, clock)
    ledger.queued_in = QUEUES
    for key, ref in (("r:1:x", "m1"), ("r:2:x", "m2")):
        ledger.claim(key, {})
        ledger.note_queued([key], ref)
        redis_client.hset("q.msgs", ref, "{}")
    redis_client.zadd("hb", {"w-dead": 1})  # last heartbeat in 1970
    redis_client.sadd("acks.w-dead.q", "m1")
    ledger.begin_attempt("r:2:x")
    clock.advance(61)
    assert {k for k, _ in ledger.due_redrives()} == {"r:1:x", "r:2:x"}


def test_a_firing_failed_at_the_redrive_limit_is_logged_at_warning(
    redis_client: redis.Redis, clock: FakeClock
) -> None:
    ledger = make(redis_client, clock, max_redrives=1)
    ledger.claim("r:1:x", {})
    for _ in range(1 + VERDICT_REDRIVES):
        clock.advance(200)
        assert len(ledger.due_redrives()) == 1
    logs = capture_logs()
    clock.advance(200)
    assert ledger.due_redrives() == []
    (failed,) = events(logs, "firing_failed")
    assert (failed["level"], failed["key"], failed["reason"]) == ("warning", "r:1:x", "redrive_limit")


def test_redrive_respects_limit_argument(redis_client: redis.Redis, clock: FakeClock) -> None:
    ledger = make(redis_client, clock)
    for i in range(5):
        ledger.claim(f"r:{i}:x", {"i": i})
    clock.advance(61)
    first = ledger.due_redrives(limit=3)
    rest = ledger.due_redrives(limit=3)
    assert len(first) == 3 and len(rest) == 2
    assert {k for k, _ in first} | {k for k, _ in rest} == {f"r:{i}:x" for i in range(5)}


def test_expired_entry_leaves_the_redrive_set(redis_client: redis.Redis, clock: FakeClock) -> None:
    ledger = make(redis_client, clock)
    ledger.claim("r:1:x", {})
    redis_client.delete(ENTRY_PREFIX + "r:1:x")  # what the TTL does
    clock.advance(61)
    assert ledger.due_redrives() == []
    assert ledger.pending_count() == 0


def test_entries_expire_after_ttl(redis_client: redis.Redis, clock: FakeClock) -> None:
    ledger = make(redis_client, clock)
    ledger.claim("r:1:x", {})
    assert 0 < redis_client.ttl(ENTRY_PREFIX + "r:1:x") <= TTL_S
    ledger.mark_done("r:1:x")
    assert 0 < redis_client.ttl(ENTRY_PREFIX + "r:1:x") <= TTL_S


def test_caps_counters(redis_client: redis.Redis, clock: FakeClock) -> None:
    ledger = make(redis_client, clock)
    ledger.claim("sla:1:a", {})
    ledger.claim("sla:1:b", {})
    ledger.claim("sla:1:b", {})  # lost claim: not counted
    ledger.claim("sla:2:a", {})
    assert ledger.count_for("sla", 1) == 2
    assert ledger.count_for("sla", 2) == 1
    assert ledger.count_for("other", 1) == 0
    assert ledger.count_last_hour("sla") == 3
    clock.advance(timedelta(minutes=40))
    ledger.claim("sla:3:a", {})
    assert ledger.count_last_hour("sla") == 4
    clock.advance(timedelta(minutes=21))
    assert ledger.count_last_hour("sla") == 1


def test_explicit_rule_and_conversation(redis_client: redis.Redis, clock: FakeClock) -> None:
    ledger = make(redis_client, clock)
    ledger.claim("opaque-key", {}, rule_id="route", conversation_id=9)
    assert ledger.count_for("route", 9) == 1
    entry = ledger.get("opaque-key")
    assert entry is not None and entry.rule_id == "route"


def _firing(key: str, actions: int = 2, **caps: object) -> FiringClaim:
    items = tuple(ClaimItem(f"{key}#{i}", {"i": i}) for i in range(actions))
    return FiringClaim(key, items, **caps)  # type: ignore[arg-type]


def test_a_firing_is_claimed_whole_and_counted_once(redis_client: redis.Redis, clock: FakeClock) -> None:
    ledger = make(redis_client, clock)
    assert ledger.claim_firing(_firing("r:1:a", 3)) is ClaimResult.WON
    assert ledger.count_for("r", 1) == 1
    assert ledger.claim_firing(_firing("r:1:a", 3)) is ClaimResult.KNOWN
    states = [ledger.get(f"r:1:a#{i}").state for i in range(3)]  # type: ignore[union-attr]
    assert states == ["pending", "waiting", "waiting"]
    assert ledger.pending_count() == 1  # only the first action is due (queued, re-driven if lost)


def test_caps_are_checked_in_the_claim(redis_client: redis.Redis, clock: FakeClock) -> None:
    ledger = make(redis_client, clock)
    per_conv = [ledger.claim_firing(_firing(f"r:1:s{i}", max_per_conversation=2)) for i in range(3)]
    assert per_conv == [ClaimResult.WON, ClaimResult.WON, ClaimResult.CAPPED_CONVERSATION]
    hourly = [ledger.claim_firing(_firing(f"h:{i}:c", max_per_hour=3)) for i in range(5)]
    assert hourly.count(ClaimResult.WON) == 3 and hourly[3:] == [ClaimResult.CAPPED_HOUR] * 2
    clock.advance(timedelta(hours=1, seconds=1))
    assert ledger.claim_firing(_firing("h:9:c", max_per_hour=3)) is ClaimResult.WON


def test_capacity_counts_assignments_in_flight(redis_client: redis.Redis, clock: FakeClock) -> None:
    ledger = make(redis_client, clock)

    def assign(conv: int) -> ClaimResult:
        item = ClaimItem(f"a:{conv}:c#0", {}, agent=7, capacity=2, base_load=1)
        return ledger.claim_firing(FiringClaim(f"a:{conv}:c", (item,)))

    assert [assign(1), assign(2)] == [ClaimResult.WON, ClaimResult.AT_CAPACITY]  # 1 open + 1 in flight
    ledger.mark_failed("a:1:c#0", "400 BadRequest: no")  # never applied: the place is free again
    assert assign(3) is ClaimResult.WON


def test_the_next_action_waits_for_the_one_before(redis_client: redis.Redis, clock: FakeClock) -> None:
    ledger = make(redis_client, clock)
    ledger.claim_firing(_firing("r:1:a", 3))
    assert ledger.begin_attempt("r:1:a#1") is None  # not before action 0 has an outcome
    assert ledger.begin_attempt("r:1:a#0") == 1
    done = ledger.finish_item("r:1:a#0", "done", {"result": "done"})
    assert done.next_key == "r:1:a#1" and ledger.pending_count() == 1  # due for re-drive if not queued
    ledger.begin_attempt("r:1:a#1")
    skipped = ledger.finish_item("r:1:a#1", "done", {"result": "skipped", "reason": "moot: gone"})
    assert skipped.next_key is None and skipped.skipped == ("r:1:a#2",)
    last = ledger.get("r:1:a#2")
    assert last is not None and last.state == "done" and last.outcome["result"] == "skipped"
    assert "not run" in last.outcome["reason"] and ledger.pending_count() == 0


@pytest.mark.parametrize("items", [5, 50])
def test_a_step_begins_all_of_its_items_in_constant_round_trips(
    redis_client: redis.Redis, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, items: int
) -> None:
    ledger = Ledger(redis_client, clock, ttl_s=3600)
    keys = [f"r:{n}:c#0" for n in range(items)]
    for key in keys:
        ledger.claim(key, {})
    ledger.begin_many(keys[:1])  # scripts loaded once per process
    trips = round_trips(monkeypatch)
    assert ledger.begin_many(keys[1:]) == [(1, False)] * (items - 1)
    assert len(trips) == 1, trips  # one script
    for key in keys:
        ledger.mark_done(key)
    assert ledger.begin_many(keys) == [None] * items  # finished items never begin again


@pytest.mark.parametrize("items", [5, 50])
def test_a_bulk_call_finishes_all_of_its_items_in_constant_round_trips(
    redis_client: redis.Redis, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, items: int
) -> None:
    ledger = Ledger(redis_client, clock, ttl_s=3600)
    firings = [
        FiringClaim(f"r:{n}:c", (ClaimItem(f"r:{n}:c#0", {}), ClaimItem(f"r:{n}:c#1", {})))
        for n in range(items)
    ]
    for firing in firings:
        ledger.claim_firing(firing)
    keys = [f"r:{n}:c#0" for n in range(items)]
    ledger.begin_many(keys)
    assert ledger.finish_items([]) == []
    ledger.finish_items([("x:0:c#0", "done", {})])  # scripts loaded once per process
    trips = round_trips(monkeypatch)
    done = ledger.finish_items([(key, "done", {"result": "done"}) for key in keys])
    assert len(trips) == 1, trips  # one script
    assert [f.next_key for f in done] == [f"r:{n}:c#1" for n in range(items)]  # handed on, as finish_item
    assert all(ledger.get(key).state == "done" for key in keys)  # type: ignore[union-attr]
