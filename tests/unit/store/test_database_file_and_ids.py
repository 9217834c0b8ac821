"""The store under a swapped database file, task ids that never repeat, and /metrics counters.

Real SQLite files throughout: deleted, replaced by a backup, or left by a process that died
without closing them; /healthz is read over loopback from the real listener.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import sys
import tempfile
import textwrap
from contextlib import closing
from pathlib import Path
from subprocess import PIPE
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.tasks.models import TaskState
from bot.tasks.store import DatabaseFileChanged, SqliteTaskStore, idmark, schema
from kling_sim.simulator import KlingSimulator
from testing.paths import REPO_ROOT
from testing.store_records import create_tasks
from testing.tracker_harness import Harness, callback_settings

S = TaskState


def delete_database(path: Path) -> None:
    """What ``rm kling-bot.db*`` does: the file and its WAL and shared-memory companions."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def backup(path: Path, to: Path) -> None:
    """A consistent copy, as ``sqlite3 kling-bot.db '.backup x'`` makes it."""
    with closing(sqlite3.connect(path)) as source, closing(sqlite3.connect(to)) as target:
        source.backup(target)


def group_by_counts(path: Path) -> dict[TaskState, int]:
    counts = dict.fromkeys(TaskState, 0)
    with closing(sqlite3.connect(path)) as raw:
        for state, n in raw.execute("SELECT state, COUNT(*) FROM tasks GROUP BY state"):
            counts[TaskState(state)] = n
    return counts


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "kling-bot.db"


def store_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("bot.tasks.store") and r.levelno >= logging.ERROR
    ]


# --- point 4: the database file deleted or replaced under a running store -----------------------


async def test_a_deleted_database_file_fails_ping_with_one_error_line(
    db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with SqliteTaskStore(db_path) as store:
        await create_tasks(store)
        assert await store.ping()
        delete_database(db_path)
        assert not await store.ping()
        assert not await store.ping()  # still not ok, but said once
        errors = store_errors(caplog)
        assert len(errors) == 1, errors
        assert str(db_path) in errors[0] and "deleted" in errors[0]
        assert "restore" in errors[0].lower() and "restart" in errors[0]


async def test_a_database_file_replaced_by_a_backup_fails_ping(
    db_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with SqliteTaskStore(db_path) as store:
        await create_tasks(store, 2)
        backup(db_path, tmp_path / "backup.db")
        await create_tasks(store)
        os.replace(tmp_path / "backup.db", db_path)  # mv backup.db kling-bot.db
        assert not await store.ping()
        errors = store_errors(caplog)
        assert len(errors) == 1 and "replaced" in errors[0], errors


async def test_no_new_task_is_taken_once_the_file_is_gone(db_path: Path) -> None:
    async with SqliteTaskStore(db_path) as store:
        (running,) = await create_tasks(store)
        delete_database(db_path)
        with pytest.raises(DatabaseFileChanged, match="deleted"):
            await create_tasks(store)
        # Work already under way goes on (its results still reach the member).
        assert await store.transition(running.id, {S.QUEUED}, S.SUBMITTED)


async def test_healthz_answers_503_when_the_database_file_is_replaced(
    simulator: KlingSimulator, tmp_path: Path
) -> None:
    h = await Harness(callback_settings(simulator)).open(start=False)
    try:
        assert h.settings.public_base_url
        healthz = h.settings.public_base_url + "/healthz"
        async with h.session.get(healthz) as response:
            assert response.status == 200
        path = h.settings.sqlite_path()
        backup(path, tmp_path / "copy.db")
        os.replace(tmp_path / "copy.db", path)
        async with h.session.get(healthz) as response:
            assert response.status == 503
            assert (await response.json())["checks"]["store"] is False
    finally:
        await h.close()


# --- point 4: task ids never handed out twice ---------------------------------------------------


async def test_ids_continue_above_a_deleted_database(db_path: Path) -> None:
    async with SqliteTaskStore(db_path) as first:
        old = await create_tasks(first, 3)
    delete_database(db_path)
    async with SqliteTaskStore(db_path) as fresh:
        (new,) = await create_tasks(fresh)
    assert new.id > max(r.id for r in old)


async def test_ids_continue_above_a_restored_backup(db_path: Path, tmp_path: Path) -> None:
    async with SqliteTaskStore(db_path) as store:
        await create_tasks(store)
        backup(db_path, tmp_path / "backup.db")
        later = await create_tasks(store, 3)
    os.replace(tmp_path / "backup.db", db_path)
    async with SqliteTaskStore(db_path) as restored:
        (new,) = await create_tasks(restored)
    assert new.id > max(r.id for r in later)


async def test_ids_continue_above_a_database_deleted_while_open(db_path: Path) -> None:
    async with SqliteTaskStore(db_path) as store:
        old = await create_tasks(store, 2)
        delete_database(db_path)
    async with SqliteTaskStore(db_path) as fresh:
        (new,) = await create_tasks(fresh)
    assert new.id > max(r.id for r in old)


async def test_ids_continue_after_a_crash_and_a_deleted_database(db_path: Path) -> None:
    """A process that dies without closing the store leaves its reservation behind."""
    script = textwrap.dedent(
        f"""
        import asyncio, os
        from bot.tasks.store import SqliteTaskStore
        from testing.store_records import create_tasks

        async def main():
            store = SqliteTaskStore({str(db_path)!r})
            await store.open()
            records = await create_tasks(store, 2)
            print(max(r.id for r in records), flush=True)
            os._exit(0)  # no close: as a SIGKILL would leave it

        asyncio.run(main())
        """
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, cwd=REPO_ROOT, stdout=PIPE, stderr=PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    last_id = int(out)
    delete_database(db_path)
    async with SqliteTaskStore(db_path) as fresh:
        (new,) = await create_tasks(fresh)
    assert new.id > last_id


async def test_ids_continue_above_a_database_made_before_the_mark(db_path: Path) -> None:
    async with SqliteTaskStore(db_path) as old:
        records = await create_tasks(old, 3)
    idmark.id_mark_path(db_path).unlink()  # as a database from before this change
    async with SqliteTaskStore(db_path):
        pass  # opened by the new bot, which stops before taking any task
    delete_database(db_path)
    async with SqliteTaskStore(db_path) as fresh:
        (new,) = await create_tasks(fresh)
    assert new.id > max(r.id for r in records)


async def test_a_clean_restart_does_not_skip_ids(db_path: Path) -> None:
    async with SqliteTaskStore(db_path) as store:
        (first,) = await create_tasks(store)
    async with SqliteTaskStore(db_path) as store:
        (second,) = await create_tasks(store)
    assert second.id == first.id + 1  # the unused rest of the reserved block is given back


async def test_the_id_mark_is_written_once_per_block(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(idmark, "ID_BLOCK", 10)
    mark = idmark.id_mark_path(db_path)
    writes: list[int] = []
    real_write = idmark.write_id_mark

    def counting_write(path: Path, value: int) -> None:
        writes.append(value)
        real_write(path, value)

    monkeypatch.setattr(idmark, "write_id_mark", counting_write)
    async with SqliteTaskStore(db_path) as store:
        await create_tasks(store)
        assert mark.read_text().strip() == "10"  # ids 1..10 reserved before #1 is handed out
        await create_tasks(store, 9)
        assert writes == [10]
        await create_tasks(store)
        assert writes == [10, 20] and mark.read_text().strip() == "20"
    assert mark.read_text().strip() == "11"  # closed: only what was handed out stays reserved


async def test_a_garbled_id_mark_refuses_to_open(db_path: Path) -> None:
    async with SqliteTaskStore(db_path) as store:
        await create_tasks(store)
    idmark.id_mark_path(db_path).write_text("not a number")
    with pytest.raises(RuntimeError, match="highest task id"):
        await SqliteTaskStore(db_path).open()


# --- point 7: tasks per state from counters -------------------------------------------------------


async def test_an_existing_database_is_carried_over_with_its_counts_and_ids(
    db_path: Path, old_database: Any, row: Any
) -> None:
    # The schema before counters (version 2): five tasks, #5 deleted since.
    states = ["processing", "failed", "queued", "queued", "queued"]
    old_database(db_path, 2, [row(n, state) for n, state in enumerate(states, 1)], delete=[5])
    async with SqliteTaskStore(db_path) as upgraded:
        assert await upgraded.schema_version() == len(schema.MIGRATIONS)
        counts = await upgraded.counts_by_state()
        assert counts == group_by_counts(db_path)
        assert (counts[S.QUEUED], counts[S.PROCESSING], counts[S.FAILED]) == (2, 1, 1)
        (new,) = await create_tasks(upgraded)
        assert new.id == 6  # the deleted #5 is not handed out again
        await upgraded.transition(3, {S.QUEUED}, S.CANCELLED)
        assert await upgraded.counts_by_state() == group_by_counts(db_path)


_op = st.one_of(
    st.tuples(st.just("create"), st.integers(1, 3)),
    st.tuples(st.just("move"), st.integers(0, 30), st.sampled_from(list(TaskState))),
    st.tuples(st.just("delete"), st.integers(0, 30)),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(_op, max_size=25))
def test_counts_match_a_group_by_after_any_mix_of_changes(ops: list[tuple]) -> None:
    async def scenario(path: Path) -> None:
        async with SqliteTaskStore(path) as store:
            ids: list[int] = []
            for op in ops:
                if op[0] == "create":
                    ids += [r.id for r in await create_tasks(store, op[1])]
                elif op[0] == "move" and ids:
                    task_id = ids[op[1] % len(ids)]
                    await store.transition(task_id, set(TaskState), op[2])
                elif op[0] == "delete" and ids:
                    await store.db.execute(
                        "DELETE FROM tasks WHERE id = ?", (ids.pop(op[1] % len(ids)),)
                    )
                assert await store.counts_by_state() == group_by_counts(path)

    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(scenario(Path(tmp) / "t.db"))


FILL = """
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)
INSERT INTO tasks (kind, provider, simulated, external_task_id, state, slots, channel_id,
                   user_id, created_at, updated_at)
SELECT 'image', 'simulator', 1, 'ext-' || i, CASE i % 3 WHEN 0 THEN 'delivered' ELSE 'queued' END,
       1, 1, 1, i, i FROM n
"""


async def _counting_steps(path: Path, rows: int) -> int:
    """SQLite VM instructions counts_by_state takes over ``rows`` tasks."""
    async with SqliteTaskStore(path) as store:
        await store.db.execute(FILL, (rows,))
        steps = 0

        def step() -> int:
            nonlocal steps
            steps += 1
            return 0  # go on

        await store.db.set_progress_handler(step, 1)
        counts = await store.counts_by_state()
        await store.db.set_progress_handler(None, 1)
        assert sum(counts.values()) == rows
        return steps


async def test_counts_by_state_does_not_scan_the_tasks(tmp_path: Path) -> None:
    small = await _counting_steps(tmp_path / "small.db", 100)
    large = await _counting_steps(tmp_path / "large.db", 100_000)
    assert large <= small + 20, (small, large)  # bounded, not proportional to the rows


def test_a_member_is_told_in_words_when_the_database_file_is_gone() -> None:
    """The refusal reaches the member as a sentence, not as a bare "error id"."""
    from discord import app_commands

    from bot.discord.errors import KlingCommandTree

    async def image(interaction: object) -> None: ...

    command = app_commands.Command(name="image", description="d", callback=image)
    error = app_commands.CommandInvokeError(command, DatabaseFileChanged("gone"))
    message = KlingCommandTree.message_for(error)
    assert message is not None
    assert "database file was deleted or replaced" in message
    assert "no credits were used" in message
