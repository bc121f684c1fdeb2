"""The Router's Redis state against the served simulator: the round-robin pointer is
compare-and-set (two replicas never hand out the same turn), and loads are read with as
few requests as the data allows."""

from __future__ import annotations

import redis

from tests.e2e.conftest import RuntimeFactory
from worker.scheduling.router import Router
from worker.simulator.testing import SimulatorHandle

RULES = """
agents:
  - {id: 1, capacity: 100}
  - {id: 2, capacity: 100}
  - {id: 3, capacity: 100}
pools:
  front: {members: [1, 2, 3], strategy: round_robin}
  least: {members: [1, 2, 3], strategy: least_loaded}
rules:
  - id: r
    when: {status: open, owner: unset}
    then: [{assign: {pool: front}}]
"""


def _router(make_runtime: RuntimeFactory, client: redis.Redis | None = None) -> Router:
    runtime = make_runtime(RULES)
    return Router(client or runtime.redis, runtime.api.client, runtime.rulebook, runtime.clock)


class Interleaved(Router):
    """A replica that reads the pointer, then lets another replica choose before it commits."""

    other: Router | None = None

    def _read_pointer(self, pool):  # type: ignore[no-untyped-def]
        value = super()._read_pointer(pool)
        if self.other is not None:
            other, self.other = self.other, None
            other.begin_tick()
            self.raced = other.choose(pool.name, self.racing_conversation)
        return value


def test_two_replicas_never_hand_out_the_same_turn(
    simulator: SimulatorHandle, make_runtime: RuntimeFactory
) -> None:
    from worker.api.models import Conversation

    runtime = make_runtime(RULES)
    first = Interleaved(runtime.redis, runtime.api.client, runtime.rulebook, runtime.clock)
    second = Router(runtime.redis, runtime.api.client, runtime.rulebook, runtime.clock)
    a = Conversation(id=1, channel="sms")
    first.other, first.racing_conversation = second, Conversation(id=2, channel="sms")  # type: ignore[attr-defined]
    first.begin_tick()
    mine = first.choose("front", a)
    raced = first.raced  # type: ignore[attr-defined]
    assert {mine.agent_id, raced.agent_id} == {1, 2}
    assert int(runtime.redis.get("inboxpilot:routing:rr:front") or 0) == 2


def test_loads_by_one_paged_find_or_one_count_per_agent(
    simulator: SimulatorHandle, make_runtime: RuntimeFactory
) -> None:
    from worker.api.models import Conversation

    router = _router(make_runtime)
    for owner, n in ((1, 3), (2, 1)):
        for _ in range(n):
            conv = simulator.sim.new_conversation(channel="sms")
            simulator.sim.reassign(conv["id"], owner)
    router.begin_tick()
    choice = router.choose("least", Conversation(id=99, channel="sms"))
    assert choice.agent_id == 3
    assert router.load_requests == 1  # 4 open conversations: one page beats 3 counts
    router.choose("least", Conversation(id=98, channel="sms"))
    assert router.load_requests == 1  # cached for the tick, updated as we assign
    # 200 open for agent 1: 4 pages would cost more than 1 + 3 counts.
    for _ in range(200):
        conv = simulator.sim.new_conversation(channel="sms")
        simulator.sim.reassign(conv["id"], 1)
    router.begin_tick()
    choice = router.choose("least", Conversation(id=97, channel="sms"))
    assert router.load_requests == 4
    assert choice.agent_id == 3  # read again: 203 (full) / 1 / 0 (the earlier picks were never sent)
