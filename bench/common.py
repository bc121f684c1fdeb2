"""What every benchmark shares: the served simulator, a runtime pointed at it, request
counting, the result table and the RESULTS.md writer.

Benchmarks import the worker, never the tests: the counting transport and the
collecting dispatcher here are the same idea as tests/e2e/conftest.py.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fakeredis
import httpx
import redis

from worker.clock import Clock, FakeClock
from worker.config import load_settings
from worker.logs import configure_logging
from worker.rules.firing import Step
from worker.runtime import Runtime
from worker.scheduling.tick import Loop
from worker.simulator.server import serve
from worker.simulator.simulator import Simulator
from worker.state.lease import LeaderLease
from worker.state.redis_conn import embedded_server
from worker.state.watermark import WatermarkState

RESULTS_PATH = Path(__file__).with_name("RESULTS.md")
TOKEN = "bench-token"
PAGE = 50  # the contract's $limit

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def ceil_div(a: int, b: int) -> int:
    return math.ceil(a / b)


# --- counting ----------------------------------------------------------------------------------


class CountingTransport(httpx.HTTPTransport):
    """Counts requests (by method and path) and response bytes the client receives."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: Counter[tuple[str, str]] = Counter()
        self.bytes_in = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        response.read()  # the client reads it anyway; reading here lets us count it
        self.requests[(request.method, _service(request.url.path))] += 1
        self.bytes_in += len(response.content)
        return response

    @property
    def total(self) -> int:
        return sum(self.requests.values())

    def calls(self, method: str, path: str) -> int:
        return self.requests[(method, path)]

    def reset(self) -> None:
        self.requests.clear()
        self.bytes_in = 0


@contextmanager
def redis_round_trips() -> Iterator[list[str]]:
    """Counts every round trip to Redis while inside: single commands and whole pipelines."""
    trips: list[str] = []
    single, whole = redis.Redis.execute_command, redis.client.Pipeline.execute
    immediate = redis.client.Pipeline.immediate_execute_command

    def count_single(self: redis.Redis, *args: Any, **kw: Any) -> Any:
        trips.append(str(args[0]))
        return single(self, *args, **kw)

    def count_pipeline(self: redis.client.Pipeline, *args: Any, **kw: Any) -> Any:
        trips.append("pipeline")
        return whole(self, *args, **kw)

    def count_immediate(self: redis.client.Pipeline, *args: Any, **kw: Any) -> Any:
        trips.append(str(args[0]))
        return immediate(self, *args, **kw)

    redis.Redis.execute_command = count_single  # type: ignore[method-assign]
    redis.client.Pipeline.execute = count_pipeline  # type: ignore[method-assign]
    redis.client.Pipeline.immediate_execute_command = count_immediate  # type: ignore[method-assign]
    try:
        yield trips
    finally:
        redis.Redis.execute_command = single  # type: ignore[method-assign]
        redis.client.Pipeline.execute = whole  # type: ignore[method-assign]
        redis.client.Pipeline.immediate_execute_command = immediate  # type: ignore[method-assign]


def _service(path: str) -> str:
    """`/conversations/12` -> `/conversations`: count per service, not per record."""
    parts = path.split("/")
    return "/".join(parts[:2]) if len(parts) > 2 else path


class TimedApp:
    """Wraps the simulator's ASGI app and adds up the time it spends per request (its own cost)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.requests = 0
        self.seconds = 0.0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send)
        finally:
            self.seconds += time.perf_counter() - started
            self.requests += 1

    def reset(self) -> None:
        self.requests, self.seconds = 0, 0.0

    @property
    def ms_per_request(self) -> float:
        return 1000 * self.seconds / self.requests if self.requests else 0.0


class Collector:
    """A dispatcher that keeps steps instead of queueing them."""

    def __init__(self) -> None:
        self.steps: list[Step] = []

    def enqueue(self, step: Step) -> None:
        self.steps.append(step)


# --- the simulator and the worker --------------------------------------------------------------


@dataclass
class Bench:
    """A served simulator and what talks to it."""

    sim: Simulator
    app: TimedApp
    url: str
    clock: Clock
    workdir: Path
    redis_url: str
    runtimes: list[Runtime] = field(default_factory=list)

    def runtime(
        self, rules: str, *, transport: httpx.BaseTransport | None = None, **settings: Any
    ) -> Runtime:
        rules_file = self.workdir / f"rules-{len(self.runtimes)}.yaml"
        rules_file.write_text(rules)
        options: dict[str, Any] = {
            "api_url": self.url,
            "api_token": TOKEN,
            "redis_url": self.redis_url,
            "rules_path": rules_file,
            "rate_limit_per_s": 1_000_000,
            "rate_burst": 1_000_000,
            "log_level": "WARNING",
            **settings,
        }
        built = Runtime.build(load_settings(**options), clock=self.clock, transport=transport)
        self.runtimes.append(built)
        return built

    def client(self, transport: httpx.BaseTransport | None = None) -> httpx.Client:
        """A plain httpx client with the bearer token (what a naive script would use)."""
        headers = {"Authorization": f"Bearer {TOKEN}"}
        return httpx.Client(base_url=self.url, headers=headers, transport=transport, timeout=60)


@contextmanager
def served(clock: Clock | None = None, *, redis_url: str | None = None) -> Iterator[Bench]:
    """An empty simulator served on loopback, and a clean Redis, for one benchmark run."""
    clock = clock or FakeClock(datetime(2026, 11, 2, 9, 0, tzinfo=UTC))
    url = bench_redis_url() if redis_url is None else redis_url
    flush(url)
    sim = Simulator(clock=clock, token=TOKEN)
    app = TimedApp(sim.app)
    with tempfile.TemporaryDirectory(prefix="inboxpilot-bench-") as tmp, serve(app) as server:
        bench = Bench(sim, app, server.url, clock, Path(tmp), url)
        try:
            yield bench
        finally:
            for built in bench.runtimes:
                built.close()


def bench_redis_url() -> str:
    """BENCH_REDIS_URL (a database the benchmark may flush), else the embedded fakeredis."""
    return os.environ.get("BENCH_REDIS_URL", "")


def flush(url: str) -> None:
    if url:
        redis.Redis.from_url(url).flushdb()
    else:
        fakeredis.FakeRedis(server=embedded_server()).flushall()


def lead(loop: Loop) -> LeaderLease:
    """Make the loop the leader so it may move the watermark."""
    lease = LeaderLease(loop.runtime.redis, "scheduler", 300, loop.runtime.clock)
    if not lease.try_acquire():
        raise RuntimeError("could not take the scheduler lease (another run on this Redis?)")
    loop.fencing_token = lambda: lease.token
    return lease


def start_watermark_now(loop: Loop, lease: LeaderLease) -> None:
    """Skip the cold first tick: the worker has already read everything up to now."""
    if not loop.watermark.save(WatermarkState(loop.runtime.clock.now(), frozenset()), lease.token):
        raise RuntimeError("watermark write refused")


# --- output -------------------------------------------------------------------------------------


@dataclass
class Table:
    columns: Sequence[str]
    rows: list[Sequence[Any]] = field(default_factory=list)

    def add(self, *cells: Any) -> None:
        self.rows.append(cells)

    def markdown(self) -> str:
        cells = [[_cell(c) for c in row] for row in self.rows]
        lines = ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(row) + " |" for row in cells]
        return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def ratio(naive: float, ours: float) -> str:
    """How many times cheaper we are than the naive figure."""
    if ours <= 0:
        return "∞" if naive > 0 else "-"
    return f"{naive / ours:,.1f}x"


def machine() -> str:
    u = platform.uname()
    return f"{u.system} {u.release} {u.machine}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def command_line(module: str, argv: Sequence[str] | None) -> str:
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join([f"python -m {module}", *args])


def report(
    title: str,
    command: str,
    sections: Sequence[tuple[str, Table]],
    notes: Sequence[str] = (),
    *,
    save: bool = True,
) -> str:
    """Print the tables and append a dated section to RESULTS.md."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = [f"## {title} — {stamp}", "", f"- machine: {machine()}", f"- command: `{command}`"]
    parts.append(f"- redis: {bench_redis_url() or 'embedded fakeredis (in-process)'}")
    parts.append("")
    for heading, table in sections:
        if heading:
            parts += [f"**{heading}**", ""]
        parts += [table.markdown(), ""]
    parts += [f"- {note}" for note in notes]
    text = "\n".join(parts).rstrip() + "\n"
    print(text)
    if save:
        with RESULTS_PATH.open("a", encoding="utf-8") as out:
            out.write("\n" + text)
    return text


def arguments(
    description: str,
    argv: Sequence[str] | None = None,
    extra: Callable[[argparse.ArgumentParser], object] | None = None,
) -> argparse.Namespace:
    """--quick and --no-save, plus what `extra` adds to the parser."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small sizes, seconds (CI)")
    parser.add_argument("--no-save", action="store_true", help="print only; do not append to RESULTS.md")
    if extra is not None:
        extra(parser)
    if argv is None:  # run from the command line: the worker's per-request logs would swamp the table
        configure_logging("WARNING", "console")
    return parser.parse_args(argv)


# --- the simulator in its own process (benchmarks on the real clock) --------------------------

SANDBOX_START_TIMEOUT_S = 30.0
HEARTBEATS_KEY = "dramatiq:__heartbeats__"  # the Redis broker's worker heartbeats (dispatch.lua)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(**settings: str) -> dict[str, str]:
    """This environment without any INBOXPILOT_* setting, plus `settings` (names without the prefix)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INBOXPILOT_")}
    env |= {f"INBOXPILOT_{name.upper()}": value for name, value in settings.items()}
    return env


@dataclass
class Sandbox:
    """`inboxpilot sandbox` in a child process on the system clock, driven over /__admin/."""

    url: str
    process: subprocess.Popen[bytes]
    admin: httpx.Client

    def call(self, method: str, name: str, body: dict[str, Any] | None = None) -> Any:
        response = self.admin.request(method, f"/__admin/{name}", json=body)
        response.raise_for_status()
        return response.json()

    def new_conversation(self, **fields: Any) -> dict[str, Any]:
        return dict(self.call("POST", "conversations", fields))

    def audit(self, since: int = 0) -> list[dict[str, Any]]:
        """Audit entries with seq > since (every mutating call, with the simulator's time)."""
        response = self.admin.get("/__admin/audit", params={"since": since})
        response.raise_for_status()
        return list(response.json()["entries"])


@contextmanager
def sandbox_process(seed: int = 0, *, strict: bool = False) -> Iterator[Sandbox]:
    """Start `python -m worker sandbox` on a free port (`strict`: documented fields only); stop it on exit."""
    port = free_port()
    command = [sys.executable, "-m", "worker", "sandbox", "--port", str(port), "--seed", str(seed)]
    command += ["--strict"] if strict else []
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(
            command, env=clean_env(api_token=TOKEN), stdout=subprocess.DEVNULL, stderr=errors
        )
        url = f"http://127.0.0.1:{port}"
        admin = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
        try:
            _wait_ready(admin, process, errors)
            yield Sandbox(url, process, admin)
        finally:
            admin.close()
            stop_process(process)


def _wait_ready(admin: httpx.Client, process: subprocess.Popen[bytes], errors: Any) -> None:
    deadline = time.monotonic() + SANDBOX_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            errors.seek(0)
            raise RuntimeError(f"the sandbox exited: {errors.read().decode(errors='replace')[-2000:]}")
        try:
            if admin.get("/__admin/state").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)  # waiting for a child process to listen, with a deadline
    raise TimeoutError("the sandbox did not answer within 30 s")


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 15.0) -> None:
    """SIGTERM, then SIGKILL if it does not exit in time (only the process we started)."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout_s)


def wait_heartbeats(url: str, count: int, timeout_s: float = 60.0) -> None:
    """Wait until `count` dramatiq broker processes heartbeat on the Redis at `url`."""
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + timeout_s
    while int(client.zcard(HEARTBEATS_KEY)) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {count} dramatiq workers started within {timeout_s} s")
        time.sleep(0.1)  # waiting for child processes to start, with a deadline


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation; values sorted ascending."""
    if not sorted_values:
        return math.nan
    position = (len(sorted_values) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def parse_time(value: str) -> datetime:
    """The simulator's wire time (ISO 8601 with `Z`)."""
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def worker_settings_env(sandbox_url: str, redis_url: str, rules_path: Path) -> dict[str, str]:
    """The environment a separate `inboxpilot run --role worker` process needs for a benchmark."""
    return clean_env(
        api_url=sandbox_url,
        api_token=TOKEN,
        redis_url=redis_url,
        rules_path=str(rules_path),
        rate_limit_per_s="1000000",
        rate_burst="1000000",
        log_level="WARNING",
        log_format="json",
    )


@contextmanager
def worker_processes(env: dict[str, str], processes: int, threads: int) -> Iterator[None]:
    """`inboxpilot run --role worker --processes P --threads T` as a child; needs a real Redis."""
    command = [sys.executable, "-m", "worker", "run", "--role", "worker"]
    command += ["--processes", str(processes), "--threads", str(threads)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_heartbeats(env["INBOXPILOT_REDIS_URL"], processes)
        yield
    finally:
        stop_process(process, timeout_s=30)


def load_note() -> str:
    """The 1-minute load average now: other work on the machine shows in real-clock figures."""
    return f"load average (1 min) at the start {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"


@dataclass(frozen=True)
class Workers:
    """How a benchmark runs the dramatiq workers: threads in the benchmark's process, or
    separate `inboxpilot run --role worker` processes."""

    workers: str = "threads"  # "threads" | "processes"
    threads: int = 8
    processes: int = 1

    @property
    def label(self) -> str:
        if self.workers == "threads":
            return f"in-process, {self.threads} threads"
        return f"{self.processes} worker process(es) x {self.threads} threads"
