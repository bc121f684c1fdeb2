"""Settings: environment variables `INBOXPILOT_*`, optionally a TOML file.

One `Settings` object is built at start-up and passed down; nothing else reads
the environment. A wrong value fails at start with a message that names the
setting and what is allowed (`SettingsError`).
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    AnyHttpUrl,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

ENV_PREFIX = "INBOXPILOT_"
CONFIG_FILE_ENV = "INBOXPILOT_CONFIG"
MAX_PAGE_SIZE = 50  # the API contract: every find uses $limit <= 50


class SettingsError(Exception):
    """A setting is missing or invalid; the message is one line per problem."""


class Settings(BaseSettings):
    """Everything the worker can be told at start-up."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        validate_default=True,
    )

    api_url: AnyHttpUrl = Field(
        default=AnyHttpUrl("http://127.0.0.1:8080"),
        description="Base URL of the Conversations API.",
    )
    api_token: SecretStr = Field(
        default=SecretStr(""),
        description="Bearer token for the API (secret: never printed or logged).",
    )
    organization_id: int = Field(default=1, ge=1, description="Organization the token acts for.")
    redis_url: str = Field(
        default="",
        description="Redis for the ledger, locks, timers and broker; empty = embedded in-process Redis.",
    )
    broker_url: str = Field(
        default="",
        description="dramatiq broker (redis:// or amqp://); empty = the Redis above.",
    )
    poll_interval_s: float = Field(default=2.0, gt=0, le=3600, description="Incremental poll period.")
    resync_interval_s: float = Field(default=600.0, gt=0, description="Full resync period.")
    timer_pump_interval_s: float = Field(default=1.0, gt=0, le=60, description="Due-timer pump period.")
    page_size: int = Field(default=50, ge=1, le=MAX_PAGE_SIZE, description="$limit per find (<= 50).")
    rules_path: Path = Field(default=Path("rules"), description="Rule file or folder.")
    rate_limit_per_s: float = Field(default=20.0, gt=0, description="Client requests per second.")
    rate_burst: int = Field(default=20, ge=1, description="Token-bucket burst size.")
    http_timeout_s: float = Field(default=10.0, gt=0, le=300, description="Per-request timeout.")
    http_connect_timeout_s: float = Field(default=5.0, gt=0, le=60, description="Connect timeout.")
    read_retries: int = Field(default=4, ge=0, le=20, description="Retries for reads on 5xx/timeouts.")
    ledger_ttl_s: int = Field(
        default=30 * 24 * 3600, ge=3600, description="How long firing keys are remembered."
    )
    redrive_after_s: float = Field(
        default=180.0,
        gt=0,
        le=86400,
        description="A claim not finished this long after its last attempt is re-enqueued by the ledger.",
    )
    lease_ttl_s: float = Field(
        default=10.0, ge=1, le=600, description="Scheduler leader lease; a standby takes over within it."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Log level of the worker and its libraries (httpx at WARNING at least)."
    )
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto", description="auto = console on a terminal, JSON otherwise."
    )
    metrics_port: int = Field(default=0, ge=0, le=65535, description="0 = no metrics server.")

    @field_validator("redis_url", "broker_url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        allowed = ("redis://", "rediss://", "unix://", "amqp://", "amqps://")
        if value and not value.startswith(allowed):
            raise ValueError(f"must be empty or start with one of {', '.join(allowed)}")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Precedence: explicit arguments, then env vars, then the TOML file.
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get(CONFIG_FILE_ENV)
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file)))
        return tuple(sources)

    def public_dict(self) -> dict[str, Any]:
        """Settings safe to print: the token is masked."""
        data = self.model_dump(mode="json")
        data["api_token"] = "**********" if self.api_token.get_secret_value() else ""
        return data


def load_settings(**overrides: Any) -> Settings:
    """Build settings, turning validation errors into a readable `SettingsError`."""
    config_file = os.environ.get(CONFIG_FILE_ENV)
    if config_file and not Path(config_file).is_file():
        raise SettingsError(f"{CONFIG_FILE_ENV}: file {config_file!r} does not exist")
    unknown = _unknown_env()
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError("\n".join([_describe(exc), *unknown])) from None
    if unknown:
        raise SettingsError("\n".join(unknown))
    return settings


def _unknown_env() -> list[str]:
    """`INBOXPILOT_*` variables that name no setting: a typo would otherwise be ignored silently."""
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields} | {CONFIG_FILE_ENV}
    lines = []
    for name in sorted(os.environ):
        upper = name.upper()
        if upper.startswith(ENV_PREFIX) and upper not in known:
            close = difflib.get_close_matches(upper, sorted(known), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            lines.append(f"setting {name}: unknown setting{hint}")
    return lines


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        field = ".".join(str(part) for part in error["loc"]) or "settings"
        env_name = f"{ENV_PREFIX}{field.upper()}"
        lines.append(f"setting {env_name}: {error['msg']}")
    return "\n".join(lines)
