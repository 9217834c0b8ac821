"""The processes and their heartbeats on PostgreSQL (``ProcessRegistry``, see ``processes``).

A beat is one transaction: the process's row upserted, and its live claims extended in one
``UPDATE`` that the partial index ``ix_tasks_claim_owner`` serves through the range of its
owners (compared in byte order, ``COLLATE "C"``, as the index is built), whatever the number of
tasks. The beat locks only this process's own task rows, so beats of several processes never
wait for each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bot.tasks.models import ClaimPurpose
from bot.tasks.store.pg import PgDatabase, rows_changed
from bot.tasks.store.processes import FORGET_DEAD_AFTER, ProcessInfo, claim_owner_range

_UPSERT_SQL = """
    INSERT INTO processes (process_id, role, host, pid, started_at, beat_at, alive_until)
    VALUES ($1, $2, $3, $4, $5, $5, $6)
    ON CONFLICT (process_id) DO UPDATE SET
        role = EXCLUDED.role, host = EXCLUDED.host, pid = EXCLUDED.pid,
        beat_at = EXCLUDED.beat_at, alive_until = EXCLUDED.alive_until
"""
# "claim_owner IS NOT NULL" is the index's WHERE clause, written out so the planner uses it.
_OWNED = (
    'claim_owner IS NOT NULL AND claim_owner COLLATE "C" >= $1 AND claim_owner COLLATE "C" < $2'
)
_RELEASE_ALL_SQL = (
    f"UPDATE tasks SET claim_owner = NULL, claim_purpose = NULL, claim_until = NULL WHERE {_OWNED}"
)


def _extend_sql(purposes: Mapping[ClaimPurpose, float]) -> tuple[str, list[Any]]:
    """The UPDATE that moves each live claim's end to at least its purpose's time (the
    default ``$4``), never earlier: a claim held longer on purpose keeps its time. Its
    arguments after ``low, high, now, until``."""
    cases, args = "", list[Any]()
    for purpose, until in purposes.items():
        number = 5 + len(args)
        cases += f" WHEN ${number} THEN ${number + 1}::double precision"
        args += [ClaimPurpose(purpose).value, until]
    default = "$4::double precision"
    target = f"CASE claim_purpose{cases} ELSE {default} END" if purposes else default
    sql = (
        f"UPDATE tasks SET claim_until = GREATEST(claim_until, {target}) "
        f"WHERE {_OWNED} AND claim_until > $3"
    )
    return sql, args


class PgProcesses(PgDatabase):
    """The ``ProcessRegistry`` part of the task store on PostgreSQL."""

    async def beat(
        self,
        process_id: str,
        *,
        now: float,
        until: float,
        role: str,
        host: str,
        pid: int,
        until_by_purpose: Mapping[ClaimPurpose, float] | None = None,
    ) -> int:
        low, high = claim_owner_range(process_id)
        extend, purpose_args = _extend_sql(until_by_purpose or {})
        async with self.transaction() as connection:
            await connection.execute(_UPSERT_SQL, process_id, role, host, pid, now, until)
            status = await connection.execute(extend, low, high, now, until, *purpose_args)
            await connection.execute(
                "DELETE FROM processes WHERE alive_until < $1", now - FORGET_DEAD_AFTER
            )
        return rows_changed(status)

    async def processes(self, now: float) -> list[ProcessInfo]:
        rows = await self.fetch(
            "SELECT process_id, role, host, pid, started_at, beat_at, alive_until "
            "FROM processes WHERE alive_until > $1 ORDER BY started_at, process_id",
            now,
        )
        return [ProcessInfo(*row) for row in rows]

    async def forget_process(self, process_id: str) -> None:
        low, high = claim_owner_range(process_id)
        async with self.transaction() as connection:
            await connection.execute("DELETE FROM processes WHERE process_id = $1", process_id)
            await connection.execute(_RELEASE_ALL_SQL, low, high)
