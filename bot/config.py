"""Settings, from the environment or a ``.env`` file, checked once at start.

A missing or contradictory setting stops the start with one line that names the variable and
says what to set (``ConfigError``), never a traceback.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

SIMULATOR_ACCESS_KEY = "simulator-access-key"
# Public, fixed keys: the built-in simulator is local and guards nothing.
SIMULATOR_SECRET_KEY = "simulator-secret-key-for-local-use-only"
# The callback tokens are an HMAC under WEBHOOK_SECRET: a short key can be guessed offline.
WEBHOOK_SECRET_MIN_CHARS = 32


ProviderName = Literal["official", "gateway", "gateway-native", "cometapi", "simulator"]
AuthScheme = Literal["jwt", "bearer"]


@dataclass(frozen=True, slots=True)
class Provider:
    """What the settings must hold to reach a provider: its address and how it signs in.

    The rest of each API flavour (paths, body shapes) is ``bot.kling.providers``' business;
    these two live here because checking the settings needs them and nothing more.
    """

    name: ProviderName
    default_base_url: str | None
    auth: AuthScheme


PROVIDERS: dict[ProviderName, Provider] = {
    "official": Provider("official", "https://api-singapore.klingai.com", "jwt"),
    "gateway": Provider("gateway", None, "bearer"),
    "gateway-native": Provider("gateway-native", None, "bearer"),
    "cometapi": Provider("cometapi", "https://api.cometapi.com", "bearer"),
    # The built-in simulator signs JWTs like Kling, on a loopback port chosen at start.
    "simulator": Provider("simulator", None, "jwt"),
}


class ConfigError(Exception):
    """A setting is missing or wrong. ``str(e)`` is one line naming the variable."""


class Settings(BaseSettings):
    # env_ignore_empty: ".env.example" leaves blanks (KLING_API_KEY=), which mean "not set",
    # in the environment and in .env alike; without it a blank number fails to parse.
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        env_ignore_empty=True,
        extra="ignore",
        validate_default=True,
    )

    # Discord
    discord_token: SecretStr | None = None
    discord_api_base: str | None = None
    discord_gateway_url: str | None = None
    # Gateway shards, to split them across several `run` processes: each runs the ones it
    # lists (all of them without a list). None: one process, Discord's recommended count.
    discord_shard_count: int | None = None
    # NoDecode: "0-1,3" is read by the validator below, not parsed as JSON.
    discord_shard_ids: Annotated[tuple[int, ...] | None, NoDecode] = None

    # Kling
    kling_provider: ProviderName = "official"
    kling_base_url: str | None = None
    kling_access_key: SecretStr | None = None
    kling_secret_key: SecretStr | None = None
    kling_api_key: SecretStr | None = None
    kling_connect_timeout: float = Field(default=10.0, gt=0)
    kling_request_timeout: float = Field(default=60.0, gt=0)
    kling_max_attempts: int = Field(default=5, ge=1, le=20)
    kling_retry_budget: float = Field(default=120.0, gt=0)
    kling_image_concurrency: int | None = Field(default=None, ge=1)
    kling_video_concurrency: int | None = Field(default=None, ge=1)
    # One of bot.kling.options.IMAGE_MODELS, checked where the Kling client is built (this
    # module sits below bot.kling and imports nothing of it); a test keeps the default equal.
    kling_image_model: str = "kling-v2"

    # Server-wide member limits (0 = none); moderators override them per guild.
    member_max_active: int = Field(default=3, ge=0)
    member_daily_limit: int = Field(default=50, ge=0)

    # Input images
    image_fit: Literal["pad", "crop"] = "pad"

    # Storage
    database_url: str = "sqlite:///./data/kling-bot.db"
    data_dir: Path = Path("./data")
    retention_days: float = Field(default=7.0, gt=0)
    # Where the prepared input images (for Again, Animate and a create after a restart) are
    # kept: in the database, so that any process on any machine can read them, or as files
    # under DATA_DIR (one machine only).
    input_storage: Literal["database", "files"] = "database"

    # Webhook listener
    # 0.0.0.0 so that the listener is reachable from outside a container.
    webhook_host: str = "0.0.0.0"
    webhook_port: int = Field(default=8080, ge=0, le=65535)
    public_base_url: str | None = None
    webhook_secret: SecretStr | None = None
    callback_confirm: bool = True
    webhook_max_body: int = Field(default=256 * 1024, ge=1024)

    # Several processes: work claimed by a process that stopped beating is taken over after
    # this many seconds.
    lease_timeout: float = 30.0

    # Poller
    poll_first_delay: float = Field(default=5.0, gt=0)
    poll_max_interval: float = Field(default=60.0, gt=0)
    poll_interval_with_callbacks: float = Field(default=120.0, gt=0)
    poll_concurrency: int = Field(default=8, ge=1)
    task_max_age: float = Field(default=3 * 3600.0, gt=0)

    # Results
    download_max_bytes: int = Field(default=200 * 1024 * 1024, ge=1024)
    download_timeout: float = Field(default=120.0, gt=0)

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("discord_shard_count", mode="before")
    @classmethod
    def _shard_count(cls, value: object) -> object:
        if value is None:
            return None
        count = _whole_number(value)
        if count is None or count < 1:
            raise ValueError(f"must be a whole number of 1 or more, e.g. 2 (got {value!r})")
        return count

    @field_validator("discord_shard_ids", mode="before")
    @classmethod
    def _shard_ids(cls, value: object) -> object:
        if value is None or isinstance(value, tuple | list):
            return value
        return parse_shard_ids(str(value))

    @field_validator("lease_timeout", mode="before")
    @classmethod
    def _lease_seconds(cls, value: object) -> object:
        try:
            seconds = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            seconds = 0.0
        if not 0 < seconds < math.inf:
            raise ValueError(f"must be a number of seconds above 0, e.g. 30 (got {value!r})")
        return seconds

    @field_validator("kling_base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            # The value itself is not echoed: a URL can carry a password.
            raise ValueError(
                "must be a full URL starting with https:// (or http:// for a local server), "
                "e.g. https://api-singapore.klingai.com"
            )
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _long_secret(cls, value: SecretStr | None) -> SecretStr | None:
        length = len(value.get_secret_value().strip()) if value is not None else 0
        if 0 < length < WEBHOOK_SECRET_MIN_CHARS:
            # The length, never the value: this line goes to the terminal and the log.
            raise ValueError(
                f"must be at least {WEBHOOK_SECRET_MIN_CHARS} characters long (it has {length}):"
                " set it to a long random string, e.g. the output of `openssl rand -hex 32`"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.public_base_url and not self.webhook_secret:
            raise ValueError(
                "PUBLIC_BASE_URL is set but WEBHOOK_SECRET is not: set WEBHOOK_SECRET to a long "
                "random string (it signs the per-task callback URLs)"
            )
        if self.public_base_url and not self.public_base_url.startswith(("http://", "https://")):
            raise ValueError("PUBLIC_BASE_URL must start with https:// (or http:// for testing)")
        self._check_shards()
        return self

    def _check_shards(self) -> None:
        ids, count = self.discord_shard_ids, self.discord_shard_count
        if ids is None:
            return
        if count is None:
            raise ValueError(
                f"DISCORD_SHARD_IDS={_shard_list(ids)} is set but DISCORD_SHARD_COUNT is not: "
                "set DISCORD_SHARD_COUNT to the number of shards of all processes together "
                "(e.g. 2)"
            )
        beyond = [shard for shard in ids if shard >= count]
        if beyond:
            raise ValueError(
                f"DISCORD_SHARD_IDS lists shard {beyond[0]}, which does not exist with "
                f"DISCORD_SHARD_COUNT={count} (shards are numbered 0 to {count - 1})"
            )

    @property
    def provider(self) -> Provider:
        return PROVIDERS[self.kling_provider]

    @property
    def simulated(self) -> bool:
        return self.kling_provider == "simulator"

    def kling_base(self) -> str:
        """The API base URL; raises ConfigError when it cannot be known."""
        base = self.kling_base_url or self.provider.default_base_url
        if not base:
            raise ConfigError(
                f"KLING_BASE_URL is not set: KLING_PROVIDER={self.kling_provider} has no default, "
                "set it to your gateway's address (e.g. https://gateway.example.com)"
            )
        return base.rstrip("/")

    def require_kling_credentials(self) -> None:
        """Check that the credentials the chosen flavour needs are present."""
        provider = self.provider
        if self.simulated:
            return
        if provider.auth == "jwt":
            for name, value in (
                ("KLING_ACCESS_KEY", self.kling_access_key),
                ("KLING_SECRET_KEY", self.kling_secret_key),
            ):
                if not _is_set(value):
                    raise ConfigError(
                        f"{name} is not set: KLING_PROVIDER={provider.name} needs KLING_ACCESS_KEY "
                        "and KLING_SECRET_KEY from Kling's developer console "
                        "(or set KLING_PROVIDER=simulator to try the bot without Kling)"
                    )
            if _is_set(self.kling_api_key):
                raise ConfigError(
                    "KLING_API_KEY is set but KLING_PROVIDER=official signs JWTs with "
                    "KLING_ACCESS_KEY/KLING_SECRET_KEY: unset KLING_API_KEY or set "
                    "KLING_PROVIDER to gateway, gateway-native or cometapi"
                )
        elif not _is_set(self.kling_api_key):
            raise ConfigError(
                f"KLING_API_KEY is not set: KLING_PROVIDER={provider.name} needs the API key "
                "your gateway issued"
            )
        self.kling_base()

    def require_discord_token(self) -> str:
        if self.discord_token is None or not self.discord_token.get_secret_value():
            raise ConfigError(
                "DISCORD_TOKEN is not set: create a bot in the Discord developer portal and put "
                "its token in DISCORD_TOKEN (or in .env)"
            )
        return self.discord_token.get_secret_value()

    def sqlite_path(self) -> Path:
        prefix = "sqlite:///"
        if not self.database_url.startswith(prefix):
            raise ConfigError(
                "DATABASE_URL must be sqlite:///PATH (e.g. sqlite:///./data/kling-bot.db); "
                "other databases are not supported yet"
            )
        return Path(self.database_url[len(prefix) :])


_SHARD_PART = re.compile(r"(\d+)(?:-(\d+))?")
# Far above any bot's shard count (the largest run thousands): bounds what a typo expands to.
MAX_SHARD_ID = 99_999


def parse_shard_ids(text: str) -> tuple[int, ...]:
    """``"0-1,3"`` -> ``(0, 1, 3)``: shard numbers and ranges, comma-separated, each once."""
    text = text.strip()
    shards: list[int] = []
    for part in text.split(","):
        match = _SHARD_PART.fullmatch(part.strip())
        first, last = (int(match[1]), int(match[2] or match[1])) if match else (0, -1)
        if not first <= last <= MAX_SHARD_ID:
            raise ValueError(
                f"must be shard numbers or ranges, comma-separated, e.g. 0,1 or 0-3 or 0-1,3 "
                f"(got {text!r})"
            )
        shards.extend(range(first, last + 1))
    repeated = sorted({shard for shard in shards if shards.count(shard) > 1})
    if repeated:
        raise ValueError(
            f"lists shard {repeated[0]} more than once (got {text!r}): name each shard once, "
            "e.g. 0-3"
        )
    return tuple(sorted(shards))


def _shard_list(ids: tuple[int, ...]) -> str:
    return ",".join(str(shard) for shard in ids)


def _whole_number(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    text = str(value).strip()
    return int(text) if text.lstrip("-").isdigit() else None


def _is_set(secret: SecretStr | None) -> bool:
    """Whether a secret holds a value: a blank one counts as not set."""
    return secret is not None and bool(secret.get_secret_value())


def load_settings(**overrides: object) -> Settings:
    """Read the settings, turning pydantic's report into one line naming the variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        error = exc.errors()[0]
        location = "_".join(str(part) for part in error["loc"]).upper()
        message = error["msg"].removeprefix("Value error, ")
        if location:
            raise ConfigError(f"{location}: {message}") from None
        raise ConfigError(message) from None
