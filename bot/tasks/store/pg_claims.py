"""Coordination on PostgreSQL: claims, the admission step, the queue order and the due polls.

The same rules as SQLite's (``sqlite_claims``), shared by any number of processes:

- ``claim``, ``renew_claim``, ``release_claim``: one conditional ``UPDATE ... RETURNING``. A
  second claimer waits for the first's row lock and re-checks the condition on the row as the
  first left it, so exactly one of them gets the task.
- ``admit_next``: a transaction holding ``pg_advisory_xact_lock(LOCK_NAMESPACE,
  admission_lock(kind))`` around "whose turn, slots in use, claim it": two processes admitting
  the same kind take turns at that lock, so each counts the slots the other just claimed (READ
  COMMITTED: every statement sees what was committed before it began) and a free slot is
  handed out once. Kinds do not wait for each other. (The head's row lock alone would not do:
  a newcomer's task can become the head between one process's count and its claim.)
- ``claim_due_polls``: one statement, ``SELECT ... FOR UPDATE SKIP LOCKED`` then the move of
  ``next_check_at``: a task another poller is taking is skipped, not waited for, and never
  handed out twice.
"""

from __future__ import annotations

from collections.abc import Collection

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from bot.kling.models import TaskKind
from bot.tasks.models import (
    ClaimPurpose,
    QueuedTask,
    QueueSnapshot,
    TaskRecord,
    TaskState,
)
from bot.tasks.store.codec import COLUMNS, RETURNING, decode, state_values
from bot.tasks.store.pg import LOCK_NAMESPACE, PgDatabase, admission_lock, task_record
from bot.tasks.store.transitions import check_claim_states
from bot.tasks.store.turns import fair_order

# Kling's word that a task ended: it holds no slot any more, whatever our row's state says.
_ENDED_AT_KLING = "('succeed', 'failed')"
# Written as the partial indexes' WHERE clauses are, so that the planner uses them.
_RUNNING = "state IN ('submitted', 'processing')"
_QUEUED = "state = 'queued'"

# The admission queries take $1 = kind, $2 = now.
_SLOTS_SQL = f"""
    SELECT (SELECT COALESCE(SUM(slots), 0) FROM tasks
            WHERE {_RUNNING} AND kind = $1
              AND COALESCE(kling_status, '') NOT IN {_ENDED_AT_KLING})
         + (SELECT COALESCE(SUM(slots), 0) FROM tasks
            WHERE {_QUEUED} AND kind = $1 AND claim_purpose = 'admit' AND claim_until > $2)
"""
# The head whose turn it is (each member's oldest free queued task; the member admitted
# longest ago first, never admitted before all), with the slots in use; no row: nobody waits.
_NEXT_IN_LINE_SQL = f"""
    WITH head AS (
        SELECT t.id, t.slots
        FROM (SELECT MIN(id) AS id FROM tasks
              WHERE {_QUEUED} AND kind = $1 AND COALESCE(claim_until, 0) <= $2
              GROUP BY user_id) AS heads
        JOIN tasks AS t ON t.id = heads.id
        LEFT JOIN admission_turns AS a ON a.kind = t.kind AND a.user_id = t.user_id
        WHERE COALESCE(t.not_before, 0) <= $2
        ORDER BY a.turn IS NOT NULL, a.turn, t.id
        LIMIT 1
    )
    SELECT head.id, head.slots, ({_SLOTS_SQL}) FROM head
"""
# Claim the head for "admit" and send its member to the back of the turns, in one statement.
# The claim is checked again: a claim() outside admission may have taken the task meanwhile.
_ADMIT_SQL = f"""
    WITH taken AS (
        UPDATE tasks SET claim_owner = $1, claim_purpose = 'admit', claim_until = $2
        WHERE id = $3 AND {_QUEUED} AND COALESCE(claim_until, 0) <= $4
        {RETURNING}
    ), turn AS (
        INSERT INTO admission_turns (kind, user_id, turn)
        SELECT kind, user_id,
               (SELECT COALESCE(MAX(turn), 0) + 1 FROM admission_turns WHERE kind = taken.kind)
        FROM taken
        ON CONFLICT (kind, user_id) DO UPDATE SET turn = excluded.turn
    )
    SELECT * FROM taken
"""
# Heads picked again when the one picked was claimed meanwhile (rare: a lookup's claim).
_PICKS = 3

_DUE_POLLS_SQL = f"""
    WITH due AS (
        SELECT id, next_check_at AS due_at FROM tasks
        WHERE {_RUNNING} AND kind = $1 AND kling_task_id IS NOT NULL AND next_check_at <= $2
          AND (claim_owner IS NULL OR claim_until <= $2 OR claim_owner = $3)
        ORDER BY next_check_at, id
        LIMIT $4
        FOR UPDATE SKIP LOCKED
    )
    UPDATE tasks AS t SET next_check_at = $5 FROM due WHERE t.id = due.id
    RETURNING due.due_at, {", ".join(f"t.{name}" for name in COLUMNS)}
"""

_Runner = asyncpg.Pool | PoolConnectionProxy


async def _next_in_line(run: _Runner, kind: str, now: float, bound: int | None) -> int | None:
    """The id of the task whose turn it is, if it fits within ``bound`` slots, else None."""
    rows = await run.fetch(_NEXT_IN_LINE_SQL, kind, now)
    if not rows:
        return None
    task_id, slots, used = rows[0]
    if bound is not None and used + slots > bound:
        return None  # its turn, and it does not fit: nobody overtakes it
    return int(task_id)


class PgCoordination(PgDatabase):
    """The coordination part of ``TaskStore`` on PostgreSQL."""

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
        rows = await self.fetch(
            "UPDATE tasks SET claim_owner = $1, claim_purpose = $2, claim_until = $3 "
            "WHERE id = $4 AND state = ANY($5::text[]) "
            f"AND (claim_owner IS NULL OR claim_until <= $6 OR claim_owner = $1) {RETURNING}",
            owner,
            purpose.value,
            until,
            task_id,
            sources,
            now,
        )
        return task_record(rows[0]) if rows else None

    async def renew_claim(self, task_id: int, owner: str, *, until: float) -> bool:
        changed = await self.execute(
            "UPDATE tasks SET claim_until = $1 WHERE id = $2 AND claim_owner = $3",
            until,
            task_id,
            owner,
        )
        return changed == 1

    async def release_claim(self, task_id: int, owner: str) -> None:
        await self.execute(
            "UPDATE tasks SET claim_owner = NULL, claim_purpose = NULL, claim_until = NULL "
            "WHERE id = $1 AND claim_owner = $2",
            task_id,
            owner,
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
        kind_value = TaskKind(kind).value
        # Most steps find nothing to admit: a plain read says so without taking the lock; the
        # transaction then decides again on what it sees.
        if await _next_in_line(self.pool, kind_value, now, bound) is None:
            return None
        async with self.transaction() as connection:
            await connection.execute(
                "SELECT pg_advisory_xact_lock($1, $2)", LOCK_NAMESPACE, admission_lock(kind)
            )
            for _ in range(_PICKS):
                task_id = await _next_in_line(connection, kind_value, now, bound)
                if task_id is None:
                    return None
                rows = await connection.fetch(_ADMIT_SQL, owner, until, task_id, now)
                if rows:
                    return task_record(rows[0])
        return None

    async def queue_snapshot(self, kind: TaskKind, *, now: float) -> QueueSnapshot:
        rows = await self.fetch(
            "SELECT t.id, t.user_id, a.turn, t.slots, t.not_before, t.created_at, "
            "COALESCE(t.claim_until, 0) <= $2 AS free FROM tasks AS t "
            "LEFT JOIN admission_turns AS a ON a.kind = t.kind AND a.user_id = t.user_id "
            f"WHERE t.{_QUEUED} AND t.kind = $1 ORDER BY t.user_id, t.id",
            TaskKind(kind).value,
            now,
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
        rows = await self.fetch(_SLOTS_SQL, TaskKind(kind).value, now)
        return int(rows[0][0])

    async def claim_due_polls(
        self, kind: TaskKind, *, now: float, until: float, owner: str, limit: int
    ) -> list[TaskRecord]:
        if limit <= 0:
            return []
        rows = await self.fetch(_DUE_POLLS_SQL, TaskKind(kind).value, now, owner, limit, until)
        # Earliest first, as they were due (RETURNING keeps no order).
        rows.sort(key=lambda row: (row[0], row[1]))
        return [decode(tuple(row)[1:]) for row in rows]

    async def next_poll_at(self) -> float | None:
        rows = await self.fetch(
            f"SELECT MIN(next_check_at) FROM tasks WHERE {_RUNNING} AND kling_task_id IS NOT NULL"
        )
        value: float | None = rows[0][0]
        return value
