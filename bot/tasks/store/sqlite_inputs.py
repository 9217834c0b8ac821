"""Each task's prepared input images on SQLite: one BLOB row per image in ``task_inputs``.

It shares the task store's connection (and its write lock). A task's images go in one
transaction, so a full disk (SQLITE_FULL) or a lock held too long keeps none of them. A
prepared image is at most 10 MB (Kling's limit), a task has at most 4: a save writes up to
40 MB to the WAL in one transaction, which grows the WAL file that far until the next
checkpoint truncates it (``JOURNAL_SIZE_LIMIT``). Removed images leave free pages that the
next saves reuse (the file does not shrink without VACUUM).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Sequence

from bot.tasks.store.codec import placeholders
from bot.tasks.store.protocols import InputsNotSaved
from bot.tasks.store.sqlite import SqliteDatabase
from bot.tasks.store.sqlite_queries import ID_CHUNK

_INSERT = (
    "INSERT INTO task_inputs (task_id, position, label, extension, data) VALUES (?, ?, ?, ?, ?)"
)


class SqliteInputStore:
    """``InputStore`` over an open ``SqliteDatabase`` (the task store's)."""

    def __init__(self, database: SqliteDatabase) -> None:
        self._database = database

    async def save_inputs(self, task_id: int, images: Sequence[tuple[str, bytes, str]]) -> None:
        rows = [
            (task_id, position, label, extension, data)
            for position, (label, data, extension) in enumerate(images)
        ]
        try:
            async with self._database.transaction() as db:
                await db.executemany(_INSERT, rows)
        except sqlite3.Error as exc:  # full, locked, the task gone: the member is told alike
            raise InputsNotSaved(task_id, exc) from exc

    async def read_inputs(self, task_id: int) -> list[tuple[str, bytes]]:
        rows = await self._database.fetch(
            "SELECT label, data FROM task_inputs WHERE task_id = ? ORDER BY position", (task_id,)
        )
        return [(str(label), bytes(data)) for label, data in rows]

    async def remove_inputs(self, task_ids: Collection[int]) -> int:
        ids = list(task_ids)
        emptied: set[int] = set()
        for start in range(0, len(ids), ID_CHUNK):
            chunk = ids[start : start + ID_CHUNK]
            rows = await self._database.write_returning(
                f"DELETE FROM task_inputs WHERE task_id IN ({placeholders(len(chunk))}) "
                "RETURNING task_id",
                chunk,
            )
            emptied.update(int(row[0]) for row in rows)
        return len(emptied)
