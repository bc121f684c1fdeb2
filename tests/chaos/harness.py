"""Chaos harness: real processes, a driver that knows which firings must happen, seeded faults.

One run starts, each as its own OS process: a `redis-server` on a free port
with its own data directory (never the machine's shared Redis), the simulator
(`tests.chaos.simproc`), `schedulers` x `inboxpilot run --role scheduler` and
`workers` x `inboxpilot run --role worker`. The driver creates conversations
(each must be assigned once, noted once and answered once) and, after the first
answer, a second customer message in some of them (answered once more). Faults
are drawn from `seed` on one timeline: SIGKILL of workers (restarted), SIGKILL of
the leader scheduler (restarted as a standby), 500s and commit-then-fail from
the simulator, 429 bursts with Retry-After, answers slower than the client
timeout, a Redis restart that keeps its data and one that loses it.

The verdict reads the simulator's audit log (what the API really applied) and
compares it with the expected firings: duplicates and lost must be 0. Waiting
is always a condition polled with a deadline; the fixed pauses below only pace
the driver (when to inject the next fault), they never decide an outcome.

Used by `tests/chaos/test_chaos.py` (short, CI) and `bench/chaos.py` (long).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import redis

from worker.api.services import BULK_ACTIONS, SEND_PATHS
from worker.scheduling.scheduler import LEASE_NAME
from worker.state.lease import lease_key
from worker.state.ledger import AUDIT_STREAM, ENTRY_PREFIX, REDRIVE_KEY

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "chaos-token-5f1d0c9a"  # recognisable: the run checks it never reaches a log
CHANNEL = "webchat"
SEND_PATH = SEND_PATHS[CHANNEL]
QUEUE_KEYS = ("dramatiq:inboxpilot.msgs", "dramatiq:inboxpilot.DQ.msgs")
DEAD_KEY = "dramatiq:inboxpilot.XQ"

RULES = """
rules:
  - id: chaos-assign
    description: Every new conversation is assigned to agent 101 (a bulk action).
    once: per_conversation
    when: {status: open, owner: unset}
    then:
      - assign: 101
  - id: chaos-triage
    description: One internal note per conversation.
    once: per_conversation
    when: {status: open}
    then:
      - note: "triage {{ conversation.id }}"
  - id: chaos-ack
    description: One reply per customer message (the text names the message it answers).
    once: per_inbound_message
    when: {status: open}
    then:
      - reply: "ack {{ conversation.id }} @ {{ conversation.last_inbound_at }}"
"""


@dataclass
class ChaosConfig:
    """One run. The defaults are the short CI run."""

    workdir: Path
    seed: int = 0
    conversations: int = 40
    followups: int = 20
    schedulers: int = 2
    workers: int = 3
    worker_threads: int = 4
    create_over_s: float = 20.0
    error_rate: float = 0.10
    commit_then_fail_rate: float = 0.05
    worker_kills: int = 3
    leader_kills: int = 1
    rate_limit_bursts: int = 1
    slow_bursts: int = 1
    redis_restarts: int = 1
    redis_data_losses: int = 0
    inject_over_s: float = 30.0
    converge_timeout_s: float = 100.0
    http_timeout_s: float = 1.0
    redrive_after_s: float = 20.0
    # Conversations whose second customer message races the first answer (0.3-2 s after
    # creation): the first answer may be skipped as moot, but must never go out after it.
    racing: int = 6
    lease_ttl_s: float = 3.0
    extra_env: dict[str, str] = field(default_factory=dict)
    # What the customers ask and the rules do: "default" (assign, note, ack) or a scenario
    # registered in SCENARIOS (tests/chaos/breadth.py: tag, reply with a PDF, close).
    scenario: str = "default"

    @property
    def expected_firings(self) -> int:
        return 3 * self.conversations + min(self.followups, self.conversations)


@dataclass
class ChaosReport:
    expected: int
    applied: int = 0
    duplicates: int = 0
    lost: int = 0
    unexpected: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    details: list[str] = field(default_factory=list)
    converged_s: float | None = None
    ledger_failed: Counter[str] = field(default_factory=Counter)
    dead_letters: int = 0
    token_leaks: list[str] = field(default_factory=list)
    read_back_found: int = 0  # attempts that found their effect already applied and sent nothing
    stale_sends: int = 0  # answers sent although the customer had written again before the re-check
    raced_sends: int = 0  # ... who wrote again between the re-check and the call (the API has no CAS)
    # Per conversation, the re-check -> call ms of each ack it got: (situation key, ms).
    ack_staleness: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    staleness_ms: list[float] = field(default_factory=list)  # re-check -> call, per applied action

    def staleness(self, q: float) -> float | None:
        """The q-quantile (0..1) of re-check -> call in ms, None without samples."""
        if not self.staleness_ms:
            return None
        ordered = sorted(self.staleness_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def summary(self) -> str:
        faults = ", ".join(f"{k}={v}" for k, v in sorted(self.faults.items())) or "none"
        failed = ", ".join(f"{k}={v}" for k, v in sorted(self.ledger_failed.items())) or "none"
        converged = f"{self.converged_s:.1f} s" if self.converged_s is not None else "never"
        return (
            f"expected firings={self.expected} applied={self.applied} duplicates={self.duplicates} "
            f"lost={self.lost} unexpected={self.unexpected} converged={converged}\n"
            f"faults injected: {faults}\n"
            f"read-backs that found the effect already there: {self.read_back_found}\n"
            f"staleness re-check -> call (ms): p50={self.staleness(0.5)} p99={self.staleness(0.99)} "
            f"max={self.staleness(1.0)} over {len(self.staleness_ms)} actions; "
            f"answers sent when the rule no longer held at re-check: {self.stale_sends} "
            f"(customer wrote between re-check and call: {self.raced_sends})\n"
            f"ledger failed: {failed}; dead letters: {self.dead_letters}; "
            f"token in logs: {len(self.token_leaks)}"
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], bool], timeout_s: float, what: str, every_s: float = 0.1) -> None:
    """Poll `check` until it holds; raise TimeoutError naming `what` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(Exception):
            if check():
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout_s:.0f} s")
        time.sleep(every_s)


# --- processes --------------------------------------------------------------------------------


class Proc:
    """A child process with its output in a log file; restartable."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logdir: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = logdir / f"{name}.log"
        self.popen: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> Proc:
        self.starts += 1
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            self.argv, env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        return self

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive:
            assert self.popen is not None
            self.popen.send_signal(sig)
            self.popen.wait(10)

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM (graceful), then SIGKILL when it does not exit in time."""
        if not self.alive:
            return
        assert self.popen is not None
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)


class RedisServer:
    """The suite's own `redis-server`: a free port, its own directory, append-only file on."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.dir = workdir / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        argv = [
            shutil.which("redis-server") or "redis-server",
            "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
            "--appendonly", "yes", "--appendfsync", "always", "--save", "",
            "--protected-mode", "no", "--daemonize", "no",
        ]  # fmt: skip
        self.proc = Proc("redis", argv, dict(os.environ), workdir)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2)

    def start(self) -> None:
        self.proc.start()
        wait_for(lambda: bool(self.client().ping()), 10, "redis-server start")

    def restart(self, *, keep_data: bool, down_s: float) -> None:
        """Crash it (SIGKILL) and start it again; without `keep_data` its files are wiped."""
        self.proc.kill()
        if not keep_data:
            for path in self.dir.iterdir():
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        time.sleep(down_s)  # pacing: how long the outage lasts
        self.start()


def worker_env(config: ChaosConfig, api_url: str, redis_url: str, rules_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INBOXPILOT_")}
    env.update(
        {
            "INBOXPILOT_API_URL": api_url,
            "INBOXPILOT_API_TOKEN": TOKEN,
            "INBOXPILOT_REDIS_URL": redis_url,
            "INBOXPILOT_RULES_PATH": str(rules_path),
            "INBOXPILOT_POLL_INTERVAL_S": "0.5",
            "INBOXPILOT_TIMER_PUMP_INTERVAL_S": "0.5",
            "INBOXPILOT_RESYNC_INTERVAL_S": "10",
            "INBOXPILOT_HTTP_TIMEOUT_S": str(config.http_timeout_s),
            "INBOXPILOT_HTTP_CONNECT_TIMEOUT_S": "1",
            "INBOXPILOT_READ_RETRIES": "3",
            "INBOXPILOT_RATE_LIMIT_PER_S": "200",
            "INBOXPILOT_RATE_BURST": "50",
            "INBOXPILOT_REDRIVE_AFTER_S": str(config.redrive_after_s),
            "INBOXPILOT_LEASE_TTL_S": str(config.lease_ttl_s),
            "INBOXPILOT_LOG_FORMAT": "json",
            "INBOXPILOT_LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
            **config.extra_env,
        }
    )
    return env


class Cluster:
    """Everything one run starts, and how to hurt it."""

    def __init__(self, config: ChaosConfig) -> None:
        self.config = config
        self.logdir = config.workdir / "logs"
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.redis = RedisServer(config.workdir)
        self.sim_port = free_port()
        self.api_url = f"http://127.0.0.1:{self.sim_port}"
        rules = config.workdir / "rules.yaml"
        SCENARIOS[config.scenario].prepare(config.workdir)
        rules.write_text(SCENARIOS[config.scenario].rules)
        env = worker_env(config, self.api_url, self.redis.url, rules)
        inboxpilot = [sys.executable, "-m", "worker"]
        self.sim = Proc(
            "simulator",
            [sys.executable, "-m", "tests.chaos.simproc", "--port", str(self.sim_port), "--token", TOKEN,
             "--seed", str(config.seed)],
            env, self.logdir,
        )  # fmt: skip
        self.schedulers = [
            Proc(f"scheduler-{i}", [*inboxpilot, "run", "--role", "scheduler"], env, self.logdir)
            for i in range(config.schedulers)
        ]
        self.workers = [
            Proc(
                f"worker-{i}",
                [*inboxpilot, "run", "--role", "worker", "--threads", str(config.worker_threads)],
                env,
                self.logdir,
            )
            for i in range(config.workers)
        ]

    def start(self) -> None:
        self.redis.start()
        self.sim.start()
        admin = Admin(self.api_url)
        wait_for(lambda: admin.get("state") is not None, 20, "simulator start")
        for proc in [*self.schedulers, *self.workers]:
            proc.start()
        wait_for(lambda: self.leader() is not None, 30, "a scheduler becoming leader")

    def stop(self) -> None:
        """SIGTERM to every worker process at once, then wait for each (graceful stops overlap)."""
        procs = [*self.schedulers, *self.workers]
        for proc in procs:
            if proc.alive:
                assert proc.popen is not None
                proc.popen.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.stop()
        self.sim.stop()
        self.redis.proc.stop()

    def leader(self) -> Proc | None:
        """The scheduler whose last `became_leader` fence is the lease's current token."""
        token = self.redis.client().get(lease_key(LEASE_NAME))
        if token is None:
            return None
        for proc in self.schedulers:
            if proc.alive and _last_fence(proc.log_path) == int(token):
                return proc
        return None

    def log_lines(self) -> Iterator[str]:
        for path in sorted(self.logdir.glob("*.log")):
            yield from path.read_text(errors="replace").splitlines()


def _last_fence(log_path: Path) -> int | None:
    fence = None
    with contextlib.suppress(FileNotFoundError):
        for line in log_path.read_text(errors="replace").splitlines():
            if '"became_leader"' in line:
                with contextlib.suppress(ValueError, KeyError):
                    fence = int(json.loads(line)["fence"])
    return fence


class Admin:
    """The simulator's `/__admin/` endpoints: the other side of every conversation."""

    def __init__(self, api_url: str) -> None:
        self._http = httpx.Client(
            base_url=api_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10.0
        )

    def get(self, name: str, **params: Any) -> Any:
        response = self._http.get(f"/__admin/{name}", params=params)
        response.raise_for_status()
        return response.json()

    def post(self, name: str, body: dict[str, Any]) -> Any:
        response = self._http.post(f"/__admin/{name}", json=body)
        response.raise_for_status()
        return response.json()

    def faults(self, **config: Any) -> None:
        self.post("faults", config)


# --- expected firings and the verdict ---------------------------------------------------------


class Ledgerless:
    """What the API applied, grouped by firing, read incrementally from the audit log."""

    def __init__(self, admin: Admin) -> None:
        self._admin = admin
        self._since = 0
        self.applied: Counter[tuple[str, ...]] = Counter()
        self.applied_at: dict[tuple[str, ...], str] = {}  # first applied, API time (ISO, Z)
        self.other: list[str] = []

    def refresh(self) -> None:
        entries = self._admin.get("audit", since=self._since)["entries"]
        for entry in entries:
            self._since = max(self._since, int(entry["seq"]))
            if entry["applied"]:
                self._count(entry)

    def _count(self, entry: dict[str, Any]) -> None:
        body = entry["body"] if isinstance(entry["body"], dict) else {}
        path = entry["path"]
        if path == BULK_ACTIONS and body.get("action") == "assign":
            for cid in body.get("conversation_ids") or []:
                self.applied[("assign", str(cid))] += 1
        elif path == SEND_PATH and body.get("message_type") == "note":
            self.applied[("triage", str(body.get("conversation_id")))] += 1
        elif path == SEND_PATH and body.get("message_type") == "text":
            key = ("ack", str(body.get("conversation_id")), str(body.get("message_text")))
            self.applied[key] += 1
            self.applied_at.setdefault(key, str(entry["time"]))
        else:
            self.other.append(f"{entry['method']} {path} {json.dumps(body)[:120]}")

    def acks(self, cid: str) -> int:
        return sum(1 for key in self.applied if key[0] == "ack" and key[1] == cid)

    def ack_keys(self, cid: str) -> list[tuple[str, ...]]:
        return [key for key in self.applied if key[0] == "ack" and key[1] == cid]


@dataclass
class Expected:
    rounds: dict[str, int] = field(default_factory=dict)  # conversation id -> customer messages
    # Raced conversations: their second message's creation time (API time, ISO with Z).
    raced: dict[str, str] = field(default_factory=dict)

    def total(self) -> int:
        return sum(2 + n for n in self.rounds.values())

    def missing(self, seen: Ledgerless) -> list[str]:
        out = []
        for cid, rounds in self.rounds.items():
            out += [f"{kind} {cid}" for kind in ("assign", "triage") if not seen.applied[(kind, cid)]]
            if cid in self.raced:  # the latest message must be answered; the first may be moot
                if not any(_answers(key, self.raced[cid]) for key in seen.ack_keys(cid)):
                    out.append(f"ack {cid} (2, raced)")
                continue
            out += [f"ack {cid} ({n + 1})" for n in range(seen.acks(cid), rounds)]
        return out

    def stale(self, seen: Ledgerless, report: ChaosReport) -> list[str]:
        """Answers to a first message applied after the second one arrived.

        Stale when the second message came before the answer's re-check (applied time
        minus its logged re-check -> call time): the rule no longer held when checked.
        One that came between the re-check and the call is a race no client can close
        (the API has no compare-and-set); it is counted apart (`raced_sends`).
        """
        out = []
        for cid, second_at in self.raced.items():
            for key in seen.ack_keys(cid):
                applied_at = seen.applied_at.get(key, "")
                if _answers(key, second_at) or applied_at <= second_at:
                    continue
                checked_at = _minus_ms(applied_at, _first_round_staleness(report, cid, second_at))
                if checked_at is not None and checked_at < _parse(second_at):
                    report.raced_sends += 1
                    continue
                out.append(f"stale: {key[2]} applied at {applied_at} after {second_at}")
        return out


def _parse(wire: str) -> datetime:
    return datetime.fromisoformat(wire.replace("Z", "+00:00"))


def _minus_ms(wire: str, ms: float | None) -> datetime | None:
    return None if ms is None else _parse(wire) - timedelta(milliseconds=ms)


def _first_round_staleness(report: ChaosReport, cid: str, second_at: str) -> float | None:
    """The logged re-check -> call ms of the conversation's ack of an earlier message."""
    for situation, ms in report.ack_staleness.get(cid, []):
        named = situation.rsplit(":in:", 1)[-1].split("#", 1)[0]
        with contextlib.suppress(ValueError):
            if datetime.fromisoformat(named) != _parse(second_at):
                return ms
    return None


def _answers(key: tuple[str, ...], inbound_at: str) -> bool:
    """Whether an ack's text names the customer message created at `inbound_at`."""
    named = key[2].rsplit(" @ ", 1)[-1]
    with contextlib.suppress(ValueError):
        return datetime.fromisoformat(named) == datetime.fromisoformat(inbound_at.replace("Z", "+00:00"))
    return False


def verdict(expected: Expected, seen: Ledgerless, report: ChaosReport) -> None:
    report.expected = expected.total()
    report.applied = sum(seen.applied.values())
    report.duplicates = sum(n - 1 for n in seen.applied.values() if n > 1)
    report.details += [f"duplicate x{n}: {key}" for key, n in seen.applied.items() if n > 1]
    missing = expected.missing(seen)
    report.lost = len(missing)
    report.details += [f"lost: {m}" for m in missing]
    stale = expected.stale(seen, report)
    report.stale_sends = len(stale)
    report.details += stale
    extra_acks = sum(max(0, seen.acks(cid) - n) for cid, n in expected.rounds.items())
    strangers = {key[1] for key in seen.applied} - set(expected.rounds)
    report.unexpected = extra_acks + len(strangers) + len(seen.other)
    report.details += [f"unexpected: {line}" for line in seen.other]


# --- scenarios: what the customers ask, what the rules do, and how the audit log is judged -------


@dataclass(frozen=True)
class Scenario:
    rules: str
    seen: Callable[[Admin], Ledgerless]
    expected: Callable[[], Expected]
    verdict: Callable[[Expected, Ledgerless, ChaosReport], None]
    answered: Callable[[Ledgerless, str], bool]  # the first situation is over: follow up
    first_text: Callable[[int], str] = lambda n: f"help #{n}"
    followup_text: Callable[[str], str] = lambda cid: f"more #{cid}"
    prepare: Callable[[Path], None] = lambda workdir: None  # files the rules need
    faults: dict[str, Any] = field(default_factory=dict)  # more FaultConfig for the whole run


SCENARIOS: dict[str, Scenario] = {
    "default": Scenario(RULES, Ledgerless, Expected, verdict, lambda seen, cid: seen.acks(cid) >= 1),
}


# --- the run ----------------------------------------------------------------------------------

Event = tuple[float, str, Callable[[], None]]


class ChaosRun:
    def __init__(self, config: ChaosConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.cluster = Cluster(config)
        self.admin = Admin(self.cluster.api_url)
        self.scenario = SCENARIOS[config.scenario]
        self.seen = self.scenario.seen(self.admin)
        self.expected = self.scenario.expected()
        self.report = ChaosReport(expected=config.expected_firings)
        self._followups_left = min(config.followups, config.conversations)
        self._followed: set[str] = set()
        self._created = 0
        self._created_ids: list[str] = []

    def run(self) -> ChaosReport:
        started = time.monotonic()
        self.cluster.start()
        try:
            self.admin.faults(
                error_rate=self.config.error_rate,
                commit_then_fail_rate=self.config.commit_then_fail_rate,
                seed=self.config.seed,
                **self.scenario.faults,
            )
            self._play(self._timeline(), started)
            self._calm()
            self._converge(started)
            self._collect()
        finally:
            self.cluster.stop()
        self._scan_logs()
        self.scenario.verdict(self.expected, self.seen, self.report)
        return self.report

    # --- the timeline of the run

    def _timeline(self) -> list[Event]:
        c, rng = self.config, self.rng
        events: list[Event] = []
        gap = c.create_over_s / max(c.conversations, 1)
        events += [(i * gap, "create", self._create) for i in range(c.conversations)]
        racers = rng.sample(range(c.conversations), min(c.racing, c.conversations))
        events += [(i * gap + rng.uniform(0.3, 2.0), "race", lambda i=i: self._race(i)) for i in racers]

        def at() -> float:
            return rng.uniform(2.0, c.inject_over_s)

        for _ in range(c.worker_kills):
            victim = rng.randrange(len(self.cluster.workers))
            when = at()
            events.append((when, "kill", lambda v=victim: self._kill_worker(v)))
            events.append((when + rng.uniform(0.5, 2.0), "start", lambda v=victim: self._restart_worker(v)))
        for _ in range(c.leader_kills):
            events.append((at(), "kill_leader", self._kill_leader))
        for _ in range(c.rate_limit_bursts):
            when = at()
            events.append((when, "429_on", lambda: self._rate_limit(True)))
            events.append((when + 4.0, "429_off", lambda: self._rate_limit(False)))
        for _ in range(c.slow_bursts):
            when = at()
            slow_s = c.http_timeout_s + 1.0
            events.append((when, "slow_on", lambda s=slow_s: self._slow(0.3, s)))
            events.append((when + 5.0, "slow_off", lambda s=slow_s: self._slow(0.0, s)))
        events += [(at(), "redis_restart", lambda: self._redis(keep=True)) for _ in range(c.redis_restarts)]
        events += [(at(), "redis_loss", lambda: self._redis(keep=False)) for _ in range(c.redis_data_losses)]
        return sorted(events, key=lambda e: e[0])

    def _play(self, events: list[Event], started: float) -> None:
        for when, _name, action in events:
            while time.monotonic() - started < when:
                self._follow_up()
                time.sleep(0.05)  # pacing of the driver, not synchronisation
            action()
        for proc in [*self.cluster.workers, *self.cluster.schedulers]:
            if not proc.alive:
                proc.start()

    def _calm(self) -> None:
        """Faults end; the driver keeps answering until every follow-up message is sent."""
        self.admin.faults()
        self.admin.post("chaos", {"slow_rate": 0.0})
        wait_for(self._all_followups_sent, self.config.converge_timeout_s, "every follow-up being sent", 0.2)

    def _all_followups_sent(self) -> bool:
        self._follow_up()
        return self._followups_left == 0

    def _converge(self, started: float) -> None:
        def done() -> bool:
            self.seen.refresh()
            return not self.expected.missing(self.seen) and self._quiet()

        with contextlib.suppress(TimeoutError):
            wait_for(done, self.config.converge_timeout_s, "convergence", 0.5)
            self.report.converged_s = time.monotonic() - started
        # Late duplicates would come from work still queued: wait until nothing is left.
        with contextlib.suppress(TimeoutError):
            wait_for(self._quiet, 20, "an idle queue and ledger", 0.5)
        self.seen.refresh()

    def _quiet(self) -> bool:
        client = self.cluster.redis.client()
        queued = sum(int(client.hlen(key)) for key in QUEUE_KEYS)
        return queued == 0 and int(client.zcard(REDRIVE_KEY)) == 0

    def _collect(self) -> None:
        self._diagnose()
        chaos = self.admin.get("chaos")
        self.report.faults.update({f"api_{k}": v for k, v in chaos["faults"].items()})
        if chaos["slow"]:
            self.report.faults["api_slow_past_timeout"] = chaos["slow"]
        client = self.cluster.redis.client()
        self.report.dead_letters = int(client.zcard(DEAD_KEY))
        for _id, fields in client.xrange(AUDIT_STREAM):
            if fields.get(b"state") == b"failed":
                self.report.ledger_failed[fields.get(b"reason", b"?").decode()] += 1

    def _diagnose(self) -> None:
        """What keeps the run from being idle: pending claims and queued messages."""
        client = self.cluster.redis.client()
        for key in QUEUE_KEYS:
            if n := int(client.hlen(key)):
                self.report.details.append(f"still queued in {key}: {n}")
                where = _where_queued(client, key)
                for msg_id, raw in list(client.hscan_iter(key))[:5]:
                    self.report.details.append(
                        f"  {msg_id.decode()} held by {where.get(msg_id, 'nothing (no list, no ack set)')}: "
                        f"{raw.decode()[:400]}"
                    )
        for raw in client.zrange(REDRIVE_KEY, 0, 20):
            key = raw.decode()
            entry = {k.decode(): v.decode() for k, v in client.hgetall(ENTRY_PREFIX + key).items()}
            entry.pop("payload", None)
            self.report.details.append(f"still pending: {key} {entry}")

    def _scan_logs(self) -> None:
        for line in self.cluster.log_lines():
            if TOKEN in line:
                self.report.token_leaks.append(line[:200])
            if '"firing_executed"' in line and ('"reconciled": true' in line or '"already": true' in line):
                self.report.read_back_found += 1
            if '"firing_executed"' in line and '"staleness_ms"' in line:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    record = json.loads(line)
                    self.report.staleness_ms.append(float(record["staleness_ms"]))
                    if record.get("rule") == "chaos-ack":
                        acks = self.report.ack_staleness.setdefault(str(record["conversation"]), [])
                        acks.append((str(record["key"]), float(record["staleness_ms"])))

    # --- the driver: the customers

    def _create(self) -> None:
        self._created += 1
        record = self.admin.post(
            "conversations", {"channel": CHANNEL, "message_text": self.scenario.first_text(self._created)}
        )
        self.expected.rounds[str(record["id"])] = 1
        self._created_ids.append(str(record["id"]))

    def _race(self, index: int) -> None:
        """The customer writes again before (or while) the first message is answered."""
        if index >= len(self._created_ids):
            return
        cid = self._created_ids[index]
        if cid in self._followed:
            return
        self._followed.add(cid)
        self._followups_left = max(0, self._followups_left - 1)
        sent = self.admin.post("inbound", {"conversation_id": int(cid), "message_text": f"also #{cid}"})
        self.expected.rounds[cid] = 2
        self.expected.raced[cid] = str(sent["created_at"])

    def _follow_up(self) -> None:
        """A second customer message, sent once the first was answered (so it is a new situation)."""
        if self._followups_left <= 0:
            return
        self.seen.refresh()
        for cid in list(self.expected.rounds):
            if self._followups_left <= 0:
                return
            if cid in self._followed or not self.scenario.answered(self.seen, cid):
                continue
            self._followed.add(cid)
            self._followups_left -= 1
            self.admin.post(
                "inbound", {"conversation_id": int(cid), "message_text": self.scenario.followup_text(cid)}
            )
            self.expected.rounds[cid] = 2

    # --- the faults

    def _kill_worker(self, index: int) -> None:
        proc = self.cluster.workers[index]
        if proc.alive:
            proc.kill()
            self.report.faults["sigkill_worker"] += 1

    def _restart_worker(self, index: int) -> None:
        proc = self.cluster.workers[index]
        if not proc.alive:
            proc.start()

    def _kill_leader(self) -> None:
        leader = self.cluster.leader()
        if leader is None:
            return
        leader.kill()
        self.report.faults["sigkill_leader"] += 1
        standby_took_over = lambda: self.cluster.leader() not in (None, leader)  # noqa: E731
        with contextlib.suppress(TimeoutError):
            wait_for(standby_took_over, self.config.lease_ttl_s * 4 + 10, "a standby taking over")
            self.report.faults["leader_takeover"] += 1
        leader.start()  # back as a standby

    def _rate_limit(self, on: bool) -> None:
        config = self.admin.get("faults")["config"]
        # One request a second: with batched reads the cluster can make fewer than three a
        # second for a few seconds, and a looser limit then never answered a 429 at all.
        config.update(rate_limit_per_s=1.0 if on else 0.0, rate_burst=1)
        self.admin.faults(**config)
        self.report.faults["rate_limit_burst"] += on

    def _slow(self, rate: float, slow_s: float) -> None:
        self.admin.post("chaos", {"slow_rate": rate, "slow_s": slow_s})
        self.report.faults["slow_burst"] += rate > 0

    def _redis(self, *, keep: bool) -> None:
        self.cluster.redis.restart(keep_data=keep, down_s=1.5)
        if keep:
            self.report.faults["redis_restart_kept_data"] += 1
            return
        # An API that honours Idempotency-Key would replay our repeated sends; forget
        # them so only the worker's own read-back stands between a customer and a repeat.
        self.admin.post("chaos", {"forget_idempotency_keys": True})
        self.report.faults["redis_restart_lost_data"] += 1


def run_chaos(config: ChaosConfig) -> ChaosReport:
    return ChaosRun(config).run()


def _where_queued(client: redis.Redis, msgs_key: str) -> dict[bytes, str]:
    """Which list or worker ack set holds each message of a queue (diagnostics)."""
    queue = msgs_key.removesuffix(".msgs")
    where = {msg: f"list {queue}" for msg in client.lrange(queue, 0, -1)}
    name = queue.removeprefix("dramatiq:")
    for key in client.scan_iter(match=f"dramatiq:__acks__.*.{name}"):
        for msg in client.smembers(key):
            where[msg] = key.decode()
    return where
