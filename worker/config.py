"""Settings: environment variables `INBOXPILOT_*`, optionally a TOML file.

One `Settings` object is built at start-up and passed down; nothing else reads
the environment. A wrong value fails at start with a message that names the
setting and what is allowed (`SettingsError`).
"""

from __future__ import annotations

import difflib
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    AnyHttpUrl,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from worker.redact import mask_url

ENV_PREFIX = "INBOXPILOT_"
CONFIG_FILE_ENV = "INBOXPILOT_CONFIG"
DEFAULT_ACTOR_TIME_LIMIT_S = 60.0
MAX_PAGE_SIZE = 50  # the API contract: every find uses $limit <= 50
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# Where a value came from, as `inboxpilot config` reports it.
SOURCES = ("default", "file", "environment", "argument")


class SettingsError(Exception):
    """A setting is missing or invalid; the message is one line per problem."""


class Settings(BaseSettings):
    """Everything the worker can be told at start-up."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        validate_default=True,
        # `inf` and `nan` parse as floats but crash timers and token buckets later.
        allow_inf_nan=False,
    )
    _sources: dict[str, str] = PrivateAttr(default_factory=dict)

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
    poll_interval_s: float = Field(default=2.0, ge=0.05, le=3600, description="Incremental poll period.")
    resync_interval_s: float = Field(default=600.0, ge=1, le=7 * 86400, description="Full resync period.")
    timer_pump_interval_s: float = Field(default=1.0, ge=0.05, le=60, description="Due-timer pump period.")
    page_size: int = Field(default=50, ge=1, le=MAX_PAGE_SIZE, description="$limit per find (<= 50).")
    actor_time_limit_s: float = Field(
        default=DEFAULT_ACTOR_TIME_LIMIT_S,
        ge=1,
        le=3600,
        description="One actor attempt is interrupted (and retried) after this long.",
    )
    poll_max_pages: int = Field(
        default=200,
        ge=1,
        le=100_000,
        description="Pages one incremental poll reads at most; the rest waits for the next poll.",
    )
    poll_max_tick_s: float = Field(
        default=60.0,
        ge=1,
        le=3600,
        description="Seconds one incremental poll pages at most; it ends at a page boundary.",
    )
    resync_max_pages: int = Field(
        default=100_000,
        ge=1,
        le=10_000_000,
        description=(
            "Pages one resync run reads at most (it also stops at 90% of the resync interval); "
            "the next run resumes after the last conversation read."
        ),
    )
    rules_path: Path = Field(default=Path("rules"), description="Rule file or folder.")
    rate_limit_per_s: float = Field(
        default=20.0, ge=0.01, le=1_000_000, description="Client requests per second."
    )
    rate_burst: int = Field(default=20, ge=1, le=1_000_000, description="Token-bucket burst size.")
    http_timeout_s: float = Field(
        default=10.0,
        ge=0.1,
        le=300,
        description="Timeout per read; a whole answer gets this plus the connect timeout.",
    )
    http_connect_timeout_s: float = Field(default=5.0, ge=0.1, le=60, description="Connect timeout.")
    read_retries: int = Field(default=4, ge=0, le=20, description="Retries for reads on 5xx/timeouts.")
    ledger_ttl_s: int = Field(
        default=30 * 24 * 3600,
        ge=3600,
        le=10 * 365 * 86400,
        description="How long firing keys are remembered.",
    )
    redrive_after_s: float = Field(
        default=180.0,
        ge=1,
        le=86400,
        description="A claim not finished this long after its last attempt is re-enqueued by the ledger.",
    )
    breaker_max_firings: int = Field(
        default=8,
        ge=1,
        le=1000,
        description="Loop breaker: more firings than this on one conversation within "
        "breaker_window_s pauses automation on it.",
    )
    breaker_window_s: float = Field(default=600.0, ge=1, le=86400, description="Loop breaker: the window.")
    breaker_pause_s: float = Field(
        default=3600.0, ge=1, le=7 * 86400, description="Loop breaker: how long automation stays paused."
    )
    lease_ttl_s: float = Field(
        default=10.0, ge=1, le=600, description="Scheduler leader lease; a standby takes over within it."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO",
        description="Log level of the worker and its libraries (any case; httpx at WARNING at least).",
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

    @field_validator("api_url")
    @classmethod
    def _no_credentials(cls, value: AnyHttpUrl) -> AnyHttpUrl:
        # httpx would turn user:password@ into Basic auth and silently drop the bearer token.
        if value.username or value.password:
            raise ValueError(
                f"must not carry credentials (user:password@); put the token in {ENV_PREFIX}API_TOKEN"
            )
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _any_case(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

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
        path, data = read_config_file()
        if path is not None:
            known = {k: v for k, v in data.items() if k in settings_cls.model_fields}
            sources.append(InitSettingsSource(settings_cls, init_kwargs=known))
        return tuple(sources)

    @property
    def sources(self) -> dict[str, str]:
        """Where each value came from: default, file, environment or argument."""
        return {name: self._sources.get(name, "default") for name in type(self).model_fields}

    def public_dict(self) -> dict[str, Any]:
        """Settings safe to print: the token masked, credentials in URLs masked."""
        data = self.model_dump(mode="json")
        data["api_token"] = "**********" if self.api_token.get_secret_value() else ""
        for name in ("api_url", "redis_url", "broker_url"):
            data[name] = mask_url(data[name])
        return data


def read_config_file() -> tuple[Path | None, dict[str, Any]]:
    """The TOML file named by INBOXPILOT_CONFIG, parsed; a missing or invalid file is one line."""
    name = os.environ.get(CONFIG_FILE_ENV)
    if not name:
        return None, {}
    path = Path(name)
    try:
        with path.open("rb") as handle:
            return path, tomllib.load(handle)
    except FileNotFoundError:
        raise SettingsError(f"{CONFIG_FILE_ENV}: file {name!r} does not exist") from None
    except OSError as exc:
        raise SettingsError(f"{CONFIG_FILE_ENV}: cannot read {name!r}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{CONFIG_FILE_ENV}: {name}: invalid TOML: {exc}") from None


def load_settings(**overrides: Any) -> Settings:
    """Build settings, turning validation errors into a readable `SettingsError`."""
    path, data = read_config_file()
    where = _Where(path, data, overrides)
    unknown = [*_unknown_env(), *_unknown_toml(path, data)]
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError("\n".join([*_describe(exc, where), *unknown])) from None
    if unknown:
        raise SettingsError("\n".join(unknown))
    settings._sources = {name: where.source(name) for name in Settings.model_fields}
    return settings


class _Where:
    """Which source gave each setting, and the name the user wrote it under."""

    def __init__(self, path: Path | None, data: dict[str, Any], overrides: dict[str, Any]) -> None:
        self.path = path
        self.data = data
        self.overrides = overrides
        self.env = {k.upper(): k for k in os.environ if k.upper().startswith(ENV_PREFIX)}

    def source(self, field: str) -> str:
        if field in self.overrides:
            return "argument"
        if ENV_PREFIX + field.upper() in self.env:
            return "environment"
        return "file" if field in self.data else "default"

    def name(self, field: str) -> str:
        source = self.source(field)
        if source == "environment":
            return self.env[ENV_PREFIX + field.upper()]
        if source == "file":
            return f"{field} in {self.path}"
        if source == "argument":
            return field
        return f"{ENV_PREFIX}{field.upper()}"


def _unknown_env() -> list[str]:
    """`INBOXPILOT_*` variables that name no setting: a typo would otherwise be ignored silently."""
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields} | {CONFIG_FILE_ENV}
    lines = []
    for name in sorted(os.environ):
        upper = name.upper()
        if upper.startswith(ENV_PREFIX) and upper not in known:
            lines.append(f"setting {name}: unknown setting{_hint(upper, known)}")
    return lines


def _unknown_toml(path: Path | None, data: dict[str, Any]) -> list[str]:
    """Keys of the TOML file that name no setting (TOML keys are the lower-case field names)."""
    known = set(Settings.model_fields)
    return [
        f"setting {key} in {path}: unknown setting{_hint(key, known)}"
        for key in sorted(data)
        if key not in known
    ]


def _hint(name: str, known: set[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1)
    if not close and name.lower() in known:
        close = [name.lower()]
    return f" (did you mean {close[0]}?)" if close else ""


def _describe(exc: ValidationError, where: _Where) -> list[str]:
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        field = str(error["loc"][0]) if error["loc"] else "settings"
        if error["type"] == "extra_forbidden":
            continue  # reported by _unknown_env / _unknown_toml, with a hint
        name = where.name(field) if field in Settings.model_fields else field
        lines.append(f"setting {name}: {_message(error)}")
    return lines


def _message(error: Any) -> str:
    msg = str(error["msg"])
    # pydantic prefixes errors raised by our own validators with "Value error, ".
    return msg.removeprefix("Value error, ")
