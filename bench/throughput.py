"""Benchmark 5, end-to-end throughput: replies per second through scheduler -> Redis ->
dramatiq workers -> simulator, beside the simulator's own ceiling measured in the same run.

    python -m bench.throughput [--quick] [--no-save] [--profile PATH] [--cpu-only]
    BENCH_REDIS_URL=redis://127.0.0.1:6379/14 python -m bench.throughput   # also: worker processes

K conversations whose customer is waiting are created in `inboxpilot sandbox` (its
own process); a reply rule matches all of them; the leader loop polls until
nothing is left (one poll reads K/50 pages), claiming and enqueueing K message
steps; the clock stops when the simulator's audit log holds K applied sends.
The ceilings: raw POSTs to the send endpoint with N client threads (the
simulator alone), and the worker's per-reply request mix (read the
conversation, read its messages, send) through the worker's own API client with
N threads (the API side without Redis, the ledger or dramatiq).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx

from bench.common import (
    TOKEN,
    Collector,
    Sandbox,
    Table,
    Workers,
    arguments,
    bench_redis_url,
    command_line,
    flush,
    lead,
    load_note,
    report,
    sandbox_process,
    worker_processes,
    worker_settings_env,
)
from worker.api.services import SEND_PATHS
from worker.app import App
from worker.config import Settings, load_settings
from worker.execution.execute import execute
from worker.rules.firing import Step
from worker.runtime import Runtime
from worker.scheduling.tick import Loop
from worker.state.watermark import WatermarkState

CHANNEL = "sms"
PAGE = 50
SEND_PATH = SEND_PATHS[CHANNEL]
REPLY = "Thanks for writing: we are on it."
RULES = f"""
rules:
  - id: acknowledge
    once: per_inbound_message
    when: {{status: open, team_replied: false}}
    then:
      - reply: "{REPLY}"
"""
GOAL_PER_S = 1_000
DRAIN_TIMEOUT_S = 300.0


Config = Workers


@dataclass
class EndToEnd:
    config: Config
    k: int
    replies: int
    poll_s: float
    total_s: float
    # "pipeline": the clock runs from the first poll (the workers take steps as the poll
    # claims them); "drain": the poll claims every step first, then all are queued at once
    # and the clock runs from there (the workers alone: where they are the limit).
    mode: str = "pipeline"

    @property
    def per_s(self) -> float:
        return self.replies / self.total_s if self.total_s else 0.0


@dataclass
class Ceiling:
    what: str
    threads: int
    calls: int
    seconds: float

    @property
    def per_s(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0


# --- set-up ---------------------------------------------------------------------------------


def create_waiting(sandbox: Sandbox, k: int, threads: int = 8) -> list[int]:
    """K new conversations, each with the customer's first message unanswered."""

    def one(_: int) -> int:
        return int(sandbox.new_conversation(channel=CHANNEL)["id"])

    with ThreadPoolExecutor(threads) as pool:
        return sorted(pool.map(one, range(k)))


def bench_settings(sandbox: Sandbox, redis_url: str, rules_path: Path) -> Settings:
    return load_settings(
        api_url=sandbox.url,
        api_token=TOKEN,
        redis_url=redis_url,
        rules_path=rules_path,
        rate_limit_per_s=1_000_000,
        rate_burst=1_000_000,
        log_level="WARNING",
    )


@dataclass
class Scenario:
    sandbox: Sandbox
    redis_url: str
    rules_path: Path
    ids: list[int]
    before: datetime  # just before the K conversations were created (the seeded ones are older)

    def settings(self) -> Settings:
        return bench_settings(self.sandbox, self.redis_url, self.rules_path)

    def worker_env(self) -> dict[str, str]:
        return worker_settings_env(self.sandbox.url, self.redis_url, self.rules_path)


@contextlib.contextmanager
def scenario(k: int, seed_n: int = 0) -> Iterator[Scenario]:
    """A sandbox (`seed_n` old conversations) with K new waiting ones, a clean Redis, the reply rule."""
    with sandbox_process(seed=seed_n) as sandbox, tempfile.TemporaryDirectory() as tmp:
        redis_url = bench_redis_url()
        flush(redis_url)
        rules_path = Path(tmp) / "rules.yaml"
        rules_path.write_text(RULES)
        before = datetime.now(UTC)
        yield Scenario(sandbox, redis_url, rules_path, create_waiting(sandbox, k), before)


def applied_sends(sandbox: Sandbox, cursor: int) -> tuple[int, int]:
    """(applied sends after `cursor`, the new cursor)."""
    entries = sandbox.audit(cursor)
    sends = sum(1 for e in entries if e["path"] == SEND_PATH and e["applied"])
    return sends, max([cursor, *(int(e["seq"]) for e in entries)])


# --- end to end -----------------------------------------------------------------------------


def end_to_end(config: Config, k: int, seed_n: int = 0, *, mode: str = "pipeline") -> EndToEnd:
    with scenario(k, seed_n) as setup:
        sandbox = setup.sandbox
        _, cursor = applied_sends(sandbox, 0)  # skip the conversations' creation
        app = App.build(setup.settings())
        with contextlib.ExitStack() as stack:
            stack.callback(app.close)
            start_workers(stack, config, app, setup.worker_env())
            loop = app.loop()
            skip_seeded(loop, setup.before)
            queue, collector = loop.dispatcher, Collector()
            if mode == "drain":
                loop.dispatcher = collector  # claimed in the ledger, queued below all at once
            started = time.perf_counter()
            while loop.poll_once().conversations:  # one poll pages through all K, then a quiet one
                pass
            poll_s = time.perf_counter() - started
            if mode == "drain":
                started = time.perf_counter()
                for step in collector.steps:
                    queue.enqueue(step)
            replies = 0
            deadline = time.monotonic() + DRAIN_TIMEOUT_S
            while replies < k and time.monotonic() < deadline:
                sends, cursor = applied_sends(sandbox, cursor)
                replies += sends
                if replies < k:
                    time.sleep(0.05)  # polling the audit log with a deadline
            total_s = time.perf_counter() - started
    return EndToEnd(config, k, replies, poll_s, total_s, mode)


def skip_seeded(loop: Loop, before: datetime) -> None:
    """Lead, with the watermark just before the K conversations: the poll reads those only."""
    lease = lead(loop)
    if not loop.watermark.save(WatermarkState(before, frozenset()), lease.token):
        raise RuntimeError("watermark write refused")


def start_workers(stack: contextlib.ExitStack, config: Config, app: App, env: dict[str, str]) -> None:
    if config.workers == "processes":
        stack.enter_context(worker_processes(env, config.processes, config.threads))
        return
    worker = app.worker(config.threads)
    worker.start()
    stack.callback(worker.stop)


# --- ceilings -------------------------------------------------------------------------------


def hammer(threads: int, seconds: float, call: Callable[[int], None]) -> int:
    """Run `call(i)` from `threads` threads for `seconds`; the number of calls made."""
    counter = itertools.count()
    stop = time.monotonic() + seconds
    made = [0] * threads

    def work(slot: int) -> None:
        while time.monotonic() < stop:
            call(next(counter))
            made[slot] += 1

    pool = [threading.Thread(target=work, args=(slot,)) for slot in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return sum(made)


def send_ceiling(sandbox: Sandbox, ids: Sequence[int], threads: int, seconds: float) -> Ceiling:
    """Raw POSTs to the send endpoint: the simulator's own ceiling for replies."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    clients = threading.local()

    def call(i: int) -> None:
        if not hasattr(clients, "c"):
            clients.c = httpx.Client(base_url=sandbox.url, headers=headers, timeout=60)
        body = {"conversation_id": ids[i % len(ids)], "message_text": "ceiling", "message_type": "text"}
        clients.c.post(SEND_PATH, json=body).raise_for_status()

    started = time.perf_counter()
    calls = hammer(threads, seconds, call)
    return Ceiling("simulator: raw send POSTs", threads, calls, time.perf_counter() - started)


def mix_ceiling(runtime: Runtime, ids: Sequence[int], threads: int, seconds: float) -> Ceiling:
    """The worker's per-reply API calls through its own client: a send, and for every 50
    sends the step's batched re-check reads (the conversations by `id[$in]`, their messages)."""
    api = runtime.api
    records = {c.id: c for c in api.conversations.find({"id": {"$in": list(ids[:PAGE])}})}

    def call(i: int) -> None:
        if i % PAGE == 0:
            batch = list(ids[i % len(ids) :][:PAGE]) or list(ids[:PAGE])
            found = {c.id: c for c in api.conversations.find({"id": {"$in": batch}})}
            api.messages.since_many(CHANNEL, {cid: (None, False) for cid in found})
            records.update(found)
        conversation = records.get(ids[i % len(ids)]) or api.conversations.get(ids[i % len(ids)])
        api.sends.send_message(conversation, "ceiling", "text")

    started = time.perf_counter()
    calls = hammer(threads, seconds, call)
    what = "worker API client: send + batched reads (2 per 50)"
    return Ceiling(what, threads, calls, time.perf_counter() - started)


def ceilings(k: int, threads: Sequence[int], seconds: float) -> list[Ceiling]:
    out: list[Ceiling] = []
    with scenario(k) as setup:
        out += [send_ceiling(setup.sandbox, setup.ids, n, seconds) for n in threads]
        runtime = Runtime.build(setup.settings())
        try:
            out += [mix_ceiling(runtime, setup.ids, n, seconds) for n in threads]
        finally:
            runtime.close()
    return out


# --- profile --------------------------------------------------------------------------------


def claimed_steps(setup: Scenario, app: App) -> list[Step]:
    """Lead and poll until nothing is left, keeping the claimed steps instead of queueing them."""
    collector = Collector()
    loop = app.loop()
    loop.dispatcher = collector
    skip_seeded(loop, setup.before)
    while loop.poll_once().conversations:
        pass
    return list(collector.steps)


def worker_cpu(k: int) -> tuple[float, float]:
    """(CPU s, wall s) per reply of executing the K claimed replies in this thread: the worker's
    own cost per reply (no poll, no dramatiq; the simulator and Redis are other processes)."""
    with scenario(k) as setup:
        app = App.build(setup.settings())
        try:
            steps = claimed_steps(setup, app)
            cpu, wall = time.thread_time(), time.perf_counter()
            for step in steps:
                execute(app.runtime, step)
            cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
        finally:
            app.close()
    return cpu / k, wall / k


def profile(k: int, path: Path) -> float:
    """Poll, then execute every step in this thread under pyinstrument; seconds per reply."""
    from pyinstrument import Profiler

    with scenario(k) as setup:
        app = App.build(setup.settings())
        try:
            collector = Collector()
            loop = app.loop()
            loop.dispatcher = collector
            skip_seeded(loop, setup.before)
            profiler = Profiler(interval=0.0005)
            profiler.start()
            started = time.perf_counter()
            while loop.poll_once().conversations:
                pass
            for step in collector.steps:
                execute(app.runtime, step)
            seconds = time.perf_counter() - started
            profiler.stop()
        finally:
            app.close()
    path.write_text(profiler.output_text(unicode=True, color=False, show_all=False))
    return seconds / k


# --- the report -----------------------------------------------------------------------------


def table(runs: Sequence[EndToEnd], best_sim: Ceiling, best_mix: Ceiling) -> Table:
    out = Table(
        ["workers", "clock", "K", "replies", "poll+enqueue s", "total s", "replies/s",
         f"goal ≥ {GOAL_PER_S:,}/s", "met", "share of sim send ceiling", "share of API-mix ceiling"]
    )  # fmt: skip
    for r in runs:
        clock = "from the first poll" if r.mode == "pipeline" else "from queueing all (after the poll)"
        out.add(
            r.config.label, clock, r.k, r.replies, r.poll_s, r.total_s, r.per_s, GOAL_PER_S,
            "yes" if r.per_s >= GOAL_PER_S else "**no**",
            f"{r.per_s / best_sim.per_s:.0%}" if best_sim.per_s else "-",
            f"{r.per_s / best_mix.per_s:.0%}" if best_mix.per_s else "-",
        )  # fmt: skip
    return out


def ceiling_table(found: Sequence[Ceiling]) -> Table:
    out = Table(["ceiling", "client threads", "calls", "seconds", "calls/s"])
    for c in found:
        out.add(c.what, c.threads, c.calls, c.seconds, c.per_s)
    return out


def configs(quick: bool) -> list[Config]:
    if quick:
        return [Config(threads=8)]
    found = [Config(threads=8), Config(threads=16)]
    if bench_redis_url():  # separate processes share the queue and ledger only through a real Redis
        found += [Config("processes", 8, 1), Config("processes", 8, 2), Config("processes", 16, 2)]
    return found


def drain_configs(quick: bool) -> list[Config]:
    if quick:
        return []
    found = [Config(threads=8)]
    if bench_redis_url():
        found += [Config("processes", 8, 1), Config("processes", 8, 2)]
    return found


def main(argv: Sequence[str] | None = None) -> tuple[list[EndToEnd], list[Ceiling]]:
    args = arguments(__doc__ or "", argv, _profile_option)
    profile_path: Path | None = args.profile
    k = 100 if args.quick else 2_000
    load = load_note()
    cpu_s, wall_s = worker_cpu(k)
    cpu_note = (
        f"worker CPU per reply (one thread executes the K claimed replies; `time.thread_time`): "
        f"{1000 * cpu_s:.2f} ms CPU, {1000 * wall_s:.2f} ms wall, load {os.getloadavg()[0]:.1f}"
    )
    if args.cpu_only:
        print(cpu_note)
        return [], []
    runs = [end_to_end(config, k) for config in configs(args.quick)]
    runs += [end_to_end(config, k, mode="drain") for config in drain_configs(args.quick)]
    found = ceilings(k, (4,) if args.quick else (1, 4, 8), 1.0 if args.quick else 3.0)
    best_sim = max((c for c in found if c.what.startswith("simulator")), key=lambda c: c.per_s)
    best_mix = max((c for c in found if not c.what.startswith("simulator")), key=lambda c: c.per_s)
    notes = [
        f"K = {k:,} new {CHANNEL} conversations waiting for a reply in `inboxpilot sandbox` (own process); "
        "rule: `team_replied: false` -> reply. The clock runs from the first poll until the audit log "
        "holds K applied sends; poll+enqueue = the leader's polls (K/50 pages, K claims, K/50 step "
        "messages). Clock 'from queueing all': the poll claims every step first (not timed), then all "
        "K/50 step messages are queued at once to workers already running, and the clock runs from there "
        "to the K-th applied send: the workers' own rate, where they are the limit.",
        "replies of one action share a step of up to 50: per step the item locks, one ledger script to "
        "begin, GET the conversations (`id[$in]`) and their messages (one `$or` find: re-check and "
        "read-back), then per reply the rule re-check, POST send, and one ledger script (its outcome "
        "and the message's attribution, durable before the next send): about 1 + 2/50 API calls and "
        "1 Redis round trip per reply (the ledger write; the API gate reads the shared pause at most "
        "every 50 ms per process, and a step records its own writes in one script).",
        "sim send ceiling = raw POSTs to the send endpoint from N threads (best "
        f"{best_sim.per_s:,.0f}/s); API-mix ceiling = the same calls per reply through the worker's "
        f"client from N threads, no Redis or dramatiq (best {best_mix.per_s:,.0f} replies/s).",
    ]
    notes.append(cpu_note)
    notes.append(load + f"; at the end {os.getloadavg()[0]:.1f}")
    if profile_path is not None:
        per_reply = profile(k, profile_path)
        notes.append(f"profile (one thread, poll then execute): {1000 * per_reply:.2f} ms per reply")
    report(
        "End-to-end throughput (benchmark 5)",
        command_line("bench.throughput", argv),
        [("", table(runs, best_sim, best_mix)), ("Ceilings measured in the same run", ceiling_table(found))],
        notes,
        save=not args.no_save,
    )
    return runs, found


def _profile_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", type=Path, help="also profile one thread (pyinstrument text to PATH)")
    parser.add_argument("--cpu-only", action="store_true", help="print the worker's CPU per reply only")


if __name__ == "__main__":
    main()
