"""Coordination on SQLite: claims, the admission step, the queue order and the due polls.

Each method is one conditional statement, or one ``transaction()`` (BEGIN IMMEDIATE), so two
coroutines or two processes never take the same task or count the same free slot twice. Who
takes turns: ``admission_turns`` holds, per kind and member, the turn number of the member's
last admission; the next turn goes to the member with the lowest (no row: never admitted, so
first), ties by their oldest queued task.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from typing import Any

from bot.kling.models import TaskKind
from bot.tasks.models import (
    ClaimPurpose,
    QueuedTask,
    QueueSnapshot,
    TaskRecord,
    TaskState,
)
from bot.tasks.store.codec import RETURNING, decode, placeholders, state_values
from bot.tasks.store.sqlite import SqliteDatabase
from bot.tasks.store.transitions import check_claim_states
from bot.tasks.store.turns import fair_order

# Kling's word that a task ended: it holds no slot any more, whatever our row's state says.
_ENDED_AT_KLING = "('succeed', 'failed')"
# Written as the partial indexes' WHERE clauses are, so that the planner uses them.
_RUNNING = "state IN ('submitted', 'processing')"
_QUEUED = "state = 'queued'"
_FREE = "IFNULL(claim_until, 0) <= :now"  # no live claim (claim_until is NULL without one)

_HEAD_SQL = f"""
    SELECT t.id, t.slots
    FROM (SELECT MIN(id) AS id FROM tasks
          WHERE {_QUEUED} AND kind = :kind AND {_FREE}
          GROUP BY user_id) AS heads
    JOIN tasks AS t ON t.id = heads.id
    LEFT JOIN admission_turns AS a ON a.kind = t.kind AND a.user_id = t.user_id
    WHERE IFNULL(t.not_before, 0) <= :now
    ORDER BY a.turn IS NOT NULL, a.turn, t.id
    LIMIT 1
"""
_SLOTS_SQL = f"""
    SELECT (SELECT IFNULL(SUM(slots), 0) FROM tasks
            WHERE {_RUNNING} AND kind = :kind
              AND IFNULL(kling_status, '') NOT IN {_ENDED_AT_KLING})
         + (SELECT IFNULL(SUM(slots), 0) FROM tasks
            WHERE {_QUEUED} AND kind = :kind AND claim_purpose = 'admit' AND claim_until > :now)
"""
_TAKE_TURN_SQL = """
    INSERT INTO admission_turns (kind, user_id, turn)
    SELECT :kind, user_id,
           (SELECT IFNULL(MAX(turn), 0) + 1 FROM admission_turns WHERE kind = :kind)
    FROM tasks WHERE id = :id
    ON CONFLICT (kind, user_id) DO UPDATE SET turn = excluded.turn
"""


async def _next_in_line(
    run: Callable[[str, Mapping[str, Any]], Awaitable[Iterable[Any]]],
    names: Mapping[str, Any],
    bound: int | None,
) -> int | None:
    """The id of the task whose turn it is, if it fits within ``bound`` slots, else None."""
    heads = list(await run(_HEAD_SQL, names))
    if not heads:
        return None
    task_id, slots = heads[0]
    if bound is not None:
        (used,) = next(iter(await run(_SLOTS_SQL, names)))
        if used + slots > bound:
            return None  # its turn, and it does not fit: nobody overtakes it
    return int(task_id)


class SqliteCoordination(SqliteDatabase):
    """The coordination part of ``TaskStore`` on SQLite."""

    async def claim(
        self,
        task_id: int,
        purpose: ClaimPurpose | str,
        owner: str,
        *,
        until: float,
        states: Collection[TaskState],
        now: float,
    ) -> TaskRecord | None:
        purpose = ClaimPurpose(purpose)
        check_claim_states(purpose, states)
        sources = state_values(states)
        if not sources:
            return None
        rows = await self.write_returning(
            "UPDATE tasks SET claim_owner = ?, claim_purpose = ?, claim_until = ? "
            f"WHERE id = ? AND state IN ({placeholders(len(sources))}) "
            f"AND (claim_owner IS NULL OR claim_until <= ? OR claim_owner = ?) {RETURNING}",
            [owner, purpose.value, until, task_id, *sources, now, owner],
        )
        return decode(rows[0]) if rows else None

    async def renew_claim(self, task_id: int, owner: str, *, until: float) -> bool:
        changed = await self.write(
            "UPDATE tasks SET claim_until = ? WHERE id = ? AND claim_owner = ?",
            (until, task_id, owner),
        )
        return changed == 1

    async def release_claim(self, task_id: int, owner: str) -> None:
        await self.write(
            "UPDATE tasks SET claim_owner = NULL, claim_purpose = NULL, claim_until = NULL "
            "WHERE id = ? AND claim_owner = ?",
            (task_id, owner),
        )

    async def admit_next(
        self,
        kind: TaskKind,
        *,
        limit: int | None,
        owner: str,
        now: float,
        until: float,
        cap: int | None = None,
    ) -> TaskRecord | None:
        bound = min((b for b in (limit, cap) if b is not None), default=None)
        names: dict[str, Any] = {"kind": TaskKind(kind).value, "now": now}
        # Most steps find nothing to admit: a plain read says so without taking the file's
        # write lock; the transaction then decides again on what it sees.
        if await _next_in_line(self.fetch, names, bound) is None:
            return None
        async with self.transaction() as db:
            task_id = await _next_in_line(db.execute_fetchall, names, bound)
            if task_id is None:
                return None
            rows = list(
                await db.execute_fetchall(
                    "UPDATE tasks SET claim_owner = ?, claim_purpose = 'admit', claim_until = ? "
                    f"WHERE id = ? {RETURNING}",
                    (owner, until, task_id),
                )
            )
            await db.execute(_TAKE_TURN_SQL, {**names, "id": task_id})
        return decode(rows[0])

    async def queue_snapshot(self, kind: TaskKind, *, now: float) -> QueueSnapshot:
        names = {"kind": TaskKind(kind).value, "now": now}
        rows = await self.fetch(
            "SELECT t.id, t.user_id, a.turn, t.slots, t.not_before, t.created_at, "
            f"{_FREE} AS free FROM tasks AS t "
            "LEFT JOIN admission_turns AS a ON a.kind = t.kind AND a.user_id = t.user_id "
            f"WHERE {_QUEUED} AND t.kind = :kind ORDER BY t.user_id, t.id",
            names,
        )
        line = fair_order(
            (user_id, turn, QueuedTask(task_id, slots, not_before))
            for task_id, user_id, turn, slots, not_before, _, free in rows
            if free
        )
        return QueueSnapshot(
            line=tuple(line),
            queued=len(rows),
            oldest_created_at=min((row[5] for row in rows), default=None),
            slots_in_use=await self.slots_in_use(kind, now),
        )

    async def slots_in_use(self, kind: TaskKind, now: float) -> int:
        rows = await self.fetch(_SLOTS_SQL, {"kind": TaskKind(kind).value, "now": now})
        return int(rows[0][0])

    async def claim_due_polls(
        self, kind: TaskKind, *, now: float, until: float, owner: str, limit: int
    ) -> list[TaskRecord]:
        if limit <= 0:
            return []
        async with self.transaction() as db:
            due = [
                row[0]
                for row in await db.execute_fetchall(
                    f"SELECT id FROM tasks WHERE {_RUNNING} AND kind = ? "
                    "AND kling_task_id IS NOT NULL AND next_check_at <= ? "
                    "AND (claim_owner IS NULL OR claim_until <= ? OR claim_owner = ?) "
                    "ORDER BY next_check_at, id LIMIT ?",
                    (TaskKind(kind).value, now, now, owner, limit),
                )
            ]
            if not due:
                return []
            rows = await db.execute_fetchall(
                f"UPDATE tasks SET next_check_at = ? WHERE id IN ({placeholders(len(due))}) "
                f"{RETURNING}",
                (until, *due),
            )
        by_id = {record.id: record for record in map(decode, rows)}
        return [by_id[task_id] for task_id in due]

    async def next_poll_at(self) -> float | None:
        rows = await self.fetch(
            f"SELECT MIN(next_check_at) FROM tasks WHERE {_RUNNING} AND kling_task_id IS NOT NULL"
        )
        return rows[0][0]
