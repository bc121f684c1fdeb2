"""The Router's Redis state against the served simulator: the round-robin pointer is
moved by compare-and-set after planning, and loads are read with as
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


def test_pointers_move_by_compare_and_set_after_planning(
    simulator: SimulatorHandle, make_runtime: RuntimeFactory
) -> None:
    """Planning reads the pointer once; `apply` moves it only if nobody did meanwhile."""
    from worker.api.models import Conversation

    runtime = make_runtime(RULES)
    first = Router(runtime.redis, runtime.api.client, runtime.rulebook, runtime.clock)
    second = Router(runtime.redis, runtime.api.client, runtime.rulebook, runtime.clock)
    mine, theirs = first.chooser(["front"]), second.chooser(["front"])
    assert mine.choose("front", Conversation(id=1, channel="sms")).agent_id == 1
    assert theirs.choose("front", Conversation(id=2, channel="sms")).agent_id == 1
    assert theirs.choose("front", Conversation(id=3, channel="sms")).agent_id == 2
    assert runtime.redis.get("inboxpilot:routing:rr:front") is None  # the choosers wrote nothing
    second.apply(theirs, [], [])
    first.apply(mine, [], [])  # raced: the pointer stays where the other replica left it
    assert int(runtime.redis.get("inboxpilot:routing:rr:front") or 0) == 2
    again = first.chooser(["front"])
    assert again.choose("front", Conversation(id=4, channel="sms")).agent_id == 3


def test_loads_by_one_paged_find_or_one_count_per_agent(
    simulator: SimulatorHandle, make_runtime: RuntimeFactory
) -> None:
    from worker.api.models import Conversation

    router = _router(make_runtime)
    for owner, n in ((1, 3), (2, 1)):
        for _ in range(n):
            conv = simulator.sim.new_conversation(channel="sms")
            simulator.sim.reassign(conv["id"], owner)
    chooser = router.chooser(["least"])
    choice = chooser.choose("least", Conversation(id=99, channel="sms"))
    assert choice.agent_id == 3
    assert router.load_requests == 1  # 4 open conversations: one page beats 3 counts
    chooser.choose("least", Conversation(id=98, channel="sms"))
    assert router.load_requests == 1  # read before planning, updated as we assign
    # 200 open for agent 1: 4 pages would cost more than 1 + 3 counts.
    for _ in range(200):
        conv = simulator.sim.new_conversation(channel="sms")
        simulator.sim.reassign(conv["id"], 1)
    choice = router.chooser(["least"]).choose("least", Conversation(id=97, channel="sms"))
    assert router.load_requests == 4
    assert choice.agent_id == 3  # read again: 203 (full) / 1 / 0 (the earlier picks were never sent)
