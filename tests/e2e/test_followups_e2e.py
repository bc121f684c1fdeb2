"""Follow-up sequences through the real loop against the simulator on a fake clock, with the
shipped rules/followups.yaml: each step once, none after the customer replied, none the API would
refuse (no 422 in the audit log), none in quiet hours, a person's message restarts the sequence."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from tests.e2e.conftest import RuntimeFactory
from tests.e2e.test_sla_e2e import effects, make_loop, run_until
from worker.simulator.testing import SimulatorHandle

FOLLOWUPS = (Path(__file__).parents[2] / "rules" / "followups.yaml").read_text()
NUDGE_1, NUDGE_2 = "just checking in", "still here"
GOODBYE = "closing this conversation"
WED_10_BERLIN = datetime(2026, 3, 4, 9, 0, tzinfo=UTC)
BERLIN = ZoneInfo("Europe/Berlin")


def _sent(simulator: SimulatorHandle, cid: int) -> list[tuple[datetime, str]]:
    return [(t, what) for t, what in effects(simulator)[cid] if what != "update_status"]


def _kind(text: str) -> str:
    return next((k for k in (NUDGE_1, NUDGE_2, GOODBYE) if k in text), text)


def test_sequence_runs_once_per_anchor_within_the_window_and_the_day(
    simulator: SimulatorHandle, make_runtime: RuntimeFactory
) -> None:
    sim, clock = simulator.sim, simulator.clock
    clock.set(WED_10_BERLIN)
    loop = make_loop(make_runtime, FOLLOWUPS)
    convs = {ch: sim.new_conversation(channel=ch)["id"] for ch in ("webchat", "whatsapp", "instagram")}
    replied_by_customer = sim.new_conversation(channel="sms")["id"]
    unanswered = sim.new_conversation(channel="webchat")["id"]
    clock.advance(timedelta(minutes=5))
    anchor = clock.now()
    for cid in [*convs.values(), replied_by_customer]:
        sim.team_reply(cid)
    run_until(loop, clock, anchor + timedelta(hours=30))
    sim.customer_message(replied_by_customer, "thanks, all good")
    run_until(loop, clock, anchor + timedelta(days=5))
    loop.resync_once()

    web = _sent(simulator, convs["webchat"])
    assert [_kind(w) for _, w in web] == [NUDGE_1, NUDGE_2, GOODBYE]
    assert [t - anchor for t, _ in web] == [timedelta(hours=h) for h in (24, 48, 72)]
    assert sim.conversation(convs["webchat"])["status"] == "closed"
    # WhatsApp: the window closed long ago, so every step went out as the template.
    wa = [m for m in sim.messages(convs["whatsapp"]) if m.get("sender_type") == "api"]
    assert [m["message_type"] for m in wa] == ["template"] * 3
    assert not _sent(simulator, convs["instagram"])  # skipped: no template outside the window
    assert sim.conversation(convs["instagram"])["status"] == "open"  # not an auto-close channel
    assert [_kind(w) for _, w in _sent(simulator, replied_by_customer)] == [NUDGE_1]
    assert not _sent(simulator, unanswered)
    assert sim.conversation(unanswered)["status"] == "open"  # never closed unanswered
    assert not [e for e in sim.audit_log() if e.status >= 400]  # never a refused call
    for cid in convs.values():
        for t, _ in _sent(simulator, cid):
            assert 8 <= t.astimezone(BERLIN).hour < 21


def test_night_anchor_waits_for_the_morning_and_a_person_restarts_the_sequence(
    simulator: SimulatorHandle, make_runtime: RuntimeFactory
) -> None:
    sim, clock = simulator.sim, simulator.clock
    evening = datetime(2026, 3, 4, 21, 30, tzinfo=UTC)  # 22:30 Berlin
    clock.set(evening - timedelta(minutes=5))
    loop = make_loop(make_runtime, FOLLOWUPS)
    cid = sim.new_conversation(channel="webchat")["id"]
    clock.set(evening)
    sim.team_reply(cid)
    run_until(loop, clock, evening + timedelta(hours=40))
    (first,) = _sent(simulator, cid)
    assert first[0] == datetime(2026, 3, 6, 7, 0, tzinfo=UTC)  # Friday 08:00 Berlin, not 22:30
    restart = clock.now()
    sim.team_reply(cid, "Any news on your side?")
    run_until(loop, clock, restart + timedelta(hours=25))
    kinds = [(t, _kind(w)) for t, w in _sent(simulator, cid)]
    assert kinds[-1] == (restart + timedelta(hours=24), NUDGE_1)
    assert len(kinds) == 2
