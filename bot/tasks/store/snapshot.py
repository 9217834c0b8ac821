"""Every task row as stored, read through a read-only connection: for the crash and soak
suites and the benchmark, which watch a running bot's database from another process.

For SQLite, the one place outside the store's own connection that opens the database file,
and it only reads: in WAL mode a reader never blocks the bot, and ``mode=ro`` can neither
migrate nor write (no id mark, no counters), so watching cannot change what is watched. For
PostgreSQL, one connection in a READ ONLY transaction (in a thread of its own: callers are
plain functions, often called from a running event loop).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sqlite3
from typing import Any

import asyncpg

from bot.tasks.store.urls import is_postgres, sqlite_path


def task_rows(database_url: str) -> list[dict[str, Any]]:
    """Every row of the tasks table, oldest first, as column -> stored value; [] before the
    database or its table exists."""
    if is_postgres(database_url):
        with concurrent.futures.ThreadPoolExecutor(1) as thread:
            return thread.submit(asyncio.run, _postgres_rows(database_url)).result()
    path = sqlite_path(database_url)
    if not path.exists():
        return []
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        connection.row_factory = sqlite3.Row
        try:
            rows = connection.execute("SELECT * FROM tasks ORDER BY id").fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []
            raise
        return [dict(row) for row in rows]
    finally:
        connection.close()


async def _postgres_rows(database_url: str) -> list[dict[str, Any]]:
    connection = await asyncpg.connect(database_url, timeout=10)
    try:
        async with connection.transaction(readonly=True):
            try:
                rows = await connection.fetch("SELECT * FROM tasks ORDER BY id")
            except asyncpg.UndefinedTableError:
                return []
        return [dict(row) for row in rows]
    finally:
        await connection.close()
