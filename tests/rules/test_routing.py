"""The pure pool chooser: strategies, skipping, fallback."""

from __future__ import annotations

from datetime import UTC, datetime
from types import MappingProxyType

from hypothesis import given
from hypothesis import strategies as st

from worker.rules.calendars import Calendar
from worker.rules.routing import AgentConfig, FallbackConfig, Pool, Roster, choose_agent

DAY = Calendar.build("day", {"timezone": "UTC", "hours": {d: ["09:00-17:00"] for d in ("mon", "tue", "wed")}})
ROSTER = Roster(
    agents=MappingProxyType(
        {
            1: AgentConfig(id=1, capacity=2),
            2: AgentConfig(id=2, capacity=2, calendar="day"),
            3: AgentConfig(id=3, enabled=False),
            4: AgentConfig(id=4),
        }
    ),
    calendars=MappingProxyType({"day": DAY}),
)
NOON = datetime(2026, 3, 4, 12, tzinfo=UTC)  # Wednesday
NIGHT = datetime(2026, 3, 4, 22, tzinfo=UTC)


def pool(strategy: str, members: tuple[int, ...] = (1, 2, 3, 4)) -> Pool:
    return Pool("p", members, strategy, FallbackConfig(ai_assistant=9))


def test_round_robin_takes_turns_and_skips() -> None:
    p = pool("round_robin")
    picks, pointer = [], 0
    for _ in range(4):
        choice = choose_agent(p, ROSTER, NOON, {}, pointer)
        picks.append(choice.agent_id)
        pointer = choice.new_pointer
    assert picks == [1, 2, 4, 1]
    choice = choose_agent(p, ROSTER, NOON, {}, 2)
    assert choice.agent_id == 4 and choice.skipped == ("agent 3: switched off",)


def test_capacity_shift_and_fallback() -> None:
    p = pool("round_robin", (1, 2))
    choice = choose_agent(p, ROSTER, NIGHT, {1: 2}, 0)
    assert choice.agent_id is None
    assert choice.fallback == FallbackConfig(ai_assistant=9)
    assert choice.skipped == ("agent 1: at capacity (2/2)", "agent 2: off shift (day)")
    assert choice.new_pointer == 0


def test_least_loaded_and_fixed() -> None:
    assert choose_agent(pool("least_loaded"), ROSTER, NOON, {1: 1, 2: 1, 4: 0}, 0).agent_id == 4
    assert choose_agent(pool("least_loaded"), ROSTER, NOON, {1: 1, 2: 1, 4: 1}, 0).agent_id == 1
    assert choose_agent(pool("fixed"), ROSTER, NOON, {}, 3).agent_id == 1
    assert choose_agent(pool("fixed"), ROSTER, NOON, {1: 5}, 3).agent_id == 2


@given(st.lists(st.sampled_from([1, 2, 4]), max_size=30), st.integers(min_value=0, max_value=10))
def test_round_robin_is_fair_among_eligible(_: list[int], start: int) -> None:
    p = pool("round_robin", (1, 4))
    counts = {1: 0, 4: 0}
    pointer = start
    for _ in range(11):
        choice = choose_agent(p, ROSTER, NIGHT, {}, pointer)
        assert choice.agent_id is not None
        counts[choice.agent_id] += 1
        pointer = choice.new_pointer
    assert abs(counts[1] - counts[4]) <= 1
