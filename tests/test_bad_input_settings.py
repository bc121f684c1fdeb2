"""Bad settings: each wrong value gives one clear line at start and a non-zero exit.

Run through the CLI (`inboxpilot config` and `inboxpilot run`, both load settings
first), never a traceback, never the token.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from worker.cli import app
from worker.config import ENV_PREFIX

# One wrong value per setting, with a word the error line must contain.
BAD_VALUES: dict[str, tuple[str, str]] = {
    "API_URL": ("http://user:pw@api.example", "must not carry credentials"),
    "ORGANIZATION_ID": ("0", "greater than or equal to 1"),
    "REDIS_URL": ("http://localhost:6379", "must be empty or start with"),
    "BROKER_URL": ("kafka://x", "must be empty or start with"),
    "POLL_INTERVAL_S": ("-1", "greater than or equal to 0.05"),
    "RESYNC_INTERVAL_S": ("inf", "finite number"),
    "TIMER_PUMP_INTERVAL_S": ("0", "greater than or equal to 0.05"),
    "PAGE_SIZE": ("500", "less than or equal to 50"),
    "RATE_LIMIT_PER_S": ("1e-300", "greater than or equal to 0.01"),
    "RATE_BURST": ("0", "greater than or equal to 1"),
    "HTTP_TIMEOUT_S": ("1e9", "less than or equal to"),
    "HTTP_CONNECT_TIMEOUT_S": ("abc", "valid number"),
    "READ_RETRIES": ("-2", "greater than or equal to 0"),
    "LEDGER_TTL_S": ("60", "greater than or equal to 3600"),
    "REDRIVE_AFTER_S": ("0", "greater than or equal to 1"),
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


# Values that parse but would crash or stall the worker later: each one line, exit 2.
MORE_BAD_VALUES: list[tuple[str, str, str]] = [
    ("API_URL", "not a url", "URL"),
    ("RESYNC_INTERVAL_S", "soon", "valid number"),
    ("RESYNC_INTERVAL_S", "1e300", "less than or equal to"),
    ("POLL_INTERVAL_S", "nan", "finite number"),
    ("HTTP_TIMEOUT_S", "-inf", "finite number"),
    ("RATE_LIMIT_PER_S", "inf", "finite number"),
    ("RATE_LIMIT_PER_S", "0", "greater than or equal to 0.01"),
    ("LEDGER_TTL_S", "99999999999999999999", "less than or equal to"),
]


@pytest.mark.parametrize(("name", "value", "expected"), MORE_BAD_VALUES)
def test_values_that_would_crash_later_are_refused_at_start(name: str, value: str, expected: str) -> None:
    code, lines = invoke("config", **{name: value})
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"inboxpilot: setting {ENV_PREFIX}{name}:") and expected in lines[0], lines


def test_log_level_is_case_insensitive() -> None:
    code, lines = invoke("config", "--json", LOG_LEVEL="debug")
    assert code == 0, lines
    assert '"DEBUG"' in "\n".join(lines)


def config_file(tmp_path: Path, text: str) -> dict[str, str]:
    path = tmp_path / "inboxpilot.toml"
    path.write_text(text)
    return {"INBOXPILOT_CONFIG": str(path)}


def run_config(env: dict[str, str]) -> tuple[int, list[str]]:
    result = CliRunner().invoke(app, ["config"], env={f"{ENV_PREFIX}API_TOKEN": SECRET, **env})
    return result.exit_code, [line for line in result.output.splitlines() if line.strip()]


@pytest.mark.parametrize(
    "text",
    ["poll_interval_s = \n", "[worker\n", "page_size = 5\npage_size = 6\n", "x = 'unterminated\n"],
    ids=["no-value", "open-table", "duplicate-key", "open-string"],
)
def test_invalid_toml_is_one_line_and_exit_2(tmp_path: Path, text: str) -> None:
    env = config_file(tmp_path, text)
    code, lines = run_config(env)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"inboxpilot: INBOXPILOT_CONFIG: {env['INBOXPILOT_CONFIG']}: invalid TOML:")
    assert "line" in lines[0] and "Traceback" not in lines[0]


def test_toml_problems_name_the_key_as_written_in_the_file(tmp_path: Path) -> None:
    env = config_file(
        tmp_path, "poll_intervl_s = 3\nresync_interval_s = inf\npage_size = 500\nrate_limit_per_s = 1e-300\n"
    )
    path = env["INBOXPILOT_CONFIG"]
    code, lines = run_config(env)
    assert code == 2
    assert sorted(lines) == sorted(
        [
            f"inboxpilot: setting resync_interval_s in {path}: Input should be a finite number",
            f"inboxpilot: setting page_size in {path}: Input should be less than or equal to 50",
            f"inboxpilot: setting rate_limit_per_s in {path}: Input should be greater than or equal to 0.01",
            f"inboxpilot: setting poll_intervl_s in {path}: unknown setting (did you mean poll_interval_s?)",
        ]
    ), lines
    assert not any("INBOXPILOT_POLL_INTERVL_S" in line for line in lines)


def test_an_env_value_over_a_bad_file_value_is_named_by_its_variable(tmp_path: Path) -> None:
    env = {**config_file(tmp_path, "page_size = 20\n"), f"{ENV_PREFIX}PAGE_SIZE": "0"}
    code, lines = run_config(env)
    assert code == 2 and lines == [
        f"inboxpilot: setting {ENV_PREFIX}PAGE_SIZE: Input should be greater than or equal to 1"
    ]
