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
from datetime import datetime, timedelta

from tests.scenarios.hours import Hours
from tests.scenarios.timeline import Happening, History, State

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


@dataclass(frozen=True)
class Expected:
    rule: str
    conversation_id: int
    situation: str
    due: datetime
    ambiguous: bool
    effect: str  # the message type that must reach the API ("note", "text", "template") or "none"


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


def specs(h: dict[str, Hours]) -> list[Spec]:
    support, day = h["scn-support"], h["scn-daytime"]

    def unanswered(s: State) -> bool:
        return s.status == "open" and s.last_out is None

    def waiting(s: State) -> bool:
        return (
            s.status == "open" and s.last_out is not None and s.last_in is not None and s.last_in > s.last_out
        )

    def silent(s: State) -> bool:
        return (
            s.status == "open" and s.last_out is not None and (s.last_in is None or s.last_in <= s.last_out)
        )

    def inbound(s: State) -> str:
        return f"in:{s.last_in}"

    def after_silence(hours: float, cal: Hours | None) -> Callable[[State], datetime | None]:
        def due(s: State) -> datetime | None:
            if not silent(s) or s.last_out is None:
                return None
            t = s.last_out + timedelta(hours=hours)
            return cal.next_open(t) if cal else t

        return due

    return [
        Spec("scn-sla-first-warning", "[scn-sla-warning]", "sla", lambda s: "c",
             lambda s: support.add(s.created, 48 * 60) if unanswered(s) else None),
        Spec("scn-sla-first-breach", "[scn-sla-breach]", "sla", lambda s: "c",
             lambda s: support.add(s.created, 3600) if unanswered(s) else None),
        Spec("scn-sla-next-breach", "[scn-sla-next-breach]", "sla", inbound,
             lambda s: support.add(s.last_in, 7200) if waiting(s) and s.last_in else None),
        Spec("scn-nudge-1", "[scn-nudge-1]", "followup", inbound, after_silence(4, day), True),
        Spec("scn-nudge-2", "[scn-nudge-2]", "followup", inbound, after_silence(24, day), True),
        Spec("scn-close", "[scn-close]", "followup", inbound, after_silence(72, None)),
    ]  # fmt: skip


def effect(spec: Spec, s: State, at: datetime) -> str:
    """What a firing must send: the window policy of the scenario's nudges (template fallback)."""
    if not spec.customer_facing:
        return "note"
    closed = s.channel in WINDOWED and (s.last_in is None or at - s.last_in > WINDOW)
    if not closed:
        return "text"
    return "template" if s.channel == "whatsapp" else "none"


def expected_firings(history: History, rules: list[Spec], end: datetime) -> list[Expected]:
    out: list[Expected] = []
    for cid, events in history.by_conversation.items():
        if cid not in history.created:
            continue
        out.extend(_walk(history.initial(cid), cid, events, rules, end))
    return out


def _walk(
    state: State, cid: int, events: list[Happening], rules: list[Spec], end: datetime
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
                race = (h is None or h.human) and horizon - due < GUARD
                fired.add(key)
                out.append(Expected(spec.rule, cid, key[1], due, race, effect(spec, state, due)))
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


def check_firings(expected: list[Expected], actual: list[Actual], rules: list[Spec]) -> dict[str, Verdict]:
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
        match = next(
            (
                a
                for a in by_key[(e.rule, e.conversation_id)]
                if id(a) not in used and e.due <= a.at <= e.due + GUARD
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
    """Direct checks on every customer-facing bot send, independent of the expectations."""
    day = hours["scn-daytime"]
    markers = tuple(s.marker for s in rules if s.customer_facing)
    for cid, events in history.by_conversation.items():
        if cid not in history.created:
            continue
        state = history.initial(cid)
        for h in events:
            if not h.human and h.kind == "send" and h.text.startswith(markers):
                if not day.is_open(h.at):
                    v.violations.append(f"c{cid}: follow-up in quiet hours at {h.at:%a %H:%M:%S}")
                if (
                    h.value == "text"
                    and state.channel in WINDOWED
                    and (state.last_in is None or h.at - state.last_in > WINDOW)
                ):
                    v.violations.append(f"c{cid}: plain follow-up outside the 24-hour window")
                if (
                    state.last_in is not None
                    and state.last_out is not None
                    and state.last_in > state.last_out
                ):
                    v.violations.append(f"c{cid}: follow-up after the customer replied")
            state.apply(h)


def check_night(history: History, hours: dict[str, Hours], v: Verdict) -> None:
    """No SLA note or escalation between 22:00 and 07:00 in the team's time zone."""
    zone = hours["scn-support"].zone
    for h in history.everything:
        if h.human or not (h.kind == "assign" or (h.kind == "send" and h.text.startswith("[scn-sla"))):
            continue
        hour = h.at.astimezone(zone).hour
        if hour >= NIGHT[0] or hour < NIGHT[1]:
            v.violations.append(f"c{h.conversation_id}: {h.kind} at night ({h.at.astimezone(zone):%a %H:%M})")
