"""The ``ProcessRegistry`` contract: processes beat, and their claims live as long as they do.

Every test runs on each store of ``testing.store_contract.FACTORIES`` (SQLite, and PostgreSQL on a
fresh database; skipped without one), on a hand clock. What holds: a beat registers the process
and extends every live claim it holds (owners ``<process id>/...``, not a process whose id only
starts the same) to at least the beat's time, never shortening one; a process that stops
beating loses its claims a lease after its last beat, however long ago they were taken; a clean
stop (``forget_process``) gives them back at once.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import asyncpg
import pytest

from bot.tasks.models import ClaimPurpose, TaskState
from bot.tasks.store import (
    Stores,
    TaskStore,
    open_store,
    pg_processes,
    sqlite_processes,
)
from bot.tasks.store.processes import FORGET_DEAD_AFTER, claim_owner_range
from bot.tasks.store.schema import MIGRATIONS, statements
from testing.store_contract import Maker

LEASE = 30.0
P, Q = "aaaa", "bbbb"  # two process ids
QUEUED = [TaskState.QUEUED]


async def beat(store: TaskStore, process_id: str, now: float, **kw: object) -> int:
    return await store.beat(
        process_id,
        now=now,
        until=now + LEASE,
        role="worker",
        host="host-1",
        pid=4242,
        **kw,  # type: ignore[arg-type]
    )


async def take(store: TaskStore, task_id: int, owner: str, now: float) -> bool:
    record = await store.claim(
        task_id, ClaimPurpose.ADMIT, owner, until=now + LEASE, states=QUEUED, now=now
    )
    return record is not None


async def claim_until(store: TaskStore, task_id: int) -> float | None:
    record = await store.get(task_id)
    assert record is not None
    return record.claim_until


async def test_a_beat_registers_the_process_and_the_registry_lists_the_live_ones(
    tasks: TaskStore, second: Stores
) -> None:
    await beat(tasks, P, 1_000.0)
    await beat(tasks, Q, 1_005.0)
    await beat(tasks, P, 1_010.0)
    listed = await second.tasks.processes(1_020.0)  # another connection sees them too
    assert [p.process_id for p in listed] == [P, Q]  # oldest first
    first = listed[0]
    assert (first.role, first.host, first.pid) == ("worker", "host-1", 4242)
    assert (first.started_at, first.beat_at, first.alive_until) == (1_000.0, 1_010.0, 1_040.0)
    # Q's last beat held until 1035: at 1036 only P is alive.
    assert [p.process_id for p in await tasks.processes(1_036.0)] == [P]
    assert await tasks.processes(1_041.0) == []


async def test_a_beat_extends_every_live_claim_of_its_process_and_no_other(
    tasks: TaskStore, make: Maker
) -> None:
    mine = [await make(), await make()]
    similar = await make()  # a process whose id starts with P's
    other = await make()
    lapsed = await make()
    for n, task in enumerate(mine, 1):
        assert await take(tasks, task.id, f"{P}/{n}", 1_000.0)
    assert await take(tasks, similar.id, f"{P}x/1", 1_000.0)
    assert await take(tasks, other.id, f"{Q}/1", 1_000.0)
    assert await take(tasks, lapsed.id, f"{P}/9", 900.0)  # ran out at 930

    assert await beat(tasks, P, 1_020.0) == 2
    assert [await claim_until(tasks, task.id) for task in mine] == [1_050.0, 1_050.0]
    assert await claim_until(tasks, similar.id) == 1_030.0
    assert await claim_until(tasks, other.id) == 1_030.0
    assert await claim_until(tasks, lapsed.id) == 930.0  # not revived: another may hold it


async def test_a_beat_never_shortens_a_claim_and_gives_a_purpose_its_own_time(
    tasks: TaskStore, make: Maker
) -> None:
    held_long, delivering = await make(), await make()
    assert await tasks.transition(delivering.id, QUEUED, TaskState.SUCCEED)
    await tasks.claim(
        held_long.id, ClaimPurpose.ADMIT, f"{P}/1", until=1_500.0, states=QUEUED, now=1_000.0
    )
    await tasks.claim(
        delivering.id,
        ClaimPurpose.DELIVER,
        f"{P}/2",
        until=1_010.0,
        states=[TaskState.SUCCEED],
        now=1_000.0,
    )
    await beat(tasks, P, 1_005.0, until_by_purpose={ClaimPurpose.DELIVER: 1_015.0})
    assert await claim_until(tasks, held_long.id) == 1_500.0  # held for a lookup later
    assert await claim_until(tasks, delivering.id) == 1_015.0


async def test_claims_lapse_a_lease_after_the_last_beat_not_after_they_were_taken(
    tasks: TaskStore, second: Stores, make: Maker
) -> None:
    task = await make()
    assert await take(tasks, task.id, f"{P}/1", 1_000.0)  # until 1030 unless P beats
    for now in (1_010.0, 1_020.0, 1_030.0, 1_040.0):  # a slow download: P keeps beating
        await beat(tasks, P, now)
    other = second.tasks
    assert not await take(other, task.id, f"{Q}/1", 1_060.0)  # 30 s after the claim, held
    # P stopped beating at 1040: its claim is free a lease later, at 1070, not before.
    assert not await take(other, task.id, f"{Q}/1", 1_069.0)
    assert await take(other, task.id, f"{Q}/1", 1_070.0)
    record = await other.get(task.id)
    assert record is not None and record.claim_owner == f"{Q}/1"
    await beat(tasks, P, 1_071.0)  # P comes back: the claim is Q's now and stays Q's
    assert await claim_until(other, task.id) == 1_100.0


async def test_forget_process_gives_back_its_claims_and_leaves_the_others(
    tasks: TaskStore, second: Stores, make: Maker
) -> None:
    mine, theirs = await make(), await make()
    await beat(tasks, P, 1_000.0)
    await beat(tasks, Q, 1_000.0)
    assert await take(tasks, mine.id, f"{P}/1", 1_000.0)
    assert await take(tasks, theirs.id, f"{Q}/1", 1_000.0)
    await tasks.forget_process(P)
    assert [p.process_id for p in await tasks.processes(1_001.0)] == [Q]
    assert await take(second.tasks, mine.id, f"{Q}/2", 1_001.0)  # free at once
    record = await tasks.get(theirs.id)
    assert record is not None and record.claim_owner == f"{Q}/1"
    await tasks.forget_process("never-seen")  # nothing to do: no error


async def test_a_beat_forgets_processes_dead_for_a_day(tasks: TaskStore) -> None:
    await beat(tasks, P, 1_000.0)  # alive until 1030, then silent
    await beat(tasks, Q, 1_030.0 + FORGET_DEAD_AFTER - 1)
    assert [p.process_id for p in await tasks.processes(0.0)] == [P, Q]  # P: dead, still known
    await beat(tasks, Q, 1_030.0 + FORGET_DEAD_AFTER + 1)
    assert [p.process_id for p in await tasks.processes(0.0)] == [Q]  # P's row is gone


def test_claim_owner_range_holds_exactly_the_process_tokens() -> None:
    low, high = claim_owner_range("abc")
    inside = ["abc/", "abc/1", "abc/999", "abc/x/y"]
    outside = ["abc", "abc0", "abcd/1", "ab/1", "abc.1", "abd/1"]
    assert all(low <= owner < high for owner in inside)
    assert not any(low <= owner < high for owner in outside)
    with pytest.raises(ValueError):
        claim_owner_range("a/b")


def test_sqlite_beat_reads_the_claim_owner_index_not_every_task(tmp_path: Path) -> None:
    """The beat's UPDATE goes through the partial index on claim_owner (a range search)."""
    path = tmp_path / "plan.db"
    with sqlite3.connect(path) as db:
        for script in MIGRATIONS:
            for statement in statements(script):
                db.execute(statement)
        sql, names = sqlite_processes._extend_sql({ClaimPurpose.DELIVER: 2.0})
        values = {"until": 1.0, "now": 0.0, "low": "p/", "high": "p0", **names}
        plan = " ".join(row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}", values))
    assert "ix_tasks_claim_owner" in plan and "claim_owner>?" in plan.replace(" ", ""), plan


async def test_postgres_beat_can_read_the_claim_owner_index(postgres_url: str) -> None:
    """The same on PostgreSQL (the planner told not to scan, since the table is tiny here)."""
    async with open_store(postgres_url):  # migrated
        pass
    connection = await asyncpg.connect(postgres_url)
    try:
        await connection.execute("SET enable_seqscan = off")
        sql, args = pg_processes._extend_sql({ClaimPurpose.DELIVER: 2.0})
        rows = await connection.fetch(f"EXPLAIN {sql}", "p/", "p0", 0.0, 1.0, *args)
    finally:
        await connection.close()
    plan = "\n".join(row[0] for row in rows)
    assert "ix_tasks_claim_owner" in plan, plan
