"""Issue 13.9: credentials in URLs are masked wherever a URL is shown -- `inboxpilot config`
(text and --json), log lines, error messages, `/readyz` -- and `inboxpilot sandbox` never
echoes the token it was given."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys

import httpx
import pytest
from typer.testing import CliRunner

from tests.test_readme import ROOT, clean_env, free_port, wait_until
from worker.cli import app
from worker.health import HealthServer
from worker.logs import configure_logging, get_logger
from worker.redact import has_credentials, mask_url, url_secrets

PASSWORD = "pw-Very-Secret-9182"
URLS = {
    "INBOXPILOT_REDIS_URL": f"redis://:{PASSWORD}@127.0.0.1:6379/3",
    "INBOXPILOT_BROKER_URL": f"amqp://guest:{PASSWORD}@127.0.0.1:5672/vhost",
    "INBOXPILOT_API_URL": f"https://api.example/v1?token={PASSWORD}",
}


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        (f"redis://:{PASSWORD}@h:6379/0", "redis://:***@h:6379/0"),
        (f"rediss://default:{PASSWORD}@h:6380", "rediss://default:***@h:6380"),
        (f"amqp://guest:{PASSWORD}@h/", "amqp://guest:***@h/"),
        (f"http://user:{PASSWORD}@h/x", "http://user:***@h/x"),
        (f"http://user:p@ss{PASSWORD}@h/x", "http://user:***@h/x"),  # '@' inside the password
        (f"https://h/x?a=1&token={PASSWORD}&b=2", "https://h/x?a=1&token=***&b=2"),
        (f"https://h/x?API_KEY={PASSWORD}", "https://h/x?API_KEY=***"),
        ("http://127.0.0.1:8080/conversations", "http://127.0.0.1:8080/conversations"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked
    assert mask_url(f"error talking to {url} now") == f"error talking to {masked} now"
    assert has_credentials(url) is (url != masked)


def test_url_secrets_are_the_password_and_credential_params() -> None:
    assert url_secrets(f"redis://:{PASSWORD}@h/0") == [PASSWORD]
    assert url_secrets(f"https://h/?token={PASSWORD}&page=2") == [PASSWORD]
    assert url_secrets("redis://h:6379/0") == []


def config_output(*args: str) -> str:
    result = CliRunner().invoke(app, ["config", *args], env=URLS)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("args", [[], ["--json"]], ids=["text", "json"])
def test_config_masks_every_url_credential(args: list[str]) -> None:
    out = config_output(*args)
    assert PASSWORD not in out
    for masked in ("redis://:***@127.0.0.1:6379/3", "amqp://guest:***@127.0.0.1:5672/vhost", "token=***"):
        assert masked in out, out


def test_log_lines_and_logged_errors_mask_url_credentials() -> None:
    stream = io.StringIO()
    configure_logging("DEBUG", "json", stream=stream)  # no secrets registered: the URL form alone
    log = get_logger("t")
    log.info("broker_connecting", url=URLS["INBOXPILOT_BROKER_URL"])
    try:
        raise ConnectionError(f"cannot reach {URLS['INBOXPILOT_REDIS_URL']}")
    except ConnectionError:
        log.exception("redis_down", where=[URLS["INBOXPILOT_API_URL"]])
    text = stream.getvalue()
    assert "broker_connecting" in text and "redis_down" in text
    assert PASSWORD not in text


def test_readyz_masks_url_credentials_in_check_details() -> None:
    server = HealthServer(host="127.0.0.1", port=0)
    server.add_check("redis", lambda: (False, f"Error connecting to {URLS['INBOXPILOT_REDIS_URL']}"))
    server.start()
    try:
        answer = httpx.get(f"http://127.0.0.1:{server.port}/readyz")
    finally:
        server.stop()
    assert answer.status_code == 503
    assert PASSWORD not in answer.text
    assert "redis://:***@127.0.0.1" in json.loads(answer.text)["checks"]["redis"]


def test_sandbox_does_not_echo_the_token_it_was_given() -> None:
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "worker",
        "sandbox",
        "--port",
        str(port),
        "--seed",
        "3",
        "--token",
        PASSWORD,
    ]
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        headers = {"Authorization": f"Bearer {PASSWORD}"}
        wait_until(
            lambda: httpx.get(f"http://127.0.0.1:{port}/conversations", headers=headers).status_code == 200,
            "sandbox",
        )
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    assert "the value of --token" in out, out
    assert PASSWORD not in out + err
