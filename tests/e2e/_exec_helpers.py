"""Helpers for the execution and actor tests: a runtime on the served simulator, and
steps planned and claimed exactly as the scheduler does it."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import fakeredis
import redis

from worker.clock import Clock
from worker.rules.book import Rulebook
from worker.rules.evaluator import Snapshot, evaluate
from worker.rules.firing import Step
from worker.rules.loader import load_texts
from worker.runtime import Runtime
from worker.scheduling.planning import PlanContext, plan
from worker.simulator.audit import AuditEntry
from worker.simulator.testing import SimulatorHandle
from worker.state.redis_conn import embedded_server


def flush_redis(redis_url: str) -> None:
    """Empty the Redis the runtime and the broker will use (real, or the embedded server)."""
    if redis_url:
        redis.Redis.from_url(redis_url).flushdb()
    else:
        fakeredis.FakeRedis(server=embedded_server()).flushall()


@contextmanager
def runtime_on(
    simulator: SimulatorHandle, redis_url: str, rules: str, *, clock: Clock | None = None
) -> Iterator[Runtime]:
    """A runtime built like production (Runtime.build) on the simulator and its clock."""
    ruleset = load_texts([("t.yaml", rules)], strict=True).ruleset
    settings = simulator.worker_settings(redis_url)
    runtime = Runtime.build(settings, clock=clock or simulator.clock, rulebook=Rulebook.of(ruleset))
    try:
        yield runtime
    finally:
        runtime.close()


def plan_and_claim(runtime: Runtime, conversation_ids: Iterable[int]) -> list[Step]:
    """Evaluate, plan and claim like the scheduler: the steps it would enqueue."""
    ruleset = runtime.rulebook.ruleset
    conversations = {cid: runtime.api.conversations.get(cid) for cid in conversation_ids}
    matches = []
    for conv in conversations.values():
        messages = runtime.api.messages.latest(conv.channel, conv.id) if ruleset.needs_messages else None
        snapshot = Snapshot(conv, messages)
        evaluation = evaluate(ruleset, snapshot, runtime.clock.now())
        matches.extend((conv.id, match) for match in evaluation.matches)
    steps = plan(matches, PlanContext(conversations))
    for step in steps:
        for item in step.items:
            payload = step.single(item).to_dict()
            claimed = runtime.ledger.claim(
                item.key, payload, rule_id=item.rule_id, conversation_id=item.conversation_id
            )
            assert claimed, f"{item.key} was already claimed"
    return steps


def posts(simulator: SimulatorHandle, path_prefix: str) -> list[AuditEntry]:
    """Every POST the simulator received under `path_prefix` (applied or not)."""
    return [e for e in simulator.sim.audit_log() if e.method == "POST" and e.path.startswith(path_prefix)]


def applied_posts(simulator: SimulatorHandle, path_prefix: str) -> list[AuditEntry]:
    return simulator.sim.audit.applied("POST", path_prefix)
