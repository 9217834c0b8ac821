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

import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from bot.config import ConfigError
from bot.tasks.store import sqlite
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
from bot.tasks.store.sqlite import BUSY_TIMEOUT_MS, WAL_AUTOCHECKPOINT_PAGES
from bot.tasks.store.sqlite_tasks import SqliteTaskStore

if TYPE_CHECKING:
    from bot.config import Settings

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
]

_SQLITE_PREFIX = "sqlite:///"
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


def sqlite_path(database_url: str) -> Path:
    """The file a ``sqlite:///PATH`` URL names (``:memory:`` for an in-memory database)."""
    path = database_url[len(_SQLITE_PREFIX) :] if database_url.startswith(_SQLITE_PREFIX) else ""
    if not path:
        raise ConfigError(
            "DATABASE_URL must be sqlite:///PATH (e.g. sqlite:///./data/kling-bot.db)"
        )
    return Path(path)


@overload
def open_store(database_url: str, *, clock: Callable[[], float] = ...) -> Stores: ...
@overload
def open_store(database_url: Settings, *, clock: Callable[[], float] = ...) -> SqliteTaskStore: ...


def open_store(
    database_url: str | Settings, *, clock: Callable[[], float] = time.time
) -> Stores | SqliteTaskStore:
    """The stores ``database_url`` names, chosen by its scheme; not opened yet.

    Transition: given ``Settings`` (the old call form) it returns the task store alone, as
    before; remove that form once every caller passes ``settings.database_url``.
    """
    if not isinstance(database_url, str):
        return SqliteTaskStore(sqlite_path(database_url.database_url), clock=clock)
    if database_url.startswith(_POSTGRES_SCHEMES):
        # The URL is not repeated: it may hold a password.
        raise ConfigError(
            "DATABASE_URL names a PostgreSQL database, which the bot cannot use yet; "
            "use sqlite:///PATH (e.g. sqlite:///./data/kling-bot.db)"
        )
    if not database_url.startswith(_SQLITE_PREFIX):
        scheme = database_url.partition("://")[0] if "://" in database_url else database_url[:20]
        raise ConfigError(
            f"DATABASE_URL must be sqlite:///PATH (e.g. sqlite:///./data/kling-bot.db), "
            f"not {scheme!r}..."
        )
    tasks = SqliteTaskStore(sqlite_path(database_url), clock=clock)
    return Stores(tasks=tasks, guild_settings=SqliteGuildSettingsStore(tasks))


# --- transition: a test that tunes the busy timeout on the package keeps working -------------


# tests/unit/tasks/test_lost_creates_and_store_errors.py sets ``bot.tasks.store.BUSY_TIMEOUT_MS``;
# the value is read in ``sqlite``, so setting it here sets it there too. Remove once that test
# patches ``bot.tasks.store.sqlite.BUSY_TIMEOUT_MS``.
class _ForwardingModule(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        if name == "BUSY_TIMEOUT_MS":
            sqlite.BUSY_TIMEOUT_MS = value
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _ForwardingModule
