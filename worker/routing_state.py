"""Routing state: the round-robin pointers (in Redis, shared by replicas and kept
across restarts) and agents' current open load (read from the API, cached per tick).

The choice itself is the pure `worker.rules.routing.choose_agent`; this module
only feeds it state and records the outcome.
"""

from __future__ import annotations

import redis

from worker.api.client import ApiClient
from worker.api.models import Conversation
from worker.api.services import CONVERSATIONS
from worker.clock import Clock
from worker.rulebook import Rulebook
from worker.rules.routing import Choice, Pool, choose_agent

POINTER_PREFIX = "inboxpilot:routing:rr:"


class Router:
    """Resolves `assign {pool}` for the planner."""

    def __init__(
        self, redis_client: redis.Redis, client: ApiClient, rulebook: Rulebook, clock: Clock
    ) -> None:
        self._redis = redis_client
        self._client = client
        self._rulebook = rulebook
        self._clock = clock
        self._loads: dict[int, int] = {}

    def begin_tick(self) -> None:
        """Forget cached loads: they are read again at most once per tick."""
        self._loads = {}

    def choose(self, pool_name: str, conversation: Conversation) -> Choice:
        ruleset = self._rulebook.ruleset
        pool = ruleset.pools[pool_name]
        key = POINTER_PREFIX + pool_name
        pointer = int(self._redis.get(key) or 0)  # type: ignore[arg-type]
        choice = choose_agent(pool, ruleset.roster, self._clock.now(), self._loads_for(pool), pointer)
        if choice.agent_id is not None:
            self._redis.set(key, choice.new_pointer)
            self._loads[choice.agent_id] = self._loads.get(choice.agent_id, 0) + 1
        return choice

    def _loads_for(self, pool: Pool) -> dict[int, int]:
        roster = self._rulebook.ruleset.roster
        counted = pool.strategy == "least_loaded" or any(
            (a := roster.agents.get(m)) is not None and a.capacity is not None for m in pool.members
        )
        if counted:
            for member in pool.members:
                if member not in self._loads:
                    self._loads[member] = self._open_load(member)
        return self._loads

    def _open_load(self, agent_id: int) -> int:
        query = {"organization_id": self._client.organization_id, "status": "open", "owner_id": agent_id}
        return self._client.find_page(CONVERSATIONS, {**query, "$limit": 1}).total
