"""One PostgreSQL database through an asyncpg pool: opening, migrating, running SQL, closing.

Several processes share the database, so nothing here is held in one process's memory: every
write is one statement committed at once (asyncpg runs outside a transaction unless asked), and
the few steps that need several statements (admission) run in ``transaction()`` under an
advisory lock. ``LOCK_NAMESPACE`` is the first half of every advisory lock key the bot takes,
so its locks stay apart from another program's in the same database; the second half names
what is locked (``MIGRATION_LOCK``, ``admission_lock``).

Each process migrates at start, under ``pg_advisory_xact_lock``: several processes starting at
once apply each script exactly once (the others wait, then find it done). The versions applied
are rows of ``schema_migrations``. A server that cannot be reached at open is one
``ConfigError`` line naming ``HOST:PORT/DBNAME`` and the cause, never the password.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import time
import zlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Self, cast

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from bot.config import ConfigError
from bot.kling.models import TaskKind
from bot.tasks.models import TaskRecord
from bot.tasks.store import schema
from bot.tasks.store.codec import decode
from bot.tasks.store.urls import postgres_target, redact
from bot.text import t

log = logging.getLogger(__name__)

# Connections per process: the store's calls at one moment are a few admission steps, a poll
# batch, downloads and deliveries settling; ten covers bursts, and three processes stay well
# under PostgreSQL's default max_connections (100).
POOL_MIN_SIZE = 1
POOL_MAX_SIZE = 10
CONNECT_TIMEOUT = 10.0  # seconds to reach the server at open: the operator waits for the answer
COMMAND_TIMEOUT = 60.0  # a statement that hangs this long (a lost server) raises
PING_TIMEOUT = 2.0
CLOSE_TIMEOUT = 10.0

# 'KLNG': the bot's half of its advisory lock keys (pg_advisory_lock(int4, int4)).
LOCK_NAMESPACE = 0x4B4C4E47
MIGRATION_LOCK = 0

_VERSIONS_SQL = """
    CREATE TABLE IF NOT EXISTS schema_migrations (
        version    INTEGER PRIMARY KEY,
        applied_at DOUBLE PRECISION NOT NULL
    )
"""


def admission_lock(kind: TaskKind) -> int:
    """The advisory lock of ``kind``'s admission: a checksum of its name, so every process and
    every version of the bot computes the same number without a table of kinds."""
    return zlib.crc32(f"admit:{TaskKind(kind).value}".encode()) & 0x7FFF_FFFF


def task_record(row: asyncpg.Record) -> TaskRecord:
    """A row selected in the codec's column order as a record (a Record indexes like a tuple)."""
    return decode(cast(Sequence[Any], row))


def rows_changed(status: str) -> int:
    """The row count of a command status such as ``UPDATE 1`` or ``INSERT 0 1``."""
    last = status.rpartition(" ")[2]
    return int(last) if last.isdigit() else 0


class PgDatabase:
    """The pool and its lifecycle; the stores' SQL runs through ``fetch``/``execute``.

    ``clock`` stamps created_at/updated_at and the state timestamps; tests pass a fake one.
    """

    def __init__(self, database_url: str, *, clock: Callable[[], float] = time.time) -> None:
        self._url = database_url
        self._clock = clock
        self._pool: asyncpg.Pool | None = None
        self.target = postgres_target(database_url)  # for messages: HOST:PORT/DBNAME

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # --- lifecycle

    async def open(self) -> None:
        if self._pool is not None:
            return
        pool = await self._connect()
        try:
            async with pool.acquire() as connection:
                await migrate(connection, self.target)
        except BaseException:
            pool.terminate()
            raise
        self._pool = pool
        log.debug("task store open at PostgreSQL %s", self.target)

    async def _connect(self) -> asyncpg.Pool:
        try:
            return await asyncpg.create_pool(
                self._url,
                min_size=POOL_MIN_SIZE,
                max_size=POOL_MAX_SIZE,
                timeout=CONNECT_TIMEOUT,
                command_timeout=COMMAND_TIMEOUT,
            )
        except (
            OSError,
            TimeoutError,
            ValueError,
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
        ) as exc:
            raise ConfigError(
                t("store.postgres.unreachable", target=self.target, cause=self._cause(exc))
            ) from None  # the chained error could print the URL, password and all

    def _cause(self, exc: BaseException) -> str:
        """Why the connection failed, in a few words and without the password."""
        # Every address of the host refused: asyncio raises one OSError naming them all.
        if isinstance(exc, ConnectionRefusedError) or f"[Errno {errno.ECONNREFUSED}]" in str(exc):
            return t("store.postgres.cause.refused")
        if isinstance(exc, socket.gaierror):
            return t("store.postgres.cause.unknown_host")
        if isinstance(exc, TimeoutError):
            return t("store.postgres.cause.timeout", seconds=f"{CONNECT_TIMEOUT:g}")
        if isinstance(exc, asyncpg.InvalidPasswordError):
            return t("store.postgres.cause.password")
        text = str(exc) or type(exc).__name__
        return redact(text.splitlines()[0], self._url)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT)
        except TimeoutError:
            log.warning("PostgreSQL %s: connections still busy at close; cut", self.target)
            pool.terminate()

    async def ping(self) -> bool:
        """True while the server answers ``SELECT 1`` within ``PING_TIMEOUT`` seconds."""
        if self._pool is None:
            return False
        try:
            async with asyncio.timeout(PING_TIMEOUT):
                return await self._pool.fetchval("SELECT 1") == 1
        except Exception as exc:  # whatever broke, the store is unreachable for now
            log.debug("PostgreSQL %s: ping failed: %s", self.target, type(exc).__name__)
            return False

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("the task store is not open: await store.open() first")
        return self._pool

    def now(self) -> float:
        return self._clock()

    async def schema_version(self) -> int:
        return int(await self.pool.fetchval("SELECT MAX(version) FROM schema_migrations"))

    # --- running SQL

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        return await self.pool.fetch(sql, *args)

    async def execute(self, sql: str, *args: Any) -> int:
        """Run one statement (committed at once) and return the number of rows it changed."""
        return rows_changed(await self.pool.execute(sql, *args))

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[PoolConnectionProxy]:
        """Several statements as one atomic step on one connection, rolled back on any error.
        READ COMMITTED: each statement sees what others committed before it started."""
        async with self.pool.acquire() as connection, connection.transaction():
            yield connection


async def migrate(connection: PoolConnectionProxy, target: str) -> None:
    """Apply the scripts the database has not run yet, all in one transaction, under the
    migration lock: a process starting meanwhile waits, then finds them applied."""
    migrations = schema.POSTGRES_MIGRATIONS
    async with connection.transaction():
        await connection.execute(
            "SELECT pg_advisory_xact_lock($1, $2)", LOCK_NAMESPACE, MIGRATION_LOCK
        )
        await connection.execute(_VERSIONS_SQL)
        current = await connection.fetchval(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations"
        )
        if current > len(migrations):
            raise ConfigError(
                t(
                    "store.postgres.newer_schema",
                    target=target,
                    found=current,
                    known=len(migrations),
                )
            )
        for version in range(current + 1, len(migrations) + 1):
            await connection.execute(migrations[version - 1])  # a script: several statements
            await connection.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
                version,
                time.time(),
            )
            log.info("task store %s: applied schema migration %d", target, version)
