"""Benchmark 4, evaluation throughput and due-timer memory.

Conversation x rule evaluations per second on one core: for rules made of
record-only conditions (channel, status, owner, AI assistant, stage, tags,
unread count: the issue's goal), for the shipped rules that need no messages or
contact (record, time and business-hours conditions), and for all shipped rules,
over synthetic snapshots; and
the resident memory of a worker process holding the due-timers of those
conversations in the embedded Redis (fakeredis, in-process). Real Redis holds
them out of process; when BENCH_REDIS_URL is set, their size there is measured too.

    python -m bench.eval_throughput [--quick]
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench.common import Table, arguments, command_line, report
from worker.api.models import Contact, Conversation
from worker.rules import RuleSet, Snapshot, evaluate, load_rules
from worker.simulator.seeding import generate

RULES_DIR = Path(__file__).resolve().parent.parent / "rules"
NOW = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
GOAL_RECORD_ONLY_PER_S = 200_000
GOAL_RSS_MB = 250.0


# Ten rules of record-only conditions, the shape of a routing/triage rule book.
RECORD_ONLY_RULES = """
rules:
  - {id: r1, when: {status: open, owner: unset, channel: whatsapp}, then: [assign: 101]}
  - {id: r2, when: {status: open, owner: unset, channel: [instagram, messenger]}, then: [assign: 102]}
  - {id: r3, when: {status: open, ai_assistant: unset, tags: {any: [vip]}}, then: [assign: 103]}
  - {id: r4, when: {status: open, unread_count: {gt: 3}}, then: [move: {pipeline: 1, stage: 12}]}
  - {id: r5, when: {status: closed, owner: set}, then: [unassign]}
  - {id: r6, when: {all: [{status: open}, {stage: 13}]}, then: [note: waiting on customer]}
  - {id: r7, when: {any: [{channel: sms}, {channel: webchat}], status: open}, then: [assign: 104]}
  - {id: r8, when: {status: open, not: {tags: {any: [spam]}}, pipeline: 2}, then: [assign: 105]}
  - {id: r9, when: {status: open, owner: {in: [101, 102, 103]}, unread_count: {gte: 5}}, then: [note: busy]}
  - {id: r10, when: {status: open, ai_assistant: set, owner: unset}, then: [unassign_ai_assistant]}
"""


def record_only_rules() -> RuleSet:
    from worker.rules.loader import load_texts

    return load_texts([("record-only.yaml", RECORD_ONLY_RULES)], strict=True).ruleset


def shipped_rules() -> RuleSet:
    result = load_rules([RULES_DIR])
    if result.errors:
        raise SystemExit(f"the shipped rules do not load: {result.errors[0]}")
    return result.ruleset


def without_reads(ruleset: RuleSet) -> RuleSet:
    """The rules that need no messages and no contact (record, time and hours conditions)."""
    rules = tuple(r for r in ruleset.rules if not r.needs_messages and not r.needs_contact)
    return dataclasses.replace(ruleset, rules=rules)


def snapshots(n: int, seed: int = 1) -> list[Snapshot]:
    """n seeded conversations with their contacts (messages are not needed by the shipped rules)."""
    data = generate(n, seed=seed, now=NOW, organization_id=1)
    contacts = {c["id"]: Contact.model_validate(c) for c in data.contacts}
    out = []
    for raw in data.conversations:
        conversation = Conversation.model_validate(raw)
        out.append(Snapshot(conversation, None, contacts.get(conversation.contact_id or -1)))
    return out


@dataclass
class Throughput:
    label: str
    rules: int
    conversations: int
    seconds: float
    matches: int
    timers: int

    @property
    def per_s(self) -> float:
        return self.rules * self.conversations / self.seconds


def throughput(
    label: str, ruleset: RuleSet, snaps: Sequence[Snapshot], *, with_reasons: bool = False
) -> Throughput:
    """CPU time of one thread evaluating every snapshot: evaluations per second per core."""
    matches = timers = 0
    started = time.thread_time()
    for snapshot in snaps:
        evaluation = evaluate(ruleset, snapshot, NOW, with_reasons=with_reasons)
        matches += len(evaluation.matches)
        timers += len(evaluation.next_due)
    seconds = time.thread_time() - started
    return Throughput(label, len(ruleset.rules), len(snaps), seconds, matches, timers)


# --- memory: measured in a fresh process so nothing else it held is counted ----------------


def rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def hold_timers(path: str, redis_url: str) -> dict[str, float]:
    """In this process: a worker's imports, then every timer listed in `path` scheduled in Redis."""
    import worker.runtime  # noqa: F401 - the worker's own baseline: everything a scheduler imports
    from worker.clock import from_epoch
    from worker.state.redis_conn import connect
    from worker.state.timers import DueTimers

    client = connect(redis_url)
    client.flushdb()
    baseline = rss_mb()
    timers = DueTimers(client)
    batch: list[tuple[str, int, datetime]] = []
    with open(path, encoding="utf-8") as lines:  # streamed: only the timers stay in memory
        for line in lines:
            rule_id, conversation_id, due = line.split()
            batch.append((rule_id, int(conversation_id), from_epoch(float(due))))
            if len(batch) >= 5000:
                timers.schedule_many(batch)
                batch.clear()
    timers.schedule_many(batch)
    out = {"baseline_mb": baseline, "rss_mb": rss_mb(), "timers": float(len(timers))}
    if redis_url:
        out["redis_mb"] = redis_bytes(client) / 2**20
    return out


def redis_bytes(client: object) -> float:
    """Bytes of the timer keys in a real Redis (MEMORY USAGE; the per-conversation sets sampled)."""
    import redis

    from worker.state.timers import CONV_INDEX_PREFIX, TIMERS_KEY

    assert isinstance(client, redis.Redis)
    total = float(client.memory_usage(TIMERS_KEY, samples=0) or 0)
    keys = list(client.scan_iter(match=CONV_INDEX_PREFIX + "*", count=5000))
    sample = keys[:2000]
    if sample:
        total += sum(float(client.memory_usage(k) or 0) for k in sample) / len(sample) * len(keys)
    return total


def write_timers(path: Path, ruleset: RuleSet, snaps: Sequence[Snapshot]) -> int:
    """The due-timers the rules set for these conversations, one `rule conversation epoch` a line."""
    count = 0
    with path.open("w", encoding="utf-8") as out:
        for snapshot in snaps:
            for rule_id, when in evaluate(ruleset, snapshot, NOW).next_due.items():
                out.write(f"{rule_id} {snapshot.conversation.id} {when.timestamp()!r}\n")
                count += 1
    return count


def write_dense_timers(path: Path, ruleset: RuleSet, n: int, per_conversation: int = 3) -> int:
    """A pessimistic load: `per_conversation` timers for every one of n conversations."""
    rule_ids = [r.id for r in ruleset.rules if r.time_bound][:per_conversation]
    with path.open("w", encoding="utf-8") as out:
        for conversation_id in range(1, n + 1):
            for index, rule_id in enumerate(rule_ids):
                due = NOW.timestamp() + 60 * (1 + (conversation_id + index) % 1440)
                out.write(f"{rule_id} {conversation_id} {due!r}\n")
    return n * len(rule_ids)


def timers_in_child(path: Path, redis_url: str = "") -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(RULES_DIR.parent)}
    call = f"b.hold_timers({str(path)!r}, {redis_url!r})"
    code = f"import json, bench.eval_throughput as b; print(json.dumps({call}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@dataclass
class Held:
    load: str
    where: str
    timers: int
    rss_mb: float
    delta_mb: float
    redis_mb: float | None


def memory(ruleset: RuleSet, snaps: Sequence[Snapshot], n: int, real_url: str) -> list[Held]:
    out: list[Held] = []
    places = [("embedded fakeredis, in the worker", "")]
    if real_url:
        places.append(("real Redis, out of process", real_url))
    with tempfile.TemporaryDirectory(prefix="inboxpilot-timers-") as tmp:
        evaluated, dense = Path(tmp) / "evaluated.txt", Path(tmp) / "dense.txt"
        write_timers(evaluated, ruleset, snaps)
        write_dense_timers(dense, ruleset, n)
        for load, path in (("what the shipped rules set", evaluated), ("3 per conversation", dense)):
            for where, url in places:
                got = timers_in_child(path, url)
                delta = got["rss_mb"] - got["baseline_mb"]
                out.append(Held(load, where, int(got["timers"]), got["rss_mb"], delta, got.get("redis_mb")))
    return out


# --- the run ---------------------------------------------------------------------------------


def tables(results: Sequence[Throughput], held: Sequence[Held]) -> list[tuple[str, Table]]:
    speed = Table(
        [
            "rule set",
            "rules",
            "conversations",
            "evals/s/core",
            "goal",
            "met",
            "µs/conversation",
            "matches/conv",
        ]
    )
    for r in results:
        goal = GOAL_RECORD_ONLY_PER_S if r.label.startswith("record-only") else None
        met = "-" if goal is None else ("yes" if r.per_s >= goal else "NO")
        per_conv_us = 1e6 * r.seconds / r.conversations
        speed.add(
            r.label,
            r.rules,
            r.conversations,
            r.per_s,
            goal or "-",
            met,
            per_conv_us,
            r.matches / r.conversations,
        )
    mem = Table(
        ["timers", "where", "count", "worker RSS MB", "of which timers MB", "in Redis MB", "goal MB", "met"]
    )
    for h in held:
        met = "yes" if h.rss_mb <= GOAL_RSS_MB else "NO"
        in_redis = "-" if h.redis_mb is None else h.redis_mb
        mem.add(h.load, h.where, h.timers, h.rss_mb, h.delta_mb, in_redis, GOAL_RSS_MB, met)
    return [("Evaluations", speed), ("Due-timers held", mem)]


def main(argv: Sequence[str] | None = None) -> tuple[list[Throughput], list[Held]]:
    args = arguments(__doc__ or "", argv)
    n = 5_000 if args.quick else 100_000
    ruleset = shipped_rules()
    snaps = snapshots(n)
    results = [
        throughput("record-only conditions (as the loop runs it)", record_only_rules(), snaps),
        throughput("record-only conditions, with reasons", record_only_rules(), snaps, with_reasons=True),
        throughput("shipped, no messages/contact", without_reads(ruleset), snaps),
        throughput("all shipped (as the loop runs it)", ruleset, snaps),
        throughput("all shipped, with reasons", ruleset, snaps, with_reasons=True),
    ]
    real_url = os.environ.get("BENCH_REDIS_URL", "")
    held = memory(ruleset, snaps, n, real_url)
    notes = [
        "throughput: one thread's CPU time (`time.thread_time`) for `evaluate()` over every snapshot; "
        "conversation x rule evaluations = conversations x enabled rules.",
        f"snapshots: {n:,} seeded conversations (seeded generator, spread over 14 days) with contacts; "
        "many old open ones match an SLA rule. The loop evaluates without building each match's "
        "reasons (explain and `plan` build them); the 'with reasons' rows show that cost.",
        "memory: a fresh process imports the worker, then schedules the timers (streamed from a file); "
        "RSS from /proc/self/status; 'of which timers' = RSS after minus RSS after the imports.",
    ]
    if not real_url:
        notes.append("real Redis would hold the timers out of process (set BENCH_REDIS_URL to measure it).")
    report(
        "Evaluation throughput and timer memory (benchmark 4)",
        command_line("bench.eval_throughput", argv),
        tables(results, held),
        notes,
        save=not args.no_save,
    )
    return results, held


if __name__ == "__main__":
    main()
