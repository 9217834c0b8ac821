"""One SQLite file through one aiosqlite connection: opening, migrating, writing, the id mark.

The connection is in autocommit mode, so every write is committed before its method returns
(a crash or SIGKILL afterwards loses nothing), and uses WAL so that readers (the CLI, a second
process) never block the bot. The few steps that need several statements at once (admission,
claiming due polls) run in ``transaction()``: BEGIN IMMEDIATE on the shared connection, under
``_write_lock``, which every write takes, so no other coroutine's write can land inside it (or
be rolled back with it).

``ping()`` reports a database file that was deleted or replaced under the open connection, and
the store then takes no new task (``refuse_if_file_changed``).

SQLite serves one process: ``open`` first takes the lock of ``sqlite_lock`` (held until
``close``) and refuses with ``ConfigError`` while another store, here or in another process,
has the file open. ``:memory:`` takes none.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import aiosqlite

from bot.tasks.store import idmark, schema
from bot.tasks.store.codec import credits_number
from bot.tasks.store.protocols import DatabaseFileChanged
from bot.tasks.store.sqlite_lock import OneProcessLock

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 10_000
WAL_AUTOCHECKPOINT_PAGES = 4_000  # about 16 MB of WAL between checkpoints
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024  # the WAL file is truncated back to this after a checkpoint
# The AUTOINCREMENT sequence: the highest id this database has handed out, deleted rows included.
SEQUENCE_SQL = "SELECT seq FROM sqlite_sequence WHERE name = 'tasks'"


class SqliteDatabase:
    """The connection and its lifecycle; the stores' SQL runs through ``fetch``/``write``.

    ``clock`` stamps created_at/updated_at and the state timestamps; tests pass a fake one.
    """

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._clock = clock
        self._db: aiosqlite.Connection | None = None
        self._on_disk = str(self.path) != ":memory:"
        self._lock = OneProcessLock(self.path) if self._on_disk else None
        self._file_id: tuple[int, int] | None = None  # (st_dev, st_ino) of the file opened
        self._file_problem: str | None = None  # what the last check found wrong with the file
        self._id_floor = 0  # every id handed out so far, here or by earlier processes, is <= this
        self._ids_reserved = 0  # what this process last read from or wrote to the id mark
        self._reserve_lock = asyncio.Lock()
        self._write_lock = asyncio.Lock()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # --- lifecycle

    async def open(self) -> None:
        if self._db is not None:
            return
        if self._lock is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock.acquire()  # before anything touches the file: refused, nothing changed
        try:
            db = await self._connect()
        except BaseException:
            self._release_lock()
            raise
        self._file_problem = None
        self._db = db
        log.debug("task store open at %s", self.path)

    async def _connect(self) -> aiosqlite.Connection:
        """The configured, migrated connection, its ids started."""
        # isolation_level=None: autocommit, so each write statement is its own committed
        # transaction; migrations and transaction() open theirs explicitly.
        db = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            await self._configure(db)
            await schema.migrate(db, self.path)
            await self._start_ids(db)
            self._file_id = idmark.file_identity(self.path) if self._on_disk else None
        except BaseException:
            await db.close()
            raise
        return db

    async def _configure(self, db: aiosqlite.Connection) -> None:
        await db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        async with db.execute("PRAGMA journal_mode = WAL") as cursor:
            row = await cursor.fetchone()
        mode = row[0] if row else None
        if mode != "wal" and self._on_disk:
            log.warning("SQLite at %s refused WAL mode (journal_mode=%s)", self.path, mode)
        # NORMAL is durable against process crashes in WAL mode (only an OS crash or power
        # loss can lose the last commits) and avoids an fsync per write.
        await db.execute("PRAGMA synchronous = NORMAL")
        # With NORMAL, the fsyncs happen at checkpoints; each insert writes ~7 pages (row and
        # indexes), so the default 1000-page checkpoint ran every ~140 inserts and doubled
        # the cost of creating tasks. Checkpoint less often, and cap the WAL file's size.
        await db.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
        await db.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
        await db.execute("PRAGMA foreign_keys = ON")
        await db.create_function("credits_number", 1, credits_number, deterministic=True)

    async def _start_ids(self, db: aiosqlite.Connection) -> None:
        """New ids go above both the database's own sequence and the id mark, which is ahead
        of it when the database is new or restored from a backup (or the last run crashed)."""
        rows = list(await db.execute_fetchall(SEQUENCE_SQL))
        sequence = int(rows[0][0]) if rows else 0
        mark_path = idmark.id_mark_path(self.path)
        mark = idmark.read_id_mark(mark_path) if self._on_disk else 0
        if mark > sequence:
            log.info(
                "task store %s: task ids continue above %d, from %s (the database itself only "
                "knows ids up to %d: it is new, restored, or the last run did not close it)",
                self.path, mark, mark_path, sequence,
            )  # fmt: skip
        self._id_floor = max(mark, sequence)
        self._ids_reserved = mark
        if self._on_disk and mark < sequence:
            await self._write_mark(sequence)  # no mark yet (a database from before it)

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is None:
            return
        try:
            await self._release_unused_ids()
        finally:
            try:
                await db.close()
            finally:
                self._release_lock()  # last: nothing of this process writes the file after it

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.release()

    async def ping(self) -> bool:
        """True while the connection answers and the file at ``path`` is still the one it
        opened. A deleted or replaced file is logged once, as an ERROR saying what to do."""
        if self._db is None:
            return False
        if self._check_file() is not None:
            return False
        try:
            rows = await self._db.execute_fetchall("SELECT 1")
        except (sqlite3.Error, ValueError):
            return False
        return list(rows) == [(1,)]

    def _check_file(self) -> str | None:
        """What happened to the database file since it was opened, or None if nothing did.

        A file deleted or replaced (``mv``/``cp`` of a backup onto its name) leaves this
        connection on the old file: what it writes now is lost at the next restart. An
        in-place overwrite keeping the inode cannot be seen here (stop the bot to restore).
        """
        if self._file_id is None:
            return None
        try:
            same = idmark.file_identity(self.path) == self._file_id
            problem = None if same else "replaced"
        except FileNotFoundError:
            problem = "deleted"
        except OSError as exc:
            problem = f"unreadable ({exc.strerror})"
        if problem != self._file_problem:
            self._report_file_change(problem)
        self._file_problem = problem
        return problem

    def _report_file_change(self, problem: str | None) -> None:
        if problem is None:
            log.info("task store: the database file %s is back", self.path)
            return
        log.error(
            "the database file %s was %s while the bot was running: the bot still writes to "
            "the file it opened, which is lost at the next restart, and takes no new tasks. "
            "Restore the file (from a backup if it is gone) and restart the bot",
            self.path, problem,
        )  # fmt: skip

    def refuse_if_file_changed(self) -> None:
        # New tasks only: a task created in a deleted or replaced file is lost at the next
        # restart, after Kling may have charged for it. Tasks under way go on updating their
        # rows (lost as well, but refusing would not save them) so their results still reach
        # the members who asked.
        problem = self._check_file()
        if problem is not None:
            raise DatabaseFileChanged(
                f"the database file {self.path} was {problem} while the bot was running; "
                "no new task is taken until it is restored and the bot restarted"
            )

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("the task store is not open: await store.open() first")
        return self._db

    def now(self) -> float:
        return self._clock()

    async def schema_version(self) -> int:
        rows = list(await self.db.execute_fetchall("PRAGMA user_version"))
        return int(rows[0][0])

    # --- running SQL

    async def fetch(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[Any]:
        """Rows of one read; reads take no lock (WAL: they never wait for a writer)."""
        return list(await self.db.execute_fetchall(sql, params))

    async def write(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one write statement (committed at once: autocommit) and return its rowcount."""
        async with self._write_lock:
            async with self.db.execute(sql, params) as cursor:
                return cursor.rowcount

    async def write_returning(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """One write statement with a RETURNING clause: the rows it returned."""
        async with self._write_lock:
            return list(await self.db.execute_fetchall(sql, params))

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """Several statements as one atomic step: BEGIN IMMEDIATE (the file's write lock, so
        another process waits too) ... COMMIT, rolled back on any error. Statements inside run
        on the yielded connection directly: the write lock is held."""
        async with self._write_lock:
            db = self.db
            await db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                await db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    await db.execute("ROLLBACK")
                raise

    # --- ids

    async def _next_id_floor(self) -> int:
        """Reserve the next id in the mark (before its row: may fail on disk); new ids go
        above the returned number."""
        await self._reserve_ids_through(self._id_floor + 1)
        return self._id_floor

    async def _id_handed_out(self, task_id: int) -> None:
        self._id_floor = max(self._id_floor, task_id)
        # Another process creating tasks in this database may have moved the sequence past
        # this process's reservation: cover the id before anyone is shown it.
        await self._reserve_ids_through(task_id)

    async def _reserve_ids_through(self, task_id: int) -> None:
        """Make sure the id mark covers ``task_id``, reserving ``ID_BLOCK`` ids per write."""
        if not self._on_disk or task_id <= self._ids_reserved:
            return
        async with self._reserve_lock:
            if task_id <= self._ids_reserved:
                return  # a concurrent create reserved it meanwhile
            await self._write_mark(task_id + idmark.ID_BLOCK - 1)

    async def _release_unused_ids(self) -> None:
        """At a clean close, give back the reserved ids not handed out, so ids do not jump
        by a block at every restart. Only if the mark is still this process's own: a second
        process creating tasks may have reserved beyond it."""
        if not self._on_disk or self._ids_reserved <= self._id_floor:
            return
        mark = idmark.id_mark_path(self.path)
        async with self._reserve_lock:
            if await asyncio.to_thread(idmark.read_id_mark, mark) == self._ids_reserved:
                try:
                    await self._write_mark(self._id_floor)
                except OSError as exc:  # a full disk: a mark left ahead only skips some ids
                    log.warning("task store %s: id mark not lowered at close (%s)", self.path, exc)

    async def _write_mark(self, through: int) -> None:
        path = idmark.id_mark_path(self.path)
        await asyncio.to_thread(idmark.write_id_mark, path, through)
        self._ids_reserved = through
