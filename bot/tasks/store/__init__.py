"""Where tasks and server settings are kept: the store Protocols and their implementations.

``open_store(DATABASE_URL)`` picks the implementation by the URL's scheme and returns the
``Stores`` (not opened yet: ``await stores.open()``, or ``async with``). Only SQLite exists so
far (``sqlite:///PATH``, ``sqlite:///:memory:``); PostgreSQL comes next, behind the same
Protocols and the same contract tests.

The package: ``protocols`` (what callers may use); for SQLite, ``sqlite`` (the connection and
its lifecycle), ``sqlite_tasks``, ``sqlite_queries`` and ``sqlite_claims`` (the task store: one
row, many rows, coordination), ``settings`` (server settings), ``codec`` (rows and records),
``idmark`` (ids never handed out twice), ``schema`` and ``migrations/`` (numbered SQL files).
No code outside this package opens the database file.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from bot.config import ConfigError
from bot.tasks.store.codec import COLUMNS, MAX_PARAM_CHARS
from bot.tasks.store.idmark import ID_BLOCK, id_mark_path
from bot.tasks.store.protocols import (
    DatabaseFileChanged,
    DuplicateTaskError,
    GuildSettingsStore,
    TaskReader,
    TaskStore,
)
from bot.tasks.store.schema import MIGRATIONS
from bot.tasks.store.settings import SqliteGuildSettingsStore
from bot.tasks.store.snapshot import task_rows
from bot.tasks.store.sqlite import BUSY_TIMEOUT_MS, WAL_AUTOCHECKPOINT_PAGES
from bot.tasks.store.sqlite_tasks import SqliteTaskStore
from bot.tasks.store.urls import SQLITE_PREFIX, sqlite_path

__all__ = [
    "BUSY_TIMEOUT_MS",
    "COLUMNS",
    "ID_BLOCK",
    "MAX_PARAM_CHARS",
    "MIGRATIONS",
    "WAL_AUTOCHECKPOINT_PAGES",
    "DatabaseFileChanged",
    "DuplicateTaskError",
    "GuildSettingsStore",
    "SqliteGuildSettingsStore",
    "SqliteTaskStore",
    "Stores",
    "TaskReader",
    "TaskStore",
    "id_mark_path",
    "open_store",
    "sqlite_path",
    "task_rows",
]

_POSTGRES_SCHEMES = ("postgresql://", "postgres://")


@dataclass
class Stores:
    """The stores of one database. The task store holds the connection (or pool) the others
    share, so opening, closing and pinging it does it for all."""

    tasks: TaskStore
    guild_settings: GuildSettingsStore

    async def open(self) -> None:
        await self.tasks.open()

    async def close(self) -> None:
        await self.tasks.close()

    async def ping(self) -> bool:
        return await self.tasks.ping()

    async def __aenter__(self) -> Stores:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def open_store(database_url: str, *, clock: Callable[[], float] = time.time) -> Stores:
    """The stores ``database_url`` names, chosen by its scheme; not opened yet."""
    if database_url.startswith(_POSTGRES_SCHEMES):
        # The URL is not repeated: it may hold a password.
        raise ConfigError(
            "DATABASE_URL names a PostgreSQL database, which the bot cannot use yet; "
            "use sqlite:///PATH (e.g. sqlite:///./data/kling-bot.db)"
        )
    if not database_url.startswith(SQLITE_PREFIX):
        scheme = database_url.partition("://")[0] if "://" in database_url else database_url[:20]
        raise ConfigError(
            f"DATABASE_URL must be sqlite:///PATH (e.g. sqlite:///./data/kling-bot.db), "
            f"not {scheme!r}..."
        )
    tasks = SqliteTaskStore(sqlite_path(database_url), clock=clock)
    return Stores(tasks=tasks, guild_settings=SqliteGuildSettingsStore(tasks))
