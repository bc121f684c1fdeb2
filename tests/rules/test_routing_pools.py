"""Pools beyond the basics: skills match, excluding the current owner, waiting order, retry
times, and the owner conditions' due times (the return timer, offline agents)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import MappingProxyType

from worker.api.models import Conversation
from worker.rules import Snapshot, evaluate
from worker.rules.calendars import Calendar
from worker.rules.loader import load_texts
from worker.rules.routing import AgentConfig, Pool, Roster, choose_agent, retry_at, waiting_order

DAY = Calendar.build("day", {"timezone": "UTC", "hours": {d: ["09:00-17:00"] for d in ("mon", "tue", "wed")}})
ROSTER = Roster(
    agents=MappingProxyType(
        {
            1: AgentConfig(id=1, skills=["billing"]),
            2: AgentConfig(id=2, skills=["whatsapp"], calendar="day"),
            3: AgentConfig(id=3),
        }
    ),
    calendars=MappingProxyType({"day": DAY}),
)
NOON = datetime(2026, 3, 4, 12, tzinfo=UTC)  # Wednesday
NIGHT = datetime(2026, 3, 4, 22, tzinfo=UTC)


def _conv(**fields: object) -> Conversation:
    return Conversation.model_validate({"id": 1, "channel": "sms"} | fields)


def test_skills_prefer_and_require() -> None:
    prefer = Pool("p", (3, 1, 2), "round_robin", None, "prefer")
    assert choose_agent(prefer, ROSTER, NOON, {}, 0, conversation=_conv(tags=["billing"])).agent_id == 1
    assert choose_agent(prefer, ROSTER, NOON, {}, 0, conversation=_conv(channel="whatsapp")).agent_id == 2
    # Nobody with the skill is free: prefer falls back to anyone, require does not.
    night = choose_agent(prefer, ROSTER, NIGHT, {}, 0, conversation=_conv(channel="whatsapp"))
    assert night.agent_id == 3
    require = Pool("p", (3, 1, 2), "round_robin", None, "require")
    refused = choose_agent(require, ROSTER, NIGHT, {}, 0, conversation=_conv(channel="whatsapp"))
    assert refused.agent_id is None and "agent 3: no skill in ['whatsapp']" in refused.skipped
    # No skill asked for: plain round robin.
    assert choose_agent(require, ROSTER, NOON, {}, 0, conversation=_conv()).agent_id == 3


def test_exclude_the_current_owner() -> None:
    pool = Pool("p", (1, 3), "round_robin", None)
    choice = choose_agent(pool, ROSTER, NOON, {}, 0, exclude=(1,))
    assert choice.agent_id == 3 and choice.skipped == ("agent 1: the current owner",)
    assert choose_agent(pool, ROSTER, NOON, {}, 0, exclude=(1, 3)).agent_id is None


def test_pool_members_from_skills() -> None:
    result = load_texts(
        [
            (
                "r.yaml",
                "agents: [{id: 1, skills: [vip]}, {id: 2}, {id: 3, skills: [vip]}]\n"
                "pools: {vip: {members: [2], skills: [vip]}}\n",
            )
        ]
    )
    assert result.ok and result.ruleset.pools["vip"].members == (2, 1, 3)


def test_waiting_order_and_retry_time() -> None:
    old = _conv(id=5, created_at=NOON - timedelta(hours=1))
    reopened = _conv(
        id=2,
        created_at=NOON - timedelta(days=3),
        last_outbound_at=NOON - timedelta(days=2),
        last_inbound_at=NOON,
    )
    assert sorted([reopened, old], key=waiting_order) == [old, reopened]
    everyone_off = Pool("p", (2,), "round_robin", None)
    assert retry_at(everyone_off, ROSTER, NIGHT, timedelta(minutes=1)) == datetime(
        2026, 3, 9, 9, tzinfo=UTC
    )  # Monday
    some_on = Pool("p", (2, 3), "round_robin", None)
    assert retry_at(some_on, ROSTER, NIGHT, timedelta(minutes=1)) == NIGHT + timedelta(minutes=1)


RULES = """
calendars:
  day: {timezone: UTC, hours: {wed: ["09:00-12:00", "12:30-17:00"], thu: ["09:00-17:00"]}}
agents: [{id: 1, calendar: day}, {id: 2, enabled: false}]
rules:
  - id: offline
    when: {owner_unavailable: {grace: 45m}}
    then: [{note: handed on}]
  - id: unresponsive
    when: {owner_unresponsive: {longer_than: 15m, business: day}}
    then: [{note: returned}]
"""


def test_owner_unavailable_due_skips_short_breaks() -> None:
    ruleset = load_texts([("r.yaml", RULES)], strict=True).ruleset
    at_11 = datetime(2026, 3, 4, 11, tzinfo=UTC)
    ev = evaluate(ruleset, Snapshot(_conv(owner_id=1)), at_11)
    # The 30-minute lunch break is shorter than the grace: the hand-on waits for 17:45.
    assert ev.next_due["offline"] == datetime(2026, 3, 4, 17, 45, tzinfo=UTC)
    off = _conv(owner_id=2, assigned_at=at_11, last_inbound_at=at_11 - timedelta(hours=1))
    assert evaluate(ruleset, Snapshot(off), at_11).next_due["offline"] == at_11 + timedelta(minutes=45)
    assert not evaluate(ruleset, Snapshot(_conv(owner_id=7)), at_11).next_due.get("offline")


def test_owner_unresponsive_counts_from_the_later_of_assignment_and_message() -> None:
    ruleset = load_texts([("r.yaml", RULES)], strict=True).ruleset
    at_11 = datetime(2026, 3, 4, 11, tzinfo=UTC)
    conv = _conv(owner_id=1, last_inbound_at=at_11 - timedelta(hours=1), assigned_at=at_11)
    assert evaluate(ruleset, Snapshot(conv), at_11).next_due["unresponsive"] == at_11 + timedelta(minutes=15)
    # Business time: 11:50 + 15 business minutes crosses lunch -> 12:35.
    late = conv.model_copy(update={"assigned_at": datetime(2026, 3, 4, 11, 50, tzinfo=UTC)})
    due = evaluate(ruleset, Snapshot(late), at_11).next_due["unresponsive"]
    assert due == datetime(2026, 3, 4, 12, 35, tzinfo=UTC)


def test_nobody_available_names_each_agent_once_with_the_reason_that_counts() -> None:
    """`prefer` tries the skilled agents, then anyone: the deferral reason must not list an
    agent twice ("no skill" and then "off shift"); the reason of the last pass counts."""
    prefer = Pool("p", (3, 1, 2), "round_robin", None, "prefer")
    choice = choose_agent(
        prefer, ROSTER, NIGHT, {}, 0, conversation=_conv(channel="whatsapp"), exclude=(3, 1)
    )
    assert choice.agent_id is None
    agents = [entry.split(":", 1)[0] for entry in choice.skipped]
    assert sorted(agents) == ["agent 1", "agent 2", "agent 3"], choice.skipped
    assert "agent 1: the current owner" in choice.skipped and "agent 2: off shift" in " ".join(choice.skipped)
