"""SLA and follow-up properties: what should have fired, computed from the history
(people's events and the bot's own visible effects) with an independent re-statement
of the scenario rules, compared with what reached the API.

Each scenario rule is restated here as (marker, situation, due): the marker is the
`[scn-...]` tag its note or reply carries, the situation is its `once` key, and
`due` is when it must fire given the conversation's state, or None. Walking each
conversation's history in time order gives the firings that must happen; a firing
is *ambiguous* (either outcome accepted) only when a person's event lands within
GUARD of its deadline, where the 1-second tick makes the race legitimate.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from tests.scenarios.hours import Hours
from tests.scenarios.timeline import Happening, History, Pause, State

if TYPE_CHECKING:
    from tests.scenarios.driver import Lag

GUARD = timedelta(seconds=2)
WINDOW = timedelta(hours=24)
WINDOWED = {"whatsapp", "instagram", "messenger"}
NIGHT = (22, 7)  # local hours with no supervisor note or reassignment


@dataclass(frozen=True)
class Spec:
    rule: str
    marker: str
    job: str  # sla | followup
    situation: Callable[[State], str]
    due: Callable[[State], datetime | None]
    customer_facing: bool = False
    # The due time without pauses / quiet hours: counts how often they moved a deadline.
    plain_due: Callable[[State], datetime | None] | None = None


@dataclass(frozen=True)
class Expected:
    rule: str
    conversation_id: int
    situation: str
    due: datetime
    ambiguous: bool
    effect: str  # the message type that must reach the API ("note", "text", "template") or "none"
    moved: bool = False  # a pause (SLA) or quiet hours (follow-up) moved the deadline


@dataclass(frozen=True)
class Actual:
    rule: str
    conversation_id: int
    at: datetime
    message_type: str


@dataclass
class Verdict:
    job: str
    expected: int = 0
    ambiguous: int = 0
    fired: int = 0
    silent: int = 0  # expected with no visible effect (skipped outside a window)
    latencies_s: list[float] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


SLA_POLICY = "scn"  # rules/examples/scenario-sla.yaml: compiled rule ids sla-scn-<metric>-<percent>
QUIET = (time(21), time(8))  # follow-ups' quiet hours, in the contact's zone else ORG_ZONE
ORG_ZONE = "Europe/Berlin"


def sla_due(cal: Hours, start: datetime, budget: timedelta, pauses: list[Pause]) -> datetime | None:
    """When `budget` of open time since `start` is used up, paused time excluded; None while paused."""
    t, left = start, budget
    for p_start, p_end in sorted(pauses, key=lambda p: p[0]):
        if p_end is not None and p_end <= t:
            continue
        run = cal.between(t, max(p_start, t))
        if run >= left:
            return cal.add(t, left.total_seconds())
        left -= run
        if p_end is None:
            return None
        t = p_end
    return cal.add(t, left.total_seconds())


def quiet(t: datetime, zone: str) -> bool:
    local = t.astimezone(ZoneInfo(zone or ORG_ZONE)).time()
    return local >= QUIET[0] or local < QUIET[1]


def after_quiet(t: datetime, zone: str) -> datetime:
    """`t`, or the end of the quiet hours it falls in."""
    if not quiet(t, zone):
        return t
    tz = ZoneInfo(zone or ORG_ZONE)
    local = t.astimezone(tz)
    day = local.date() if local.time() < QUIET[1] else local.date() + timedelta(days=1)
    return datetime.combine(day, QUIET[1], tz).astimezone(t.tzinfo)


def specs(h: dict[str, Hours]) -> list[Spec]:
    support = h["scn-support"]

    def unanswered(s: State) -> bool:
        return s.status == "open" and s.last_out is None

    def waiting(s: State) -> bool:
        return s.status == "open" and s.last_out is not None and s.cycle_start is not None

    def sla(metric: str, minutes: float, paused: bool = True) -> Callable[[State], datetime | None]:
        budget = timedelta(minutes=minutes)

        def due(s: State) -> datetime | None:
            if metric == "first":
                start = s.created if unanswered(s) else None
            else:
                start = s.cycle_start if waiting(s) else None
            return None if start is None else sla_due(support, start, budget, s.pauses if paused else [])

        return due

    def anchored(s: State) -> str:
        return f"a:{s.anchor}"

    def cycle(s: State) -> str:
        return f"cy:{s.cycle_start}"

    def after_reply(
        lo: float, hi: float | None, wait_quiet: bool = True
    ) -> Callable[[State], datetime | None]:
        def due(s: State) -> datetime | None:
            if s.status != "open" or s.anchor is None:
                return None
            t = s.anchor + timedelta(hours=lo)
            t = after_quiet(t, s.zone) if wait_quiet else t
            return t if hi is None or t < s.anchor + timedelta(hours=hi) else None

        return due

    rule = f"sla-{SLA_POLICY}"
    return [
        Spec(f"{rule}-first-response-80", "[scn-sla-warning]", "sla", lambda s: "c", sla("first", 48),
             plain_due=sla("first", 48, paused=False)),
        Spec(f"{rule}-first-response-100", "[scn-sla-breach]", "sla", lambda s: "c", sla("first", 60),
             plain_due=sla("first", 60, paused=False)),
        Spec(f"{rule}-next-response-80", "[scn-sla-next-warning]", "sla", cycle, sla("next", 96),
             plain_due=sla("next", 96, paused=False)),
        Spec(f"{rule}-next-response-100", "[scn-sla-next-breach]", "sla", cycle, sla("next", 120),
             plain_due=sla("next", 120, paused=False)),
        Spec("scn-nudge-1", "[scn-nudge-1]", "followup", anchored, after_reply(4, 24), True,
             plain_due=after_reply(4, 24, wait_quiet=False)),
        Spec("scn-nudge-2", "[scn-nudge-2]", "followup", anchored, after_reply(24, 72), True,
             plain_due=after_reply(24, 72, wait_quiet=False)),
        Spec("scn-close", "[scn-close]", "followup", anchored, after_reply(72, None, wait_quiet=False)),
    ]  # fmt: skip


def effect(spec: Spec, s: State, at: datetime) -> str:
    """What a firing must send: the window policy of the scenario's nudges (template fallback)."""
    if not spec.customer_facing:
        return "note"
    closed = s.channel in WINDOWED and (s.last_in is None or at - s.last_in > WINDOW)
    if not closed:
        return "text"
    return "template" if s.channel == "whatsapp" else "none"


def expected_firings(
    history: History, rules: list[Spec], end: datetime, lag: Lag | None = None
) -> list[Expected]:
    out: list[Expected] = []
    for cid, events in history.by_conversation.items():
        if cid not in history.created:
            continue
        out.extend(_walk(history.initial(cid), cid, events, rules, end, lag))
    return out


def _walk(
    state: State, cid: int, events: list[Happening], rules: list[Spec], end: datetime, lag: Lag | None
) -> list[Expected]:
    fired: set[tuple[str, str]] = set()
    out: list[Expected] = []
    for h in [*events, None]:
        horizon = end if h is None else h.at
        pending = True
        while pending:  # rules due before this event fire first (one may enable another)
            pending = False
            for spec in rules:
                key = (spec.rule, spec.situation(state))
                due = spec.due(state) if key not in fired else None
                if due is None or due > horizon:
                    continue
                # A person's event before the effect must land races it (while the workers
                # were stopped, until they restarted): either outcome is right.
                race = (h is None or h.human) and horizon < latest(due, lag)
                fired.add(key)
                moved = spec.plain_due is not None and spec.plain_due(state) != due
                out.append(Expected(spec.rule, cid, key[1], due, race, effect(spec, state, due), moved))
                pending = True
        if h is not None:
            state.apply(h)
    return out


def actual_firings(history: History, rules: list[Spec]) -> list[Actual]:
    out = []
    for h in history.everything:
        if h.human or h.kind != "send":
            continue
        for spec in rules:
            if h.text.startswith(spec.marker):
                out.append(Actual(spec.rule, h.conversation_id, h.at, str(h.value)))
    return out


def latest(due: datetime, lag: Lag | None) -> datetime:
    """When an effect due at `due` must have landed (later while the workers were stopped)."""
    return lag.deadline(due, GUARD) if lag is not None else due + GUARD


def check_firings(
    expected: list[Expected], actual: list[Actual], rules: list[Spec], lag: Lag | None = None
) -> dict[str, Verdict]:
    jobs = {spec.rule: spec.job for spec in rules}
    verdicts = {job: Verdict(job) for job in dict.fromkeys(jobs.values())}
    by_key: dict[tuple[str, int], list[Actual]] = defaultdict(list)
    for a in sorted(actual, key=lambda a: a.at):
        by_key[(a.rule, a.conversation_id)].append(a)
    used: set[int] = set()
    for e in sorted(expected, key=lambda e: e.due):
        v = verdicts[jobs[e.rule]]
        v.counts[e.rule] = v.counts.get(e.rule, 0) + (0 if e.ambiguous else 1)
        v.ambiguous += e.ambiguous
        v.expected += not e.ambiguous
        if e.moved:
            moved = "moved by a pause" if v.job == "sla" else "waited out quiet hours"
            v.counts[moved] = v.counts.get(moved, 0) + 1
        match = next(
            (
                a
                for a in by_key[(e.rule, e.conversation_id)]
                if id(a) not in used and e.due <= a.at <= latest(e.due, lag)
            ),
            None,
        )
        if e.effect == "none":
            v.silent += match is None
            if match is not None:
                used.add(id(match))
                v.violations.append(
                    f"{e.rule} c{e.conversation_id}: sent {match.message_type} outside the window"
                )
            continue
        if match is None:
            if not e.ambiguous:
                v.violations.append(f"{e.rule} c{e.conversation_id}: missed (due {e.due:%a %H:%M:%S})")
            continue
        used.add(id(match))
        v.fired += 1
        v.latencies_s.append((match.at - e.due).total_seconds())
        if match.message_type != e.effect and not e.ambiguous:
            v.violations.append(
                f"{e.rule} c{e.conversation_id}: sent {match.message_type}, expected {e.effect}"
            )
    for a in actual:
        if id(a) not in used:
            v = verdicts[jobs[a.rule]]
            v.violations.append(f"{a.rule} c{a.conversation_id}: unexpected firing at {a.at:%a %H:%M:%S} "
                                f"(early, twice, or for a situation that did not hold)")  # fmt: skip
    return verdicts


def check_quiet_and_window(history: History, rules: list[Spec], hours: dict[str, Hours], v: Verdict) -> None:
    """Direct checks on every follow-up the bot sent, independent of the expectations: never in
    quiet hours, never a plain message outside the 24-hour window, never twice for one team
    reply, never after the customer replied, never a close for a conversation not answered."""
    markers = tuple(s.marker for s in rules if s.customer_facing)
    sequence = tuple(s.marker for s in rules if s.job == "followup")
    for cid, events in history.by_conversation.items():
        if cid not in history.created:
            continue
        state = history.initial(cid)
        sent: set[tuple[str, datetime | None]] = set()
        for h in events:
            if not h.human and h.kind == "send" and h.text.startswith(sequence):
                _check_step(cid, h, state, h.text.startswith(markers), sent, v)
            if not h.human and h.kind == "status" and h.value == "closed" and state.anchor is None:
                v.violations.append(
                    f"c{cid}: closed by the bot at {h.at:%a %H:%M:%S}, the customer's message not answered"
                )
            state.apply(h)


def _check_step(
    cid: int, h: Happening, state: State, facing: bool, sent: set[tuple[str, datetime | None]], v: Verdict
) -> None:
    marker = h.text.split("]", 1)[0] + "]"
    if (marker, state.anchor) in sent:
        v.violations.append(f"c{cid}: {marker} twice for the team reply of {state.anchor}")
    sent.add((marker, state.anchor))
    if state.anchor is None:
        v.violations.append(f"c{cid}: {marker} at {h.at:%a %H:%M:%S} without a team reply to follow up")
    if state.last_in is not None and state.last_out is not None and state.last_in > state.last_out:
        v.violations.append(f"c{cid}: follow-up after the customer replied")
    if not facing:
        return
    if quiet(h.at, state.zone):
        v.violations.append(
            f"c{cid}: follow-up in quiet hours at {h.at:%a %H:%M:%S} ({state.zone or ORG_ZONE})"
        )
    if (
        h.value == "text"
        and state.channel in WINDOWED
        and (state.last_in is None or h.at - state.last_in > WINDOW)
    ):
        v.violations.append(f"c{cid}: plain follow-up outside the 24-hour window")


def check_night(history: History, hours: dict[str, Hours], v: Verdict) -> None:
    """No SLA note or escalation between 22:00 and 07:00 in the team's time zone."""
    zone = hours["scn-support"].zone
    for h in history.everything:
        if h.human or not (h.kind == "assign" or (h.kind == "send" and h.text.startswith("[scn-sla"))):
            continue
        hour = h.at.astimezone(zone).hour
        if hour >= NIGHT[0] or hour < NIGHT[1]:
            v.violations.append(f"c{h.conversation_id}: {h.kind} at night ({h.at.astimezone(zone):%a %H:%M})")
