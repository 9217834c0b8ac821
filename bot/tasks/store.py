"""Where tasks and per-guild settings are kept: a SQLite file, through aiosqlite.

The tracker and the Discord side depend on the ``TaskStore`` protocol only. ``SqliteTaskStore``
keeps one connection in autocommit mode, so every write is committed before its method
returns (a crash or SIGKILL afterwards loses nothing), and uses WAL so that readers (the CLI,
a second process) never block the bot.

State changes go through ``transition``: one conditional ``UPDATE ... WHERE id=? AND state IN
(...)``. Whoever changes the row first wins and everyone else gets ``False``, which is how the
poller, the webhook and a cancel racing on the same task stay consistent without locks.

The schema is versioned with ``PRAGMA user_version``: ``MIGRATIONS[i]`` brings the database
from version ``i`` to ``i + 1``. Append new scripts; never edit a released one.

Task ids are shown to members and sit in buttons ("again:12"), so none is handed out twice, not
even by a new database after the file was deleted or a backup restored: the highest id that may
have been handed out is kept in a small file beside the database (``id_mark_path``), reserved
``ID_BLOCK`` ids at a time, and new ids start above it. ``ping()`` reports a database file that
was deleted or replaced under the open connection, and the store then takes no new task.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import os
import sqlite3
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import aiosqlite

from bot.config import Settings
from bot.kling.models import TaskKind
from bot.tasks.models import FINAL_STATES, Origin, TaskRecord, TaskState, UsageRow

log = logging.getLogger(__name__)

# A param longer than this is almost certainly an image (base64) that slipped in by mistake;
# images are stored as files, never in the database.
MAX_PARAM_CHARS = 10_000
BUSY_TIMEOUT_MS = 10_000
WAL_AUTOCHECKPOINT_PAGES = 4_000  # about 16 MB of WAL between checkpoints
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024  # the WAL file is truncated back to this after a checkpoint
# Task ids reserved per write of the id mark file: one small write per this many new tasks. A
# process that stops without closing the store skips at most this many ids at the next start.
ID_BLOCK = 1_000

MIGRATIONS: list[str] = [
    # 1: tasks and guild_config.
    """
    CREATE TABLE tasks (
        -- AUTOINCREMENT: a local id ("#12") is never reused, even after rows are deleted.
        id                INTEGER PRIMARY KEY AUTOINCREMENT,
        kind              TEXT    NOT NULL,
        provider          TEXT    NOT NULL,
        simulated         INTEGER NOT NULL,
        external_task_id  TEXT    NOT NULL,
        kling_task_id     TEXT,
        state             TEXT    NOT NULL,
        params            TEXT    NOT NULL DEFAULT '{}',
        input_files       TEXT    NOT NULL DEFAULT '[]',
        input_labels      TEXT    NOT NULL DEFAULT '[]',
        slots             INTEGER NOT NULL,
        guild_id          INTEGER,
        channel_id        INTEGER NOT NULL,
        user_id           INTEGER NOT NULL,
        message_id        INTEGER,
        created_at        REAL    NOT NULL,
        submitted_at      REAL,
        processing_at     REAL,
        finished_at       REAL,
        delivered_at      REAL,
        kling_status      TEXT,
        result_urls       TEXT    NOT NULL DEFAULT '[]',
        result_files      TEXT    NOT NULL DEFAULT '[]',
        credits           TEXT,
        failure_reason    TEXT,
        delivery_attempts INTEGER NOT NULL DEFAULT 0,
        delivery_error    TEXT,
        cancel_requested  INTEGER NOT NULL DEFAULT 0,
        callback_token    TEXT,
        next_check_at     REAL,
        check_count       INTEGER NOT NULL DEFAULT 0,
        submit_attempts   INTEGER NOT NULL DEFAULT 0,
        not_before        REAL,
        updated_at        REAL    NOT NULL
    );
    -- (state, created_at, id) serves in_states() in its order without a sort.
    CREATE INDEX ix_tasks_state ON tasks (state, created_at, id);
    CREATE UNIQUE INDEX ux_tasks_external_task_id ON tasks (external_task_id);
    CREATE INDEX ix_tasks_kling_task_id ON tasks (kling_task_id);
    CREATE UNIQUE INDEX ux_tasks_callback_token ON tasks (callback_token);
    CREATE INDEX ix_tasks_guild_user_created ON tasks (guild_id, user_id, created_at);
    CREATE INDEX ix_tasks_created ON tasks (created_at);

    CREATE TABLE guild_config (
        guild_id   INTEGER PRIMARY KEY,
        config     TEXT    NOT NULL,
        updated_at REAL    NOT NULL
    );
    """,
    # 2: when retention removed a task's files, so the hourly cleanup stops re-reading old rows.
    # Store-only (not on TaskRecord): nothing but the cleanup reads it.
    """
    ALTER TABLE tasks ADD COLUMN files_removed_at REAL;
    -- Holds only the tasks whose files are still kept: the cleanup's scan stays small.
    CREATE INDEX ix_tasks_files_kept ON tasks (created_at, id) WHERE files_removed_at IS NULL;
    """,
    # 3: tasks per state kept as counters, so /metrics reads a few rows instead of counting
    # every task ever kept. The triggers keep them in the same transaction as the row change.
    """
    CREATE TABLE state_counts (
        state TEXT    PRIMARY KEY,
        n     INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO state_counts (state, n) SELECT state, COUNT(*) FROM tasks GROUP BY state;
    CREATE TRIGGER tasks_count_insert AFTER INSERT ON tasks BEGIN
        INSERT INTO state_counts (state, n) VALUES (NEW.state, 1)
            ON CONFLICT (state) DO UPDATE SET n = n + 1;
    END;
    CREATE TRIGGER tasks_count_delete AFTER DELETE ON tasks BEGIN
        UPDATE state_counts SET n = n - 1 WHERE state = OLD.state;
    END;
    CREATE TRIGGER tasks_count_state AFTER UPDATE OF state ON tasks
    WHEN OLD.state IS NOT NEW.state BEGIN
        UPDATE state_counts SET n = n - 1 WHERE state = OLD.state;
        INSERT INTO state_counts (state, n) VALUES (NEW.state, 1)
            ON CONFLICT (state) DO UPDATE SET n = n + 1;
    END;
    """,
]
# Ids per statement when many are written at once (SQLite caps bound parameters).
_ID_CHUNK = 500

# The record's fields, in table column order; the single source of truth for SELECTs.
COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TaskRecord))
_JSON_COLUMNS = frozenset({"params", "input_files", "input_labels", "result_urls", "result_files"})
_BOOL_COLUMNS = frozenset({"simulated", "cancel_requested"})
# update()/transition() may set these; id is fixed and state only changes through transition().
_MUTABLE_COLUMNS = frozenset(COLUMNS) - {"id", "state"}
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM tasks"
# The AUTOINCREMENT sequence: the highest id this database has handed out, deleted rows included.
_SEQUENCE_SQL = "SELECT seq FROM sqlite_sequence WHERE name = 'tasks'"

# The timestamp each target state stamps.
_STAMP: dict[TaskState, str] = {
    TaskState.SUBMITTED: "submitted_at",
    TaskState.PROCESSING: "processing_at",
    TaskState.SUCCEED: "finished_at",
    TaskState.FAILED: "finished_at",
    TaskState.CANCELLED: "finished_at",
    TaskState.DELIVERED: "delivered_at",
    TaskState.UNDELIVERABLE: "delivered_at",
}

# For usage(): a task succeeded when Kling says so, or when it ended with results.
_SUCCEEDED_SQL = (
    "(IFNULL(kling_status, '') = 'succeed' "
    "OR (state IN ('succeed', 'delivered') AND result_files != '[]'))"
)


class DuplicateTaskError(Exception):
    """A task with this external_task_id or callback_token exists already (any backend)."""


class DatabaseFileChanged(RuntimeError):
    """The database file was deleted or replaced under the open store: no new task is taken."""


@runtime_checkable
class TaskStore(Protocol):
    """What the tracker, the CLI and the Discord side need from storage."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def ping(self) -> bool: ...

    async def create(
        self,
        *,
        kind: TaskKind,
        provider: str,
        simulated: bool,
        external_task_id: str,
        params: dict[str, Any],
        input_labels: list[str],
        slots: int,
        origin: Origin,
        callback_token: str | None,
    ) -> TaskRecord: ...

    async def set_inputs(self, task_id: int, input_files: list[str]) -> None: ...
    async def get(self, task_id: int) -> TaskRecord | None: ...
    async def find(self, ref: str) -> TaskRecord | None: ...
    async def by_external_id(self, external_task_id: str) -> TaskRecord | None: ...
    async def by_kling_id(self, kling_task_id: str) -> TaskRecord | None: ...
    async def by_callback_token(self, token: str) -> TaskRecord | None: ...

    async def transition(
        self, task_id: int, from_states: Collection[TaskState], to: TaskState, **fields: Any
    ) -> bool: ...

    async def update(self, task_id: int, **fields: Any) -> None: ...

    async def update_if_state(
        self, task_id: int, states: Collection[TaskState], **fields: Any
    ) -> bool: ...

    async def in_states(
        self, states: Collection[TaskState], *, kind: TaskKind | None = None
    ) -> list[TaskRecord]: ...

    async def list_tasks(
        self,
        *,
        guild_id: int | None = None,
        user_id: int | None = None,
        states: Collection[TaskState] | None = None,
        limit: int = 20,
        offset: int = 0,
        since: float | None = None,
    ) -> list[TaskRecord]: ...

    async def count_tasks(
        self,
        *,
        guild_id: int | None = None,
        user_id: int | None = None,
        states: Collection[TaskState] | None = None,
        since: float | None = None,
    ) -> int: ...

    async def usage(
        self, *, guild_id: int | None, since: float, user_id: int | None = None
    ) -> list[UsageRow]: ...

    async def counts_by_state(self) -> dict[TaskState, int]: ...
    async def files_due_for_removal(self, ts: float) -> list[int]: ...
    async def mark_files_removed(self, task_ids: Collection[int]) -> None: ...
    async def get_guild_config(self, guild_id: int) -> dict[str, Any]: ...
    async def set_guild_config(self, guild_id: int, config: dict[str, Any]) -> None: ...


# --- encoding ----------------------------------------------------------------------------------


def _dumps(value: Any) -> str:
    # Compact and key-sorted: stable text, and '[]' for an empty list (usage() relies on it).
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def _check_no_long_strings(value: Any, where: str = "params") -> None:
    """Refuse huge strings anywhere in params: they are images that belong on disk."""
    if isinstance(value, str):
        if len(value) > MAX_PARAM_CHARS:
            raise ValueError(
                f"{where} holds a {len(value)}-character string (limit {MAX_PARAM_CHARS}); "
                "images must be saved as input files, not stored in params"
            )
    elif isinstance(value, bytes | bytearray):
        raise ValueError(f"{where} holds bytes; images must be saved as input files")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _check_no_long_strings(item, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_no_long_strings(item, f"{where}[{index}]")


def _encode(column: str, value: Any) -> Any:
    if column in _JSON_COLUMNS:
        if column == "params":
            _check_no_long_strings(value)
        return _dumps(value)
    if column in _BOOL_COLUMNS:
        return int(bool(value))
    if column == "kind":
        return TaskKind(value).value
    return value


def _encode_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Check the names (they end up in SQL text) and encode the values."""
    if "state" in fields:
        raise ValueError("the state changes only through transition(), not update()")
    unknown = set(fields) - _MUTABLE_COLUMNS
    if unknown:
        raise ValueError(f"unknown or read-only task fields: {', '.join(sorted(unknown))}")
    return {name: _encode(name, value) for name, value in fields.items()}


# Enum lookups by value through a dict: several times faster than calling the enum class, and
# decoding is what in_states() over thousands of rows spends its time on.
_KIND_BY_VALUE: dict[str, TaskKind] = {k.value: k for k in TaskKind}
_STATE_BY_VALUE: dict[str, TaskState] = {s.value: s for s in TaskState}


def _loads_list(text: str) -> list[Any]:
    return [] if text == "[]" else json.loads(text)  # most lists are empty: skip the parser


def _decode(row: tuple[Any, ...]) -> TaskRecord:
    """A row selected with ``_SELECT`` (columns in ``COLUMNS`` order) to a fresh record."""
    (
        id_,
        kind,
        provider,
        simulated,
        external_task_id,
        kling_task_id,
        state,
        params,
        input_files,
        input_labels,
        *middle,
        result_urls,
        result_files,
        credits,
        failure_reason,
        delivery_attempts,
        delivery_error,
        cancel_requested,
        callback_token,
        next_check_at,
        check_count,
        submit_attempts,
        not_before,
        updated_at,
    ) = row
    return TaskRecord(
        id_,
        _KIND_BY_VALUE.get(kind) or TaskKind(kind),  # TaskKind() raises on an unknown value
        provider,
        bool(simulated),
        external_task_id,
        kling_task_id,
        _STATE_BY_VALUE.get(state) or TaskState(state),
        json.loads(params),
        _loads_list(input_files),
        _loads_list(input_labels),
        *middle,  # slots .. kling_status: stored as they are
        _loads_list(result_urls),
        _loads_list(result_files),
        credits,
        failure_reason,
        delivery_attempts,
        delivery_error,
        bool(cancel_requested),
        callback_token,
        next_check_at,
        check_count,
        submit_attempts,
        not_before,
        updated_at,
    )


def _credits_number(text: Any) -> float | None:
    """SQL function for usage(): Kling's credits text as a number, None when it is not one."""
    if text is None:
        return None
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _placeholders(n: int) -> str:
    return ", ".join("?" * n)


def _state_values(states: Collection[TaskState]) -> list[str]:
    return [TaskState(s).value for s in states]


def _statements(script: str) -> Iterator[str]:
    """Split a migration script into statements (``executescript`` would commit midway)."""
    buffer = ""
    for part in script.split(";"):
        buffer += part + ";"
        # complete_statement knows about quotes, comments and trigger bodies.
        if sqlite3.complete_statement(buffer):
            statement = buffer.strip()
            if statement.strip(";").strip() and not _only_comments(statement):
                yield statement
            buffer = ""
    if buffer.strip(" \t\r\n;"):
        raise ValueError(f"incomplete SQL statement in migration: {buffer.strip()[:80]!r}")


def _only_comments(statement: str) -> bool:
    lines = [line.strip() for line in statement.rstrip(";").splitlines()]
    return all(not line or line.startswith("--") for line in lines)


# --- the id mark --------------------------------------------------------------------------------


def id_mark_path(db_path: Path) -> Path:
    """The file holding the highest task id that may have been handed out for ``db_path``.

    Beside the database but not named after its file (``kling-bot.last-task-id`` for
    ``kling-bot.db``), so that ``rm kling-bot.db*`` leaves it in place.
    """
    return db_path.with_name(f"{db_path.stem}.last-task-id")


def _read_id_mark(path: Path) -> int:
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        return 0
    try:
        return int(text.strip())
    except ValueError:
        # Guessing could hand out an id twice: better not to start.
        raise RuntimeError(
            f"{path} should hold one number, the highest task id the bot has handed out, "
            f"but holds {text.strip()[:40]!r}; write that number into it (or delete the file "
            "if the database beside it holds every task ever created) and start again"
        ) from None


def _write_id_mark(path: Path, value: int) -> None:
    """Replace the mark atomically: a reader sees the old number or the new one, never half."""
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("w", encoding="ascii") as file:
        file.write(f"{value}\n")
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def _file_identity(path: Path) -> tuple[int, int]:
    info = os.stat(path)
    return info.st_dev, info.st_ino


# --- SQLite ------------------------------------------------------------------------------------


class SqliteTaskStore(TaskStore):
    """``TaskStore`` on one SQLite file, one aiosqlite connection per instance.

    ``clock`` stamps created_at/updated_at and the state timestamps; tests pass a fake one.
    """

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._clock = clock
        self._db: aiosqlite.Connection | None = None
        self._on_disk = str(self.path) != ":memory:"
        self._file_id: tuple[int, int] | None = None  # (st_dev, st_ino) of the file opened
        self._file_problem: str | None = None  # what the last check found wrong with the file
        self._id_floor = 0  # every id handed out so far, here or by earlier processes, is <= this
        self._ids_reserved = 0  # what this process last read from or wrote to the id mark
        self._reserve_lock = asyncio.Lock()

    async def __aenter__(self) -> SqliteTaskStore:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # --- lifecycle

    async def open(self) -> None:
        if self._db is not None:
            return
        if self._on_disk:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: autocommit, so each write statement is its own committed
        # transaction; migrations open theirs explicitly.
        db = await aiosqlite.connect(self.path, isolation_level=None)
        try:
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
            await db.create_function("credits_number", 1, _credits_number, deterministic=True)
            await self._migrate(db)
            await self._start_ids(db)
            self._file_id = _file_identity(self.path) if self._on_disk else None
        except BaseException:
            await db.close()
            raise
        self._file_problem = None
        self._db = db
        log.debug("task store open at %s", self.path)

    async def _start_ids(self, db: aiosqlite.Connection) -> None:
        """New ids go above both the database's own sequence and the id mark, which is ahead
        of it when the database is new or restored from a backup (or the last run crashed)."""
        rows = list(await db.execute_fetchall(_SEQUENCE_SQL))
        sequence = int(rows[0][0]) if rows else 0
        mark = _read_id_mark(id_mark_path(self.path)) if self._on_disk else 0
        if mark > sequence:
            log.info(
                "task store %s: task ids continue above %d, from %s (the database itself only "
                "knows ids up to %d: it is new, restored, or the last run did not close it)",
                self.path, mark, id_mark_path(self.path), sequence,
            )  # fmt: skip
        self._id_floor = max(mark, sequence)
        self._ids_reserved = mark
        if self._on_disk and mark < sequence:
            await self._write_mark(sequence)  # no mark yet (a database from before it)

    async def _migrate(self, db: aiosqlite.Connection) -> None:
        migrations = MIGRATIONS  # read at call time so tests can monkeypatch the module list
        # IMMEDIATE takes the write lock before reading the version, so two processes opening a
        # fresh file at once cannot both apply the same migration.
        await db.execute("BEGIN IMMEDIATE")  # waits up to busy_timeout for another writer
        try:
            async with db.execute("PRAGMA user_version") as cursor:
                row = await cursor.fetchone()
            current = int(row[0]) if row else 0
            if current > len(migrations):
                raise RuntimeError(
                    f"the database {self.path} is at schema version {current}, newer than this "
                    f"bot knows ({len(migrations)}); upgrade the bot"
                )
            for version in range(current + 1, len(migrations) + 1):
                for statement in _statements(migrations[version - 1]):
                    await db.execute(statement)
                log.info("task store %s: applied schema migration %d", self.path, version)
            if current < len(migrations):
                await db.execute(f"PRAGMA user_version = {len(migrations)}")
            await db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                await db.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is None:
            return
        try:
            await self._release_unused_ids()
        finally:
            await db.close()

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
            problem = None if _file_identity(self.path) == self._file_id else "replaced"
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

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("the task store is not open: await store.open() first")
        return self._db

    async def schema_version(self) -> int:
        rows = list(await self.db.execute_fetchall("PRAGMA user_version"))
        return int(rows[0][0])

    # --- helpers

    async def _one(self, where: str, params: tuple[Any, ...]) -> TaskRecord | None:
        rows = list(await self.db.execute_fetchall(f"{_SELECT} WHERE {where} LIMIT 1", params))
        return _decode(rows[0]) if rows else None

    async def _many(self, sql: str, params: list[Any]) -> list[TaskRecord]:
        return [_decode(row) for row in await self.db.execute_fetchall(sql, params)]

    async def _write(self, sql: str, params: list[Any] | tuple[Any, ...]) -> int:
        """Run one write statement (committed at once: autocommit) and return its rowcount."""
        async with self.db.execute(sql, params) as cursor:
            return cursor.rowcount

    # --- tasks

    async def create(
        self,
        *,
        kind: TaskKind,
        provider: str,
        simulated: bool,
        external_task_id: str,
        params: dict[str, Any],
        input_labels: list[str],
        slots: int,
        origin: Origin,
        callback_token: str | None,
    ) -> TaskRecord:
        """Insert a queued task. A duplicate external_task_id or callback_token raises
        ``DuplicateTaskError``; a param string longer than MAX_PARAM_CHARS ``ValueError``; a
        database file deleted or replaced since open ``DatabaseFileChanged``."""
        self._refuse_if_file_changed()
        now = self._clock()
        values: dict[str, Any] = {
            "kind": _encode("kind", kind),
            "provider": provider,
            "simulated": int(bool(simulated)),
            "external_task_id": external_task_id,
            "state": TaskState.QUEUED.value,
            "params": _encode("params", params),
            "input_files": "[]",  # the files are saved under inputs/<id>/ once the id exists
            "input_labels": _dumps(list(input_labels)),
            "slots": slots,
            "guild_id": origin.guild_id,
            "channel_id": origin.channel_id,
            "user_id": origin.user_id,
            "message_id": origin.message_id,
            "created_at": now,
            "callback_token": callback_token,
            "updated_at": now,
        }
        names = ", ".join(values)
        await self._reserve_ids_through(self._id_floor + 1)  # before the row: may fail on disk
        # The id: above the table's sequence and above every id handed out before (the mark,
        # for a database that is new or older than the ids in use). RETURNING: the new id in
        # the same round trip to the connection's thread.
        try:
            rows = list(
                await self.db.execute_fetchall(
                    f"INSERT INTO tasks (id, {names}) VALUES ("
                    f"MAX(IFNULL(({_SEQUENCE_SQL}), 0), ?) + 1, {_placeholders(len(values))}) "
                    "RETURNING id",
                    (self._id_floor, *values.values()),
                )
            )
        except sqlite3.IntegrityError as exc:
            if "UNIQUE" not in str(exc):
                raise  # a NOT NULL or CHECK failure: a bug here, not a duplicate
            raise DuplicateTaskError(str(exc)) from exc
        task_id = int(rows[0][0])
        self._id_floor = max(self._id_floor, task_id)
        # Another process creating tasks in this database may have moved the sequence past
        # this process's reservation: cover the id before anyone is shown it.
        await self._reserve_ids_through(task_id)
        # Build the record from what was stored (decoded JSON), so it equals what get() returns.
        return TaskRecord(
            id=task_id,
            kind=TaskKind(values["kind"]),
            provider=provider,
            simulated=bool(simulated),
            external_task_id=external_task_id,
            kling_task_id=None,
            state=TaskState.QUEUED,
            params=json.loads(values["params"]),
            input_files=[],
            input_labels=json.loads(values["input_labels"]),
            slots=slots,
            guild_id=origin.guild_id,
            channel_id=origin.channel_id,
            user_id=origin.user_id,
            message_id=origin.message_id,
            created_at=now,
            submitted_at=None,
            processing_at=None,
            finished_at=None,
            delivered_at=None,
            kling_status=None,
            result_urls=[],
            result_files=[],
            credits=None,
            failure_reason=None,
            delivery_attempts=0,
            delivery_error=None,
            cancel_requested=False,
            callback_token=callback_token,
            next_check_at=None,
            check_count=0,
            submit_attempts=0,
            not_before=None,
            updated_at=now,
        )

    def _refuse_if_file_changed(self) -> None:
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

    async def _reserve_ids_through(self, task_id: int) -> None:
        """Make sure the id mark covers ``task_id``, reserving ``ID_BLOCK`` ids per write."""
        if not self._on_disk or task_id <= self._ids_reserved:
            return
        async with self._reserve_lock:
            if task_id <= self._ids_reserved:
                return  # a concurrent create reserved it meanwhile
            await self._write_mark(task_id + ID_BLOCK - 1)

    async def _release_unused_ids(self) -> None:
        """At a clean close, give back the reserved ids not handed out, so ids do not jump
        by a block at every restart. Only if the mark is still this process's own: a second
        process creating tasks may have reserved beyond it."""
        if not self._on_disk or self._ids_reserved <= self._id_floor:
            return
        mark = id_mark_path(self.path)
        async with self._reserve_lock:
            if await asyncio.to_thread(_read_id_mark, mark) == self._ids_reserved:
                await self._write_mark(self._id_floor)

    async def _write_mark(self, through: int) -> None:
        await asyncio.to_thread(_write_id_mark, id_mark_path(self.path), through)
        self._ids_reserved = through

    async def set_inputs(self, task_id: int, input_files: list[str]) -> None:
        await self.update(task_id, input_files=list(input_files))

    async def get(self, task_id: int) -> TaskRecord | None:
        return await self._one("id = ?", (task_id,))

    async def find(self, ref: str) -> TaskRecord | None:
        """``#12`` is a local id; ``12`` too, unless no such task exists and it is a Kling or
        external id (Kling's ids are digits); anything else is a Kling or external id."""
        ref = ref.strip()
        if not ref:
            return None
        if ref.startswith("#"):
            number = ref[1:].strip()
            return await self.get(int(number)) if number.isdecimal() else None
        if ref.isdecimal() and len(ref) < 19:  # fits a SQLite integer
            task = await self.get(int(ref))
            if task is not None:
                return task
        return await self.by_kling_id(ref) or await self.by_external_id(ref)

    async def by_external_id(self, external_task_id: str) -> TaskRecord | None:
        return await self._one("external_task_id = ?", (external_task_id,))

    async def by_kling_id(self, kling_task_id: str) -> TaskRecord | None:
        return await self._one("kling_task_id = ?", (kling_task_id,))

    async def by_callback_token(self, token: str) -> TaskRecord | None:
        return await self._one("callback_token = ?", (token,))

    async def transition(
        self, task_id: int, from_states: Collection[TaskState], to: TaskState, **fields: Any
    ) -> bool:
        """Move the task to ``to`` if it is in one of ``from_states``; True if this call won.

        Stamps the target state's timestamp (unless given in ``fields``) and updated_at, and
        sets ``fields`` in the same statement, so a losing caller changes nothing.
        """
        to = TaskState(to)
        sources = _state_values(from_states)
        if not sources:
            return False
        values = _encode_fields(fields)
        now = self._clock()
        stamp = _STAMP.get(to)
        if stamp is not None:
            values.setdefault(stamp, now)
        values.setdefault("updated_at", now)
        assignments = ", ".join(f"{name} = ?" for name in values)
        changed = await self._write(
            f"UPDATE tasks SET state = ?, {assignments} "
            f"WHERE id = ? AND state IN ({_placeholders(len(sources))})",
            [to.value, *values.values(), task_id, *sources],
        )
        return changed == 1

    async def update(self, task_id: int, **fields: Any) -> None:
        """Set non-state fields (and updated_at). Unknown names and ``state`` raise ValueError."""
        values = _encode_fields(fields)
        if not values:
            return
        values.setdefault("updated_at", self._clock())
        assignments = ", ".join(f"{name} = ?" for name in values)
        changed = await self._write(
            f"UPDATE tasks SET {assignments} WHERE id = ?", [*values.values(), task_id]
        )
        if changed == 0:
            log.debug("update of task %s matched no row", task_id)

    async def update_if_state(
        self, task_id: int, states: Collection[TaskState], **fields: Any
    ) -> bool:
        """Set non-state fields only while the task is in one of ``states``, in one conditional
        statement; True if it was (so a task that ended meanwhile is left alone)."""
        sources = _state_values(states)
        values = _encode_fields(fields)
        if not sources:
            return False
        values.setdefault("updated_at", self._clock())
        assignments = ", ".join(f"{name} = ?" for name in values)
        changed = await self._write(
            f"UPDATE tasks SET {assignments} "
            f"WHERE id = ? AND state IN ({_placeholders(len(sources))})",
            [*values.values(), task_id, *sources],
        )
        return changed == 1

    async def in_states(
        self, states: Collection[TaskState], *, kind: TaskKind | None = None
    ) -> list[TaskRecord]:
        """Tasks in any of ``states``, oldest first, in one query."""
        values: list[Any] = _state_values(states)
        if not values:
            return []
        sql = f"{_SELECT} WHERE state IN ({_placeholders(len(values))})"
        if kind is not None:
            sql += " AND kind = ?"
            values.append(TaskKind(kind).value)
        return await self._many(sql + " ORDER BY created_at, id", values)

    @staticmethod
    def _filters(
        guild_id: int | None,
        user_id: int | None,
        states: Collection[TaskState] | None,
        since: float | None,
    ) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        if guild_id is not None:
            clauses.append("guild_id = ?")
            params.append(guild_id)
        if user_id is not None:
            clauses.append("user_id = ?")
            params.append(user_id)
        if states is not None:
            values = _state_values(states)
            # An empty collection matches nothing (IN () is valid SQLite and is false).
            clauses.append(f"state IN ({_placeholders(len(values))})")
            params.extend(values)
        if since is not None:
            clauses.append("created_at >= ?")
            params.append(since)
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), params

    async def list_tasks(
        self,
        *,
        guild_id: int | None = None,
        user_id: int | None = None,
        states: Collection[TaskState] | None = None,
        limit: int = 20,
        offset: int = 0,
        since: float | None = None,
    ) -> list[TaskRecord]:
        """Newest first. ``None`` filters match everything; ``since`` is on created_at."""
        if limit <= 0:
            return []
        where, params = self._filters(guild_id, user_id, states, since)
        return await self._many(
            f"{_SELECT}{where} ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?",
            [*params, limit, max(0, offset)],
        )

    async def count_tasks(
        self,
        *,
        guild_id: int | None = None,
        user_id: int | None = None,
        states: Collection[TaskState] | None = None,
        since: float | None = None,
    ) -> int:
        where, params = self._filters(guild_id, user_id, states, since)
        rows = list(await self.db.execute_fetchall(f"SELECT COUNT(*) FROM tasks{where}", params))
        return int(rows[0][0])

    async def usage(
        self, *, guild_id: int | None, since: float, user_id: int | None = None
    ) -> list[UsageRow]:
        """Per-member usage of tasks created since ``since``; ``guild_id=None`` means all.

        succeeded: Kling reported success, or the task ended with results. failed: a task that
        reached delivery without succeeding (cancelled tasks are neither). credits: the sum of
        Kling's credits texts that are numbers.
        """
        where, params = self._filters(guild_id, user_id, None, since)
        sql = f"""
            SELECT user_id,
                   COUNT(*) AS tasks,
                   SUM(ok) AS succeeded,
                   SUM(CASE WHEN NOT ok AND state IN ('failed', 'delivered', 'undeliverable')
                            THEN 1 ELSE 0 END) AS failed,
                   IFNULL(SUM(credits_number(credits)), 0.0) AS credit_sum
            FROM (SELECT user_id, state, credits,
                         CASE WHEN {_SUCCEEDED_SQL} THEN 1 ELSE 0 END AS ok
                  FROM tasks{where})
            GROUP BY user_id
            ORDER BY credit_sum DESC, tasks DESC, user_id
        """
        rows = await self.db.execute_fetchall(sql, params)
        return [
            UsageRow(
                user_id=row[0],
                tasks=int(row[1]),
                succeeded=int(row[2]),
                failed=int(row[3]),
                credits=float(row[4]),
            )
            for row in rows
        ]

    async def counts_by_state(self) -> dict[TaskState, int]:
        """Every state, zero included (metrics want a stable set of series). Read from the
        counters the triggers keep: a few rows, however many tasks are kept."""
        counts = dict.fromkeys(TaskState, 0)
        for state, count in await self.db.execute_fetchall("SELECT state, n FROM state_counts"):
            try:
                counts[TaskState(state)] = int(count)
            except ValueError:
                log.warning("tasks table holds an unknown state %r (%d rows)", state, count)
        return counts

    async def files_due_for_removal(self, ts: float) -> list[int]:
        """Ids of final tasks whose last timestamp (delivered_at, else finished_at) is before
        ``ts`` and whose files retention has not removed yet (``mark_files_removed``), oldest
        first. The later stamp counts, so a late delivery keeps its files a full period; each
        old task is selected once, not hourly."""
        values = _state_values(FINAL_STATES)
        # "+state": keeps the planner off ix_tasks_state (every final task ever) and on the
        # partial index of the tasks whose files are still kept.
        rows = await self.db.execute_fetchall(
            "SELECT id FROM tasks WHERE files_removed_at IS NULL "
            f"AND +state IN ({_placeholders(len(values))}) "
            "AND COALESCE(delivered_at, finished_at, updated_at) < ? ORDER BY created_at, id",
            [*values, ts],
        )
        return [int(row[0]) for row in rows]

    async def mark_files_removed(self, task_ids: Collection[int]) -> None:
        ids = list(task_ids)
        now = self._clock()
        for start in range(0, len(ids), _ID_CHUNK):
            chunk = ids[start : start + _ID_CHUNK]
            await self._write(
                f"UPDATE tasks SET files_removed_at = ? WHERE id IN ({_placeholders(len(chunk))})",
                [now, *chunk],
            )

    # --- guild settings

    async def get_guild_config(self, guild_id: int) -> dict[str, Any]:
        rows = list(
            await self.db.execute_fetchall(
                "SELECT config FROM guild_config WHERE guild_id = ?", (guild_id,)
            )
        )
        return json.loads(rows[0][0]) if rows else {}

    async def set_guild_config(self, guild_id: int, config: dict[str, Any]) -> None:
        """Replace the guild's settings (insert or update)."""
        await self._write(
            "INSERT INTO guild_config (guild_id, config, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (guild_id) DO UPDATE SET config = excluded.config, "
            "updated_at = excluded.updated_at",
            (guild_id, _dumps(config), self._clock()),
        )


def open_store(settings: Settings, *, clock: Callable[[], float] = time.time) -> TaskStore:
    """The store ``DATABASE_URL`` names (only ``sqlite:///PATH`` so far); not opened yet:
    ``await store.open()`` (or ``async with``) before use."""
    return SqliteTaskStore(settings.sqlite_path(), clock=clock)
