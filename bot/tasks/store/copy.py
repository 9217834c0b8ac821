"""Copying a SQLite database into an empty PostgreSQL one: ``kling-bot migrate-db``.

The source is opened as the bot would open it first (so it is migrated to today's schema and
refused while a bot still runs on it: SQLite serves one process), then read in one read-only
transaction, a consistent snapshot. The target is migrated to today's schema too and must hold
no task and no server settings: nothing is merged or overwritten. Every table both have is
copied row for row, ids included, in one transaction (all or nothing), except the bookkeeping
that each database keeps for itself (its schema version, the per-state counters its triggers
maintain, live processes). Claims are not carried over: the process that held them has
stopped. The id sequence then continues above every id the SQLite database ever handed out
(its id mark included), so no "#id" is ever given to two tasks.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bot.config import ConfigError
from bot.tasks.store import idmark
from bot.tasks.store.pg import PgDatabase
from bot.tasks.store.sqlite import SqliteDatabase
from bot.tasks.store.urls import is_postgres, postgres_target, sqlite_path
from bot.text import t

log = logging.getLogger(__name__)

# Each database keeps these for itself.
NOT_COPIED = {"schema_migrations", "state_counts", "processes", "sqlite_sequence"}
CLAIM_RESET = {"claim_owner": None, "claim_purpose": None, "claim_until": None}
BATCH = 1_000


@dataclass(frozen=True, slots=True)
class Copied:
    rows: dict[str, int]  # table -> rows copied
    next_id: int  # the id the next new task gets


async def copy_database(source_url: str, target_url: str) -> Copied:
    """Copy ``source_url`` (sqlite:///...) into the empty ``target_url`` (postgresql://...)."""
    if not source_url.startswith("sqlite:///"):
        raise ConfigError(t("store.copy.source_not_sqlite"))
    if not is_postgres(target_url):
        raise ConfigError(t("store.copy.target_not_postgres"))
    path = sqlite_path(source_url)
    if str(path) == ":memory:" or not path.exists():
        raise ConfigError(t("store.copy.source_missing", path=path))
    source = SqliteDatabase(path)
    await source.open()  # today's schema; refused if a bot runs on it
    await source.close()
    tables = _read_sqlite(path)
    id_floor = max(idmark.read_id_mark(idmark.id_mark_path(path)), _sqlite_sequence(path))
    target = PgDatabase(target_url)
    await target.open()  # today's schema, made or migrated
    try:
        return await _write(target, target_url, tables, id_floor)
    finally:
        await target.close()


def _read_sqlite(path: Any) -> dict[str, tuple[list[str], list[tuple[Any, ...]]]]:
    """Every table's columns and rows, read in one transaction (one consistent snapshot)."""
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        connection.execute("BEGIN")
        names = [
            row[0]
            for row in connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
            )
        ]
        tables = {}
        for name in names:
            if name in NOT_COPIED or name.startswith("sqlite_"):
                continue
            cursor = connection.execute(f'SELECT * FROM "{name}"')
            columns = [column[0] for column in cursor.description]
            tables[name] = (columns, [tuple(row) for row in cursor])
        connection.execute("COMMIT")
        return tables
    finally:
        connection.close()


def _sqlite_sequence(path: Any) -> int:
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        row = connection.execute("SELECT seq FROM sqlite_sequence WHERE name = 'tasks'").fetchone()
        return int(row[0]) if row else 0
    except sqlite3.OperationalError:
        return 0
    finally:
        connection.close()


async def _write(
    target: PgDatabase,
    target_url: str,
    tables: dict[str, tuple[list[str], list[tuple[Any, ...]]]],
    id_floor: int,
) -> Copied:
    where = postgres_target(target_url)
    async with target.transaction() as connection:
        known = await _postgres_columns(connection)
        for table in ("tasks", "guild_config"):
            held = await connection.fetchval(f"SELECT count(*) FROM {table}")
            if held:
                raise ConfigError(t("store.copy.target_not_empty", target=where, table=table))
        copied: dict[str, int] = {}
        # tasks first: other tables may refer to them.
        for name in sorted(tables, key=lambda n: n != "tasks"):
            columns, rows = tables[name]
            if name not in known:
                raise ConfigError(t("store.copy.unknown_table", table=name, target=where))
            missing = [c for c in columns if c not in known[name]]
            if missing:
                raise ConfigError(
                    t("store.copy.unknown_columns", table=name, columns=", ".join(missing))
                )
            if name == "tasks":
                rows = _without_claims(columns, rows)
            for start in range(0, len(rows), BATCH):
                await connection.copy_records_to_table(
                    name, records=rows[start : start + BATCH], columns=columns
                )
            copied[name] = len(rows)
        highest = await connection.fetchval("SELECT COALESCE(MAX(id), 0) FROM tasks")
        next_id = max(int(highest), id_floor) + 1
        await connection.execute(
            "SELECT setval(pg_get_serial_sequence('tasks', 'id'), $1, false)", next_id
        )
    log.info("copied %s into %s; new tasks start at #%d", copied, where, next_id)
    return Copied(rows=copied, next_id=next_id)


async def _postgres_columns(connection: Any) -> dict[str, set[str]]:
    rows = await connection.fetch(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = current_schema()"
    )
    known: dict[str, set[str]] = {}
    for row in rows:
        known.setdefault(row["table_name"], set()).add(row["column_name"])
    return known


def _without_claims(columns: Sequence[str], rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    reset = [index for index, name in enumerate(columns) if name in CLAIM_RESET]
    if not reset:
        return rows
    cleared = []
    for row in rows:
        values = list(row)
        for index in reset:
            values[index] = None
        cleared.append(tuple(values))
    return cleared
