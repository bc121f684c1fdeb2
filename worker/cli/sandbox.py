"""`inboxpilot sandbox`: serve the Conversations API simulator with seeded data."""

from __future__ import annotations

import os
import socket

import typer
import uvicorn

from worker.cli import app
from worker.cli.common import settings_or_exit
from worker.cli.failures import EXIT_PORT, Failure
from worker.simulator import DEFAULT_TOKEN, FaultConfig, Simulator


@app.command("sandbox")
def sandbox(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8080, help="Port to listen on."),
    seed: int = typer.Option(500, "--seed", help="How many conversations to generate."),
    rng_seed: int = typer.Option(0, help="Random seed of the generator (same seed, same data)."),
    token: str | None = typer.Option(
        None, help="Bearer token to accept. Default: INBOXPILOT_API_TOKEN, else 'sandbox-token'."
    ),
    organization_id: int | None = typer.Option(None, help="Organization served. Default: the setting."),
    fault_error_rate: float = typer.Option(0.0, help="Share of requests answered 500 before applying."),
    fault_commit_then_fail_rate: float = typer.Option(0.0, help="Share of writes applied, then failed."),
    fault_rate_limit: float = typer.Option(0.0, help="Requests per second per token; 0 = unlimited."),
    fault_latency_s: float = typer.Option(0.0, help="Delay added to every request."),
    fault_seed: int = typer.Option(0, help="Seed of the fault RNG."),
    strict: bool = typer.Option(
        False,
        "--strict",
        help="Serve only the documented conversation fields (no assigned_at, "
        "stage_entered_at, initiated_by).",
    ),
    qs_array_limit: int | None = typer.Option(
        None,
        "--qs-array-limit",
        min=1,
        help="Refuse (400) a query array of more than this many items, as a Feathers server "
        "with qs's default arrayLimit (20) does. Default: no limit.",
    ),
) -> None:
    """Serve the API simulator (Feathers semantics, in memory) for demos and manual tests."""
    settings = settings_or_exit(service=True)
    listener = _listen(host, port)  # before the banner: a busy port is one line, nothing else
    configured = settings.api_token.get_secret_value()
    accepted = token or configured or DEFAULT_TOKEN
    faults = _faults(fault_error_rate, fault_commit_then_fail_rate, fault_rate_limit, fault_latency_s)
    sim = Simulator(
        token=accepted,
        organization_id=organization_id or settings.organization_id,
        faults=faults,
        fault_seed=fault_seed,
        strict=strict,
        array_limit=qs_array_limit,
    )
    sim.seed(seed, seed=rng_seed)
    # Never echo a token: a terminal's scroll-back or a CI log is not a place for one.
    shown = _token_origin(token, configured)
    url = f"http://{host}:{port}"
    typer.echo(f"inboxpilot sandbox: {seed} conversations on {url} (org {sim.organization_id})")
    typer.echo(f"  token: {shown}")
    typer.echo(
        f"  try: curl -H \"Authorization: Bearer $TOKEN\" '{url}/conversations?$limit=100&status=open'"
    )
    server = uvicorn.Server(uvicorn.Config(sim.app, log_level="warning", lifespan="off"))
    server.run(sockets=[listener])


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that a port in use is reported cleanly (exit 5)."""
    try:
        sock = socket.create_server((host, port), reuse_port=False)
    except OSError as exc:
        reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
        raise Failure(EXIT_PORT, f"cannot listen on {host}:{port}: {reason}") from None
    # asyncio turns Nagle off only on sockets made with proto IPPROTO_TCP, and this one has
    # proto 0: without this, every answer waited for the client's delayed ACK (~40 ms per
    # request, 22 requests/s from one client). Accepted connections inherit the option.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _faults(error_rate: float, commit_rate: float, rate_limit: float, latency_s: float) -> FaultConfig:
    try:
        return FaultConfig(
            error_rate=error_rate,
            commit_then_fail_rate=commit_rate,
            rate_limit_per_s=rate_limit,
            latency_s=latency_s,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _token_origin(given: str | None, configured: str) -> str:
    """Where the accepted token comes from, in words; only the public default is shown as is."""
    if given:
        return "the value of --token"
    if configured:
        return "the value of INBOXPILOT_API_TOKEN"
    return f"{DEFAULT_TOKEN} (the default)"
