"""Each task's prepared input images on PostgreSQL: one ``bytea`` row per image in
``task_inputs``, so a process on any machine reads them.

It shares the task store's pool. A task's images go in one transaction: all or none. A task
holds at most 4 images of at most 10 MB (Kling's limits), far below bytea's 1 GB a value;
they are kept out of line (TOAST, ``STORAGE EXTERNAL``: PNG and JPEG do not compress again).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import asyncpg

from bot.tasks.store.pg import PgDatabase
from bot.tasks.store.protocols import InputsNotSaved

_INSERT = (
    "INSERT INTO task_inputs (task_id, position, label, extension, data) "
    "VALUES ($1, $2, $3, $4, $5)"
)
# Whatever keeps the rows out: the server refusing them (disk full, the task gone), the
# connection lost, a statement over COMMAND_TIMEOUT.
_NOT_SAVED = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


class PgInputStore:
    """``InputStore`` over an open ``PgDatabase`` (the task store's)."""

    def __init__(self, database: PgDatabase) -> None:
        self._database = database

    async def save_inputs(self, task_id: int, images: Sequence[tuple[str, bytes, str]]) -> None:
        rows = [
            (task_id, position, label, extension, data)
            for position, (label, data, extension) in enumerate(images)
        ]
        try:
            async with self._database.transaction() as connection:
                await connection.executemany(_INSERT, rows)
        except _NOT_SAVED as exc:
            raise InputsNotSaved(task_id, exc) from exc

    async def read_inputs(self, task_id: int) -> list[tuple[str, bytes]]:
        rows = await self._database.fetch(
            "SELECT label, data FROM task_inputs WHERE task_id = $1 ORDER BY position", task_id
        )
        return [(str(row["label"]), bytes(row["data"])) for row in rows]

    async def remove_inputs(self, task_ids: Collection[int]) -> int:
        if not task_ids:
            return 0
        rows = await self._database.fetch(
            "WITH gone AS (DELETE FROM task_inputs WHERE task_id = ANY($1::bigint[]) "
            "RETURNING task_id) SELECT COUNT(DISTINCT task_id) FROM gone",
            list(task_ids),
        )
        return int(rows[0][0])
