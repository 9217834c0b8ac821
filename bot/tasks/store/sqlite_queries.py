"""Reads over many tasks on SQLite (lists, counts, usage, metrics) and retention's marks.

Each is one query, served by an index: the tasks table keeps every task ever made, so none of
these may scan it all (``counts_by_state`` reads counters kept by triggers).
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

from bot.kling.models import TaskKind
from bot.tasks.models import FINAL_STATES, TaskRecord, TaskState, UsageRow
from bot.tasks.store.codec import SELECT, decode, placeholders, state_values
from bot.tasks.store.sqlite import SqliteDatabase

log = logging.getLogger(__name__)

# Ids per statement when many are written at once (SQLite caps bound parameters).
ID_CHUNK = 500

# For usage(): a task succeeded when Kling says so, or when it ended with results.
_SUCCEEDED_SQL = (
    "(IFNULL(kling_status, '') = 'succeed' "
    "OR (state IN ('succeed', 'delivered') AND result_files != '[]'))"
)


class SqliteTaskQueries(SqliteDatabase):
    """The many-row reads of ``TaskStore`` on SQLite."""

    async def _many(self, sql: str, params: list[Any]) -> list[TaskRecord]:
        return [decode(row) for row in await self.fetch(sql, params)]

    async def in_states(
        self, states: Collection[TaskState], *, kind: TaskKind | None = None
    ) -> list[TaskRecord]:
        """Tasks in any of ``states``, oldest first, in one query."""
        values: list[Any] = state_values(states)
        if not values:
            return []
        sql = f"{SELECT} WHERE state IN ({placeholders(len(values))})"
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
            values = state_values(states)
            # An empty collection matches nothing (IN () is valid SQLite and is false).
            clauses.append(f"state IN ({placeholders(len(values))})")
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
            f"{SELECT}{where} ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?",
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
        rows = await self.fetch(f"SELECT COUNT(*) FROM tasks{where}", params)
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
        rows = await self.fetch(sql, params)
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
        for state, count in await self.fetch("SELECT state, n FROM state_counts"):
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
        values = state_values(FINAL_STATES)
        # "+state": keeps the planner off ix_tasks_state (every final task ever) and on the
        # partial index of the tasks whose files are still kept.
        rows = await self.fetch(
            "SELECT id FROM tasks WHERE files_removed_at IS NULL "
            f"AND +state IN ({placeholders(len(values))}) "
            "AND COALESCE(delivered_at, finished_at, updated_at) < ? ORDER BY created_at, id",
            [*values, ts],
        )
        return [int(row[0]) for row in rows]

    async def mark_files_removed(self, task_ids: Collection[int]) -> None:
        ids = list(task_ids)
        now = self.now()
        for start in range(0, len(ids), ID_CHUNK):
            chunk = ids[start : start + ID_CHUNK]
            await self.write(
                f"UPDATE tasks SET files_removed_at = ? WHERE id IN ({placeholders(len(chunk))})",
                [now, *chunk],
            )
