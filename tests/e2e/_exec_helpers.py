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
from worker.scheduling.planning import PlanContext, all_steps, plan, pools_asked
from worker.scheduling.router import Router
from worker.simulator.audit import AuditEntry
from worker.simulator.testing import SimulatorHandle
from worker.state.ledger import ClaimItem, ClaimResult, FiringClaim
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
    router = Router(runtime.redis, runtime.api.client, runtime.rulebook, runtime.clock)
    chooser = router.chooser(pools_asked(m for _, m in matches))  # pools read before planning
    firings = plan(matches, PlanContext(conversations, chooser))
    for firing in firings:
        items = tuple(ClaimItem(s.items[0].key, s.to_dict()) for s in firing.steps)
        claim = FiringClaim(firing.firing_key, items, rule_id=firing.rule_id)
        result = runtime.ledger.claim_firing(claim)
        assert result is ClaimResult.WON, f"{firing.firing_key}: {result.value}"
    # Position by position, as the workers would run them: action k + 1 waits for action k.
    return all_steps(firings)


def posts(simulator: SimulatorHandle, path_prefix: str) -> list[AuditEntry]:
    """Every POST the simulator received under `path_prefix` (applied or not)."""
    return [e for e in simulator.sim.audit_log() if e.method == "POST" and e.path.startswith(path_prefix)]


def applied_posts(simulator: SimulatorHandle, path_prefix: str) -> list[AuditEntry]:
    return simulator.sim.audit.applied("POST", path_prefix)
