from __future__ import annotations

from pathlib import Path

import pytest

from worker.config import SettingsError, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("INBOXPILOT_"):
            monkeypatch.delenv(key)


def test_defaults_are_valid() -> None:
    settings = load_settings()
    assert settings.page_size == 50
    assert settings.redis_url == ""


@pytest.mark.parametrize(
    ("env", "value", "fragment"),
    [
        ("INBOXPILOT_PAGE_SIZE", "51", "less than or equal to 50"),
        ("INBOXPILOT_POLL_INTERVAL_S", "0", "greater than or equal to 0.05"),
        ("INBOXPILOT_REDIS_URL", "http://x", "must be empty or start with"),
        ("INBOXPILOT_API_URL", "not a url", "URL"),
        ("INBOXPILOT_LOG_LEVEL", "LOUD", "DEBUG"),
    ],
)
def test_bad_values_name_the_setting(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, fragment: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert env in str(info.value)
    assert fragment in str(info.value)


def test_token_is_never_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INBOXPILOT_API_TOKEN", "tok-very-secret")
    settings = load_settings()
    assert "tok-very-secret" not in repr(settings)
    assert "tok-very-secret" not in str(settings.public_dict())
    assert settings.api_token.get_secret_value() == "tok-very-secret"


def test_config_file_and_env_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "inboxpilot.toml"
    config.write_text("page_size = 20\npoll_interval_s = 5\n")
    monkeypatch.setenv("INBOXPILOT_CONFIG", str(config))
    monkeypatch.setenv("INBOXPILOT_POLL_INTERVAL_S", "3")
    settings = load_settings()
    assert settings.page_size == 20
    assert settings.poll_interval_s == 3


def test_missing_config_file_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INBOXPILOT_CONFIG", "/nonexistent/inboxpilot.toml")
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings()
