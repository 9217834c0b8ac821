"""Where tasks and server settings are kept: the store Protocols and their implementations.

``open_store(DATABASE_URL)`` picks the implementation by the URL's scheme and returns the
``Stores`` (not opened yet: ``await stores.open()``, or ``async with``): SQLite for one process
(``sqlite:///PATH``, ``sqlite:///:memory:``), PostgreSQL for any number sharing one database
(``postgresql://USER:PASSWORD@HOST:PORT/DBNAME`` or ``postgres://``, query options such as
``?sslmode=require`` passed to asyncpg). Both pass the same contract suite.

The package: ``protocols`` (what callers may use); shared by both stores: ``codec`` (rows and
records), ``transitions`` (what a state change writes), ``turns`` (the fair order),
``processes`` (heartbeats), ``urls`` (what a DATABASE_URL names), ``schema`` and
``migrations/`` (numbered SQL files, PostgreSQL's in ``migrations/postgres/``). For SQLite:
``sqlite`` (the connection and its lifecycle), ``sqlite_lock`` (one process per file),
``sqlite_tasks``, ``sqlite_queries``, ``sqlite_claims`` and ``sqlite_processes`` (the task
store: one row, many rows, coordination, heartbeats), ``settings`` (server settings),
``sqlite_inputs`` (each task's input images), ``idmark`` (ids never handed out twice). For
PostgreSQL the same split: ``pg`` (the pool, migrations under an advisory lock), ``pg_tasks``,
``pg_queries``, ``pg_claims``, ``pg_processes``, ``pg_settings`` and ``pg_inputs``. Between
processes: ``signals`` (what one tells the others; LISTEN/NOTIFY in ``pg_signals``) and
``settings_cache`` (server settings kept in memory, dropped when another process changes
them). ``copy`` moves a SQLite database into PostgreSQL (``kling-bot migrate-db``);
``snapshot`` reads a running bot's rows for the suites. No code outside this package opens the
database.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from bot.config import ConfigError
from bot.tasks.store.codec import COLUMNS, MAX_PARAM_CHARS
from bot.tasks.store.idmark import ID_BLOCK, id_mark_path
from bot.tasks.store.pg import PgDatabase
from bot.tasks.store.pg_inputs import PgInputStore
from bot.tasks.store.pg_settings import PgGuildSettingsStore
from bot.tasks.store.pg_signals import PgSignals
from bot.tasks.store.pg_tasks import PgTaskStore
from bot.tasks.store.protocols import (
    DatabaseFileChanged,
    DuplicateTaskError,
    GuildSettingsStore,
    InputsNotSaved,
    InputStore,
    Signals,
    TaskReader,
    TaskStore,
)
from bot.tasks.store.schema import MIGRATIONS
from bot.tasks.store.settings import SqliteGuildSettingsStore
from bot.tasks.store.settings_cache import CachedGuildSettings
from bot.tasks.store.signals import LocalSignals
from bot.tasks.store.snapshot import task_rows
from bot.tasks.store.sqlite import BUSY_TIMEOUT_MS, WAL_AUTOCHECKPOINT_PAGES, SqliteDatabase
from bot.tasks.store.sqlite_inputs import SqliteInputStore
from bot.tasks.store.sqlite_tasks import SqliteTaskStore
from bot.tasks.store.urls import SQLITE_PREFIX, is_postgres, sqlite_path
from bot.text import t

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
    "InputStore",
    "InputsNotSaved",
    "PgGuildSettingsStore",
    "PgTaskStore",
    "Signals",
    "SqliteGuildSettingsStore",
    "SqliteTaskStore",
    "Stores",
    "TaskReader",
    "TaskStore",
    "id_mark_path",
    "input_store_for",
    "open_store",
    "sqlite_path",
    "task_rows",
]


@dataclass
class Stores:
    """The stores of one database. The task store holds the connection (or pool) the others
    share, so opening, closing and pinging it does it for all."""

    tasks: TaskStore
    guild_settings: GuildSettingsStore
    signals: Signals
    inputs: InputStore

    async def open(self) -> None:
        await self.tasks.open()
        try:
            await self.signals.open()
        except BaseException:
            await self.tasks.close()
            raise

    async def close(self) -> None:
        try:
            await self.signals.close()
        finally:
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
    if is_postgres(database_url):
        database = PgTaskStore(database_url, clock=clock)
        signals: Signals = PgSignals(database, database_url)
        settings: GuildSettingsStore = PgGuildSettingsStore(database)
        cached = CachedGuildSettings(settings, signals)
        return Stores(database, cached, signals, PgInputStore(database))
    if not database_url.startswith(SQLITE_PREFIX):
        scheme = database_url.partition("://")[0] if "://" in database_url else database_url[:20]
        raise ConfigError(t("store.url.unsupported", scheme=scheme))
    tasks = SqliteTaskStore(sqlite_path(database_url), clock=clock)
    signals = LocalSignals()
    settings = SqliteGuildSettingsStore(tasks)
    return Stores(tasks, CachedGuildSettings(settings, signals), signals, SqliteInputStore(tasks))


def input_store_for(tasks: TaskStore) -> InputStore | None:
    """The input store sharing ``tasks``' connection, for a caller given only the task store
    (the task core built without ``Stores``); None for a store of neither database."""
    if isinstance(tasks, SqliteDatabase):
        return SqliteInputStore(tasks)
    if isinstance(tasks, PgDatabase):
        return PgInputStore(tasks)
    return None
