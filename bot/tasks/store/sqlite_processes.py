"""The processes and their heartbeats on SQLite (``ProcessRegistry``, see ``processes``).

A beat is one ``transaction()``: the process's row upserted, and its live claims extended in one
``UPDATE`` that the partial index ``ix_tasks_claim_owner`` serves through the range of its
owners, whatever the number of tasks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bot.tasks.models import ClaimPurpose
from bot.tasks.store.processes import FORGET_DEAD_AFTER, ProcessInfo, claim_owner_range
from bot.tasks.store.sqlite import SqliteDatabase

_UPSERT_SQL = """
    INSERT INTO processes (process_id, role, host, pid, started_at, beat_at, alive_until)
    VALUES (:process_id, :role, :host, :pid, :now, :now, :until)
    ON CONFLICT (process_id) DO UPDATE SET
        role = excluded.role, host = excluded.host, pid = excluded.pid,
        beat_at = excluded.beat_at, alive_until = excluded.alive_until
"""
# "claim_owner IS NOT NULL" is the index's WHERE clause, written out so the planner uses it.
_OWNED = "claim_owner IS NOT NULL AND claim_owner >= :low AND claim_owner < :high"
_FORGET_DEAD_SQL = "DELETE FROM processes WHERE alive_until < :forget_before"
_RELEASE_ALL_SQL = (
    f"UPDATE tasks SET claim_owner = NULL, claim_purpose = NULL, claim_until = NULL WHERE {_OWNED}"
)


def _extend_sql(purposes: Mapping[ClaimPurpose, float]) -> tuple[str, dict[str, Any]]:
    """The UPDATE that moves each live claim's end to at least its purpose's time (the
    default ``:until``), never earlier: a claim held longer on purpose keeps its time."""
    cases = "".join(f" WHEN :p{i} THEN :u{i}" for i in range(len(purposes)))
    names: dict[str, Any] = {}
    for i, (purpose, until) in enumerate(purposes.items()):
        names.update({f"p{i}": ClaimPurpose(purpose).value, f"u{i}": until})
    target = f"CASE claim_purpose{cases} ELSE :until END" if purposes else ":until"
    sql = (
        f"UPDATE tasks SET claim_until = MAX(claim_until, {target}) "
        f"WHERE {_OWNED} AND claim_until > :now"
    )
    return sql, names


class SqliteProcesses(SqliteDatabase):
    """The ``ProcessRegistry`` part of the task store on SQLite."""

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
        extend, purpose_names = _extend_sql(until_by_purpose or {})
        names = {
            "process_id": process_id,
            "role": role,
            "host": host,
            "pid": pid,
            "now": now,
            "until": until,
            "low": low,
            "high": high,
            "forget_before": now - FORGET_DEAD_AFTER,
            **purpose_names,
        }
        async with self.transaction() as db:
            await db.execute(_UPSERT_SQL, names)
            async with db.execute(extend, names) as cursor:
                extended = cursor.rowcount
            await db.execute(_FORGET_DEAD_SQL, names)
        return extended

    async def processes(self, now: float) -> list[ProcessInfo]:
        rows = await self.fetch(
            "SELECT process_id, role, host, pid, started_at, beat_at, alive_until "
            "FROM processes WHERE alive_until > ? ORDER BY started_at, process_id",
            (now,),
        )
        return [ProcessInfo(*row) for row in rows]

    async def forget_process(self, process_id: str) -> None:
        low, high = claim_owner_range(process_id)
        async with self.transaction() as db:
            await db.execute("DELETE FROM processes WHERE process_id = ?", (process_id,))
            await db.execute(_RELEASE_ALL_SQL, {"low": low, "high": high})
