"""A seeded week of support traffic: the generator's ground truth.

Arrivals follow a daily and a weekly cycle (thinning a Poisson process);
each conversation then plays a script: the customer may write twice, an agent
answers after a business-time delay (sometimes never), the customer replies,
says thanks (and the agent closes) or goes quiet (and may come back days
later); some conversations are reassigned by a person. The script is fixed up
front from the seed; the driver plays it against the simulator and records
what the API accepted.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from tests.scenarios.hours import Hours

CHANNELS = (("whatsapp", 0.4), ("webchat", 0.3), ("instagram", 0.15), ("sms", 0.15))
# Contacts' time zones ("" = none given: quiet hours fall back to the org's, Berlin).
ZONES = (("", 0.7), ("America/New_York", 0.15), ("Asia/Tokyo", 0.1), ("Europe/London", 0.05))
WAITING, WORKING = 13, 12  # pipeline 1: "waiting on customer" (pauses the SLA clock), "in progress"
# Relative arrival intensity by local hour (support is busiest mid-morning and mid-afternoon).
HOURLY = (0.15, 0.1, 0.1, 0.1, 0.1, 0.2, 0.4, 0.8, 1.3, 1.8, 2.0, 1.8, 1.3, 1.5, 1.8, 1.7, 1.5, 1.2,
          0.9, 0.8, 0.7, 0.5, 0.35, 0.2)  # fmt: skip
WEEKDAY = (1.25, 1.1, 1.05, 1.0, 0.95, 0.55, 0.35)


@dataclass(frozen=True)
class TrafficConfig:
    start: datetime
    days: float = 7.0
    rate_per_day: float = 40.0  # mean arrivals per day over the week
    seed: int = 1
    agents: tuple[int, ...] = (301, 302, 303)
    reply_mean_s: float = 30 * 60  # agents' business-time answer delay (exponential)
    never_answered: float = 0.06
    reassigned: float = 0.08
    parked: float = 0.12  # share of rounds where a person parks it in the waiting stage for a while

    @property
    def end(self) -> datetime:
        return self.start + timedelta(days=self.days)


@dataclass(frozen=True, order=True)
class Event:
    """One thing a person does. `ref` is the generator's conversation number."""

    at: datetime
    seq: int
    kind: str = field(compare=False)  # arrive | customer | agent_reply | reassign | close | stage
    ref: int = field(compare=False)
    channel: str = field(default="", compare=False)
    agent: int | None = field(default=None, compare=False)
    zone: str = field(default="", compare=False)  # the contact's time zone (arrive)
    stage: int | None = field(default=None, compare=False)  # stage


class _Script:
    def __init__(self, config: TrafficConfig, support: Hours, rng: random.Random) -> None:
        self.config = config
        self.support = support
        self.rng = rng
        self.events: list[Event] = []

    def add(self, at: datetime, kind: str, ref: int, **extra: object) -> None:
        at = at.replace(microsecond=at.microsecond // 1000 * 1000)  # the API keeps milliseconds
        self.events.append(Event(at, len(self.events), kind, ref, **extra))  # type: ignore[arg-type]

    def minutes(self, mean: float) -> timedelta:
        return timedelta(seconds=self.rng.expovariate(1 / (mean * 60)))

    def conversation(self, ref: int, t0: datetime) -> None:
        rng = self.rng
        channel = rng.choices([c for c, _ in CHANNELS], [w for _, w in CHANNELS])[0]
        zone = rng.choices([z for z, _ in ZONES], [w for _, w in ZONES])[0]
        self.add(t0, "arrive", ref, channel=channel, zone=zone)
        if rng.random() < self.config.reassigned:
            when = t0 + timedelta(minutes=rng.uniform(10, 360))
            self.add(when, "reassign", ref, agent=rng.choice(self.config.agents))
        t_in = t0
        for _round in range(5):
            if rng.random() < 0.15:  # a second message before anyone answers
                t_in += self.minutes(3)
                self.add(t_in, "customer", ref)
            if rng.random() < self.config.parked:  # waiting on the customer, then back to work
                self.park(ref, t_in + self.minutes(20), rng.uniform(0.5, 8))
            if rng.random() < self.config.never_answered:
                return
            delay = rng.expovariate(1 / self.config.reply_mean_s)
            t_out = self.support.add(t_in, delay)
            self.add(t_out, "agent_reply", ref)
            fate = rng.random()
            if fate < 0.45:
                t_in = t_out + self.minutes(40)
                if rng.random() < self.config.parked * 2:  # asked for details: the answer comes in parked
                    self.add(t_out + timedelta(minutes=1), "stage", ref, stage=WAITING)
                    self.add(t_in + self.minutes(90), "stage", ref, stage=WORKING)
                self.add(t_in, "customer", ref)
                continue
            if fate < 0.65:
                thanks = t_out + self.minutes(10)
                self.add(thanks, "customer", ref)
                self.add(self.support.add(thanks, rng.expovariate(1 / 600)), "close", ref)
                return
            if rng.random() < 0.25:  # quiet for days, then back
                t_in = t_out + timedelta(hours=rng.uniform(6, 120))
                self.add(t_in, "customer", ref)
                continue
            return

    def park(self, ref: int, at: datetime, hours: float) -> None:
        self.add(at, "stage", ref, stage=WAITING)
        self.add(at + timedelta(hours=hours), "stage", ref, stage=WORKING)


def _intensity(t: datetime, zone: Hours) -> float:
    local = t.astimezone(zone.zone)
    return HOURLY[local.hour] * WEEKDAY[local.weekday()]


def generate(config: TrafficConfig, support: Hours) -> list[Event]:
    """Every event of the run, in time order (only those before `config.end`)."""
    rng = random.Random(config.seed)
    script = _Script(config, support, rng)
    peak = max(HOURLY) * max(WEEKDAY)
    mean = sum(HOURLY) / 24 * sum(WEEKDAY) / 7
    rate_peak_per_s = config.rate_per_day / 86400 * peak / mean
    t = config.start
    ref = 0
    while True:
        t += timedelta(seconds=rng.expovariate(rate_peak_per_s))
        if t >= config.end:
            break
        if rng.random() * peak <= _intensity(t, support):
            ref += 1
            script.conversation(ref, t)
    return sorted(e for e in script.events if e.at < config.end)


def describe(events: list[Event]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for e in events:
        counts[e.kind] = counts.get(e.kind, 0) + 1
    return counts
