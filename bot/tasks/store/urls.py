"""What a DATABASE_URL names: a SQLite file (``sqlite:///PATH``) or a PostgreSQL database
(``postgresql://`` or ``postgres://``, passed to asyncpg as it is, query options included).

A PostgreSQL URL may hold a password: messages name its target (``postgres_target``) and
``redact`` removes the password from any text, never the URL itself.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from bot.config import ConfigError
from bot.text import t

SQLITE_PREFIX = "sqlite:///"
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
_POSTGRES_PORT = 5432


def sqlite_path(database_url: str) -> Path:
    """The file a ``sqlite:///PATH`` URL names (``:memory:`` for an in-memory database)."""
    path = database_url[len(SQLITE_PREFIX) :] if database_url.startswith(SQLITE_PREFIX) else ""
    if not path:
        raise ConfigError(t("store.url.sqlite_path_missing"))
    return Path(path)


def is_postgres(database_url: str) -> bool:
    return database_url.startswith(POSTGRES_SCHEMES)


def postgres_target(database_url: str) -> str:
    """``HOST:PORT/DBNAME`` of a PostgreSQL URL, for messages: no user name, no password."""
    parts = urlsplit(database_url)
    hosts = parts.netloc.rpartition("@")[2] or "localhost"
    if ":" not in hosts.rpartition("]")[2]:  # no port given ("[::1]" is a host, not a port)
        hosts += f":{_POSTGRES_PORT}"
    database = unquote(parts.path.lstrip("/")) or "(the user's database)"
    return f"{hosts}/{database}"


def redact(text: str, database_url: str) -> str:
    """``text`` without the URL's password (as written, and percent-decoded)."""
    try:
        password = urlsplit(database_url).password
    except ValueError:
        password = None
    for secret in {password, unquote(password or "")} - {None, ""}:
        text = text.replace(str(secret), "***")
    return text
