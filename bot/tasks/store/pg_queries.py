"""Reads over many tasks on PostgreSQL (lists, counts, usage, metrics) and retention's marks.

The same queries as SQLite's (``sqlite_queries``), served by the same indexes; a list of
states or ids is one array parameter (``= ANY($n)``), whatever its length. ``usage`` adds up
Kling's credits texts with the codec's ``credits_number``, as SQLite does, so both stores read
"1.5", "n/a" or "1e999" alike: PostgreSQL groups the rows by member and credits text (a few
distinct texts), and the numbers are summed here.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

from bot.kling.models import TaskKind
from bot.tasks.models import FINAL_STATES, TaskRecord, TaskState, UsageRow
from bot.tasks.store.codec import SELECT, credits_number, state_values
from bot.tasks.store.pg import PgDatabase, task_record

log = logging.getLogger(__name__)

# For usage(): a task succeeded when Kling says so, or when it ended with results.
_SUCCEEDED_SQL = (
    "(COALESCE(kling_status, '') = 'succeed' "
    "OR (state IN ('succeed', 'delivered') AND result_files != '[]'))"
)
_ENDED_SQL = "state IN ('failed', 'delivered', 'undeliverable')"


class Arguments:
    """The values of a statement being built, each placed as ``$n`` in order."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def add(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


def filters(
    arguments: Arguments,
    guild_id: int | None,
    user_id: int | None,
    states: Collection[TaskState] | None,
    since: float | None,
) -> str:
    """The WHERE clause of the list, count and usage filters (``None`` matches everything)."""
    clauses: list[str] = []
    if guild_id is not None:
        clauses.append(f"guild_id = {arguments.add(guild_id)}")
    if user_id is not None:
        clauses.append(f"user_id = {arguments.add(user_id)}")
    if states is not None:
        # An empty collection matches nothing, as SQLite's "IN ()" does.
        clauses.append(f"state = ANY({arguments.add(state_values(states))}::text[])")
    if since is not None:
        clauses.append(f"created_at >= {arguments.add(since)}")
    return " WHERE " + " AND ".join(clauses) if clauses else ""


class PgTaskQueries(PgDatabase):
    """The many-row reads of ``TaskStore`` on PostgreSQL."""

    async def _many(self, sql: str, *args: Any) -> list[TaskRecord]:
        return [task_record(row) for row in await self.fetch(sql, *args)]

    async def in_states(
        self, states: Collection[TaskState], *, kind: TaskKind | None = None
    ) -> list[TaskRecord]:
        """Tasks in any of ``states``, oldest first, in one query."""
        values = state_values(states)
        if not values:
            return []
        arguments = Arguments()
        sql = f"{SELECT} WHERE state = ANY({arguments.add(values)}::text[])"
        if kind is not None:
            sql += f" AND kind = {arguments.add(TaskKind(kind).value)}"
        return await self._many(sql + " ORDER BY created_at, id", *arguments.values)

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
        arguments = Arguments()
        where = filters(arguments, guild_id, user_id, states, since)
        page = f"LIMIT {arguments.add(limit)} OFFSET {arguments.add(max(0, offset))}"
        return await self._many(
            f"{SELECT}{where} ORDER BY created_at DESC, id DESC {page}", *arguments.values
        )

    async def count_tasks(
        self,
        *,
        guild_id: int | None = None,
        user_id: int | None = None,
        states: Collection[TaskState] | None = None,
        since: float | None = None,
    ) -> int:
        arguments = Arguments()
        where = filters(arguments, guild_id, user_id, states, since)
        rows = await self.fetch(f"SELECT COUNT(*) FROM tasks{where}", *arguments.values)
        return int(rows[0][0])

    async def usage(
        self, *, guild_id: int | None, since: float, user_id: int | None = None
    ) -> list[UsageRow]:
        """Per-member usage of tasks created since ``since``; ``guild_id=None`` means all.

        succeeded: Kling reported success, or the task ended with results. failed: a task that
        reached delivery without succeeding (cancelled tasks are neither). credits: the sum of
        Kling's credits texts that are numbers.
        """
        arguments = Arguments()
        where = filters(arguments, guild_id, user_id, None, since)
        sql = f"""
            SELECT user_id, credits, COUNT(*),
                   SUM(CASE WHEN ok THEN 1 ELSE 0 END),
                   SUM(CASE WHEN NOT ok AND {_ENDED_SQL} THEN 1 ELSE 0 END)
            FROM (SELECT user_id, state, credits, {_SUCCEEDED_SQL} AS ok
                  FROM tasks{where}) AS scoped
            GROUP BY user_id, credits
        """
        totals: dict[int, list[float]] = {}
        for user, credits, tasks, succeeded, failed in await self.fetch(sql, *arguments.values):
            total = totals.setdefault(user, [0, 0, 0, 0.0])
            total[0] += tasks
            total[1] += succeeded
            total[2] += failed
            total[3] += (credits_number(credits) or 0.0) * tasks
        rows = [
            UsageRow(
                user_id=user,
                tasks=int(tasks),
                succeeded=int(succeeded),
                failed=int(failed),
                credits=float(credit_sum),
            )
            for user, (tasks, succeeded, failed, credit_sum) in totals.items()
        ]
        return sorted(rows, key=lambda row: (-row.credits, -row.tasks, row.user_id))

    async def counts_by_state(self) -> dict[TaskState, int]:
        """Every state, zero included (metrics want a stable set of series). Read from the
        counters the trigger keeps: a few rows, however many tasks are kept."""
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
        rows = await self.fetch(
            "SELECT id FROM tasks WHERE files_removed_at IS NULL "
            "AND state = ANY($1::text[]) "
            "AND COALESCE(delivered_at, finished_at, updated_at) < $2 ORDER BY created_at, id",
            state_values(FINAL_STATES),
            ts,
        )
        return [int(row[0]) for row in rows]

    async def mark_files_removed(self, task_ids: Collection[int]) -> None:
        ids = list(task_ids)
        if ids:
            await self.execute(
                "UPDATE tasks SET files_removed_at = $1 WHERE id = ANY($2::bigint[])",
                self.now(),
                ids,
            )
