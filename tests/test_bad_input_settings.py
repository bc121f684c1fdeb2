"""Bad settings: each wrong value gives one clear line at start and a non-zero exit.

Run through the CLI (`inboxpilot config` and `inboxpilot run`, both load settings
first), never a traceback, never the token.
"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from worker.cli import app
from worker.config import ENV_PREFIX

# One wrong value per setting, with a word the error line must contain.
BAD_VALUES: dict[str, tuple[str, str]] = {
    "API_URL": ("not a url", "URL"),
    "ORGANIZATION_ID": ("0", "greater than or equal to 1"),
    "REDIS_URL": ("http://localhost:6379", "must be empty or start with"),
    "BROKER_URL": ("kafka://x", "must be empty or start with"),
    "POLL_INTERVAL_S": ("-1", "greater than 0"),
    "RESYNC_INTERVAL_S": ("soon", "valid number"),
    "TIMER_PUMP_INTERVAL_S": ("0", "greater than 0"),
    "PAGE_SIZE": ("500", "less than or equal to 50"),
    "RATE_LIMIT_PER_S": ("0", "greater than 0"),
    "RATE_BURST": ("0", "greater than or equal to 1"),
    "HTTP_TIMEOUT_S": ("1e9", "less than or equal to"),
    "HTTP_CONNECT_TIMEOUT_S": ("abc", "valid number"),
    "READ_RETRIES": ("-2", "greater than or equal to 0"),
    "LEDGER_TTL_S": ("60", "greater than or equal to 3600"),
    "REDRIVE_AFTER_S": ("0", "greater than 0"),
    "LEASE_TTL_S": ("0.1", "greater than or equal to 1"),
    "LOG_LEVEL": ("LOUD", "DEBUG"),
    "LOG_FORMAT": ("xml", "json"),
    "METRICS_PORT": ("70000", "less than or equal to 65535"),
    "POLL_INTERVAL": ("5", "did you mean INBOXPILOT_POLL_INTERVAL_S?"),
}
SECRET = "tok-never-print-me-4242"


def invoke(*args: str, **env: str) -> tuple[int, list[str]]:
    runner = CliRunner()
    full_env = {f"{ENV_PREFIX}API_TOKEN": SECRET, **{ENV_PREFIX + k: v for k, v in env.items()}}
    result = runner.invoke(app, list(args), env=full_env)
    return result.exit_code, [line for line in result.output.splitlines() if line.strip()]


@pytest.mark.parametrize("command", [["config"], ["run", "--role", "scheduler"]], ids=["config", "run"])
@pytest.mark.parametrize("name", sorted(BAD_VALUES))
def test_each_wrong_value_is_one_clear_line_and_exit_2(name: str, command: list[str]) -> None:
    value, expected = BAD_VALUES[name]
    code, lines = invoke(*command, **{name: value})
    assert code == 2, lines
    assert len(lines) == 1, lines
    (line,) = lines
    assert line.startswith(f"inboxpilot: setting {ENV_PREFIX}"), line
    assert name in line and expected in line, line
    assert "Traceback" not in line and SECRET not in line


def test_two_wrong_values_are_two_lines() -> None:
    code, lines = invoke("config", PAGE_SIZE="0", LOG_LEVEL="LOUD")
    assert code == 2
    assert len(lines) == 2
    assert any("PAGE_SIZE" in line for line in lines) and any("LOG_LEVEL" in line for line in lines)


def test_a_missing_config_file_is_one_line(tmp_path: object) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["config"], env={"INBOXPILOT_CONFIG": "/nonexistent/inboxpilot.toml"})
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "does not exist" in lines[0]
