"""What a ``sqlite:///`` DATABASE_URL names."""

from __future__ import annotations

from pathlib import Path

from bot.config import ConfigError

SQLITE_PREFIX = "sqlite:///"


def sqlite_path(database_url: str) -> Path:
    """The file a ``sqlite:///PATH`` URL names (``:memory:`` for an in-memory database)."""
    path = database_url[len(SQLITE_PREFIX) :] if database_url.startswith(SQLITE_PREFIX) else ""
    if not path:
        raise ConfigError(
            "DATABASE_URL must be sqlite:///PATH (e.g. sqlite:///./data/kling-bot.db)"
        )
    return Path(path)
