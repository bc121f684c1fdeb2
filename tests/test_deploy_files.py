"""Static checks of the deployment files (no Docker engine needed): compose.yaml, the
Dockerfile and the Grafana dashboard refer only to real commands, options, settings,
paths and metrics."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import typer
from ruamel.yaml import YAML

from worker.cli import app, load_all
from worker.config import ENV_PREFIX, Settings, load_settings
from worker.metrics import REGISTRY, metric_names

ROOT = Path(__file__).resolve().parent.parent
RULES_IN_IMAGE = "/etc/inboxpilot/rules"


def cli() -> Any:
    """The click group typer builds (typer vendors its own click, so no isinstance check)."""
    load_all()  # commands load lazily; here every one is wanted
    group = typer.main.get_command(app)
    assert hasattr(group, "commands")
    return group


def check_command_line(argv: list[str]) -> None:
    """`argv` (without the program name) names a real command and only its real options."""
    group = cli()
    name, *rest = argv
    assert name in group.commands, f"{name!r} is not an inboxpilot command"
    command = group.commands[name]
    known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    for word in rest:
        if word.startswith("-"):
            assert word.split("=", 1)[0] in known, f"inboxpilot {name} has no option {word!r}"
    # click parses it the way the container would (types and ranges included).
    command.make_context(f"inboxpilot {name}", list(rest), resilient_parsing=False)


def check_settings_env(env: dict[str, Any]) -> None:
    ours = {k: str(v) for k, v in env.items() if k.startswith(ENV_PREFIX)}
    for key in ours:
        assert key.removeprefix(ENV_PREFIX).lower() in Settings.model_fields, f"{key} is not a setting"
    load_settings(**{k.removeprefix(ENV_PREFIX).lower(): v for k, v in ours.items()})


# --- compose.yaml ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = YAML(typ="safe").load((ROOT / "compose.yaml").read_text())
    return data


def test_compose_has_the_whole_system(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) >= {"redis", "api", "scheduler", "scheduler-standby", "worker"}
    assert services["worker"]["deploy"]["replicas"] == 2
    roles = {name: services[name]["command"] for name in ("scheduler", "scheduler-standby", "worker")}
    assert roles["scheduler"][:3] == roles["scheduler-standby"][:3] == ["run", "--role", "scheduler"]
    assert roles["worker"][:3] == ["run", "--role", "worker"]
    assert services["api"]["command"][0] == "sandbox"


def test_compose_commands_and_env_are_real(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if service.get("image", "").startswith("redis"):
            continue
        check_command_line(service["command"])
        check_settings_env(service["environment"])
        env = service["environment"]
        if service["command"][0] == "run":
            assert env["INBOXPILOT_REDIS_URL"].startswith("redis://redis:"), name
            assert env["INBOXPILOT_API_URL"] == "http://api:8080", name
            assert env["INBOXPILOT_RULES_PATH"] == RULES_IN_IMAGE
            assert any(v.endswith(f":{RULES_IN_IMAGE}:ro") for v in service["volumes"]), name


def test_compose_sandbox_serves_what_the_workers_call(compose: dict[str, Any]) -> None:
    api = compose["services"]["api"]["command"]
    port = api[api.index("--port") + 1]
    token = api[api.index("--token") + 1]
    worker_env = compose["services"]["worker"]["environment"]
    assert worker_env["INBOXPILOT_API_URL"].endswith(f":{port}")
    assert worker_env["INBOXPILOT_API_TOKEN"] == token
    assert api[api.index("--host") + 1] == "0.0.0.0"  # reachable from the other containers


# --- Dockerfile --------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]


def instructions(name: str) -> list[str]:
    return [args for inst, args in dockerfile() if inst == name]


def test_dockerfile_entrypoint_and_cmd_are_the_cli() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    (entrypoint,) = instructions("ENTRYPOINT")
    (cmd,) = instructions("CMD")
    assert json.loads(entrypoint) == ["inboxpilot"] and "inboxpilot" in scripts
    check_command_line(json.loads(cmd))
    assert json.loads(cmd) == ["run"]


def test_dockerfile_is_multi_stage_slim_and_non_root() -> None:
    stages = instructions("FROM")
    assert len(stages) >= 2 and all("-slim" in s for s in stages)
    users = instructions("USER")
    assert users and users[-1] not in ("root", "0")
    runtime_stage = dockerfile()[[i for i, (inst, _) in enumerate(dockerfile()) if inst == "FROM"][-1] :]
    assert not any(inst == "RUN" and "pip wheel" in args for inst, args in runtime_stage)
    assert any(inst == "COPY" and "--from=build /wheels" in args for inst, args in runtime_stage)


def test_dockerfile_env_paths_and_healthcheck_agree() -> None:
    env: dict[str, str] = {}
    for args in instructions("ENV"):
        for word in shlex.split(args):
            key, _, value = word.partition("=")
            env[key] = value
    check_settings_env(env)
    assert env["INBOXPILOT_RULES_PATH"] == RULES_IN_IMAGE
    assert any(args.split()[-1] == RULES_IN_IMAGE for args in instructions("COPY"))
    port = env["INBOXPILOT_METRICS_PORT"]
    assert instructions("EXPOSE") == [port]
    (health,) = instructions("HEALTHCHECK")
    assert "/readyz" in health and "INBOXPILOT_METRICS_PORT" in health and f"'{port}'" in health


def test_dockerfile_copies_only_what_exists_and_is_not_ignored() -> None:
    ignored = {ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln.strip()}
    for args in instructions("COPY"):
        if args.startswith("--from"):
            continue
        *sources, _target = args.split()
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: no such path"
            assert source not in ignored, f"COPY {source} but .dockerignore excludes it"


# --- Grafana dashboard -------------------------------------------------------------------------


def test_dashboard_uses_only_real_metrics_and_all_of_them() -> None:
    dashboard = json.loads((ROOT / "deploy" / "grafana-inboxpilot.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {name for expr in exprs for name in re.findall(r"\binboxpilot_[a-z_]+", expr)}
    assert used, "no expressions found"
    unknown = used - metric_names()
    assert not unknown, f"dashboard refers to metrics that do not exist: {sorted(unknown)}"
    families = {family.name for family in REGISTRY.collect()}
    unused = {f for f in families if not any(u.startswith(f) for u in used)}
    assert not unused, f"metrics missing from the dashboard: {sorted(unused)}"
