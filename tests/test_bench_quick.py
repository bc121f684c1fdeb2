"""The benchmarks' quick modes, so they never rot: only their deterministic structure is
asserted (request and call counts), never a timing goal. Nothing is written to RESULTS.md."""

from __future__ import annotations

import math

import pytest

from bench import (
    action_cost,
    backtest_cost,
    eval_throughput,
    first_sync,
    growth,
    latency,
    poll_cost,
    read_cost,
    throughput,
)

QUICK = ["--quick", "--no-save"]


@pytest.mark.slow
def test_poll_cost_quiet_tick_is_one_request_and_busy_ticks_page_only_the_changes() -> None:
    for result in poll_cost.main(QUICK):
        assert result.quiet.requests == 1
        assert result.naive_quiet is not None
        assert result.naive_quiet.requests == math.ceil(result.n / 50)
        assert result.naive_quiet.seen == result.n
        for tick in result.ours:
            assert tick.seen == tick.changed > 0  # every changed conversation, once
            assert tick.requests <= math.ceil(tick.changed / 50) + 1
        for tick in result.naive:
            assert tick.requests == math.ceil(result.n / 50)


@pytest.mark.slow
def test_action_cost_is_one_bulk_call_per_50() -> None:
    for result in action_cost.main(QUICK):
        assert result.steps == result.bulk_calls == math.ceil(result.k / 50)
        assert result.read_backs == math.ceil(result.k / 50)
        assert result.naive_calls == result.k
        assert result.assigned_ours == result.assigned_naive == result.k
        assert result.redis_trips_per_step <= 16  # constant per step (begin and finish pipelined)


@pytest.mark.slow
def test_read_cost_batches_reads_and_sends() -> None:
    resync, _, sends = read_cost.main(QUICK)
    for row in resync:
        assert row.naive is not None and row.cold.total * 5 < row.naive  # batched, not one by one
        assert row.after_own == row.warm < row.cold.total  # nothing moved or only our replies: no read
        assert row.cold.pages + row.cold.routing + row.cold.messages + row.cold.contacts == row.cold.total
    assert resync[-1].cold.total <= resync[-1].goal  # 746 open: 3·ceil(N/50) = 45
    for send in sends:
        assert send.posts == send.k and send.per_reply <= 1.1


@pytest.mark.slow
def test_backtest_cost_reads_50_conversations_of_one_channel_per_find() -> None:
    (row,) = backtest_cost.main(QUICK)
    changed, whole, ruled_out = row.replayed
    assert changed > 0 and row.firings > 0 and ruled_out > 0
    # The changed ones, then the unchanged ones, each in pages of 50.
    assert row.requests["conversations"] == math.ceil(changed / 50) + math.ceil((whole + ruled_out) / 50)
    # One find per 50 conversations of a channel: at most one partly filled batch per channel (6),
    # among the changed ones and among the unchanged ones read whole; none for those ruled out.
    assert row.requests["contacts"] <= math.ceil(changed / 50) + 5 + math.ceil(whole / 50) + 5
    assert row.requests["other"] == 0


@pytest.mark.slow
def test_eval_throughput_counts_every_evaluation_and_holds_the_timers() -> None:
    results, held = eval_throughput.main(QUICK)
    record_only, record_only_reasons, no_reads, everything, everything_reasons = results
    assert record_only.rules == 10 and 0 < no_reads.rules < everything.rules
    assert record_only.conversations == everything.conversations == 5_000
    assert everything.matches > 0 and everything.timers > 0
    # Building reasons or not changes the cost, never the decisions.
    assert (record_only.matches, everything.matches, everything.timers) == (
        record_only_reasons.matches,
        everything_reasons.matches,
        everything_reasons.timers,
    )
    embedded = [h for h in held if h.where.startswith("embedded")]
    assert [h.timers for h in embedded][1] == 3 * 5_000
    assert all(h.rss_mb > 0 for h in held)


@pytest.mark.slow
def test_growth_keeps_the_quiet_tick_at_one_request_for_every_n() -> None:
    rows = growth.main(QUICK)
    assert [r.n for r in rows] == [1_000, 2_000]
    assert all(r.quiet == 1 for r in rows)
    assert [r.naive_requests for r in rows] == [20, 40]
    assert all(r.fixed_requests <= math.ceil(growth.FIXED_CHANGES / 50) + 1 for r in rows)


@pytest.mark.slow
def test_latency_sees_every_conversation_assigned_and_escalated() -> None:
    (result,) = latency.main(QUICK)
    assert result.events == 30
    assert len(result.assign_s) == len(result.escalate_s) == result.events
    # Nothing acts before its cause: no assignment before creation, no escalation before the deadline.
    assert min(result.assign_s) >= 0
    assert min(result.escalate_s) >= 0


@pytest.mark.slow
def test_throughput_delivers_one_reply_per_waiting_conversation() -> None:
    runs, ceilings = throughput.main(QUICK)
    assert [(r.k, r.replies) for r in runs] == [(100, 100)]
    assert all(r.total_s >= r.poll_s > 0 for r in runs)
    assert {c.what for c in ceilings} == {
        "simulator: raw send POSTs",
        "worker API client: send + batched reads (2 per 50)",
    }
    assert all(c.calls > 0 for c in ceilings)


@pytest.mark.slow
def test_first_sync_applies_every_firing_once_in_both_runs() -> None:
    ours, naive = first_sync.main([*QUICK, "--timeout", "120"])
    for run in (ours, naive):
        assert len(run.expected) > 100
        assert (run.missing(), sum(run.watch.repeats.values())) == (0, 0)
    # The naive script: one scan, one contact find per 50 follow-ups, one call per firing.
    assert sum(naive.requests.values()) == 4 + 1 + len(naive.expected)
    assert ours.requests[("POST", "/conversations-bulk-actions")] < len(ours.expected) / 5
