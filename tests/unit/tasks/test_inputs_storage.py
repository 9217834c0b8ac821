"""Where a task's prepared input images are kept (``INPUT_STORAGE``), through the task core.

``database`` (the default): in the store, so a process on another machine (another DATA_DIR)
creates the task after a takeover and repeats it ("Again"); ``files``: under DATA_DIR as
before. A task stored as files by an older bot is still read after the upgrade, retention
removes the images either way, and a database slow to give them delays a create, never fails
it. The task core runs against the real simulator over loopback, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg
import pytest

import bot.tasks.store.pg as pg_module
from bot.tasks.failures import describe_failure
from bot.tasks.models import EventType, TaskState
from bot.tasks.store import MIGRATIONS, schema
from kling_sim.simulator import KlingSimulator
from testing.settings import settings_for
from testing.tracker_harness import Harness, harness, origin, subject

ORIGINAL = subject().data  # the image every Harness.submit sends


@pytest.fixture(params=["sqlite", "postgres"])
def shared_database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database two machines share: one SQLite file, or a fresh PostgreSQL database."""
    if request.param == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return f"sqlite:///{tmp_path / 'shared.db'}"


async def test_the_images_are_kept_in_the_database_by_default(simulator: KlingSimulator) -> None:
    settings = settings_for(simulator)
    assert settings.input_storage == "database"
    h = await Harness(settings).open(start=False)
    try:
        record = await h.submit()
        assert record.input_files == [f"db:{record.id}/subject1.png"]
        stored = await h.store.get(record.id)
        assert stored is not None and stored.input_files == record.input_files
        assert await h.stores.inputs.read_inputs(record.id) == [("subject1", ORIGINAL)]
        assert not (settings.data_dir / "inputs").exists()  # nothing on this machine's disk
    finally:
        await h.close()


async def test_another_machine_creates_and_repeats_a_task_from_the_database(
    simulator: KlingSimulator, shared_database: str
) -> None:
    """Machine A takes the task in and stops; machine B (its own DATA_DIR, the same database)
    creates it at Kling and repeats it with "Again": the images come from the database."""
    first = await Harness(settings_for(simulator, database_url=shared_database)).open(start=False)
    record = await first.submit()
    await first.close()

    other_machine = settings_for(simulator, database_url=shared_database)
    async with harness(other_machine) as second:
        done = await second.wait_for_state(record.id, {TaskState.DELIVERED})
        assert second.outcomes(EventType.COMPLETED) == [record.id], done.failure_code
        again = await second.core.resubmit(record.id, origin(2))
        assert await second.core.input_bytes(again) == [("subject1", ORIGINAL)]
        await second.wait_for_state(again.id, {TaskState.DELIVERED})
        assert second.outcomes(EventType.COMPLETED) == [record.id, again.id]
        assert simulator.calls["create_image"] == 2
        assert not (other_machine.data_dir / "inputs").exists()


async def test_files_storage_keeps_the_images_under_the_data_dir(
    simulator: KlingSimulator,
) -> None:
    settings = settings_for(simulator, input_storage="files")
    async with harness(settings) as h:
        record = await h.submit()
        assert record.input_files == [f"inputs/{record.id}/subject1.png"]
        assert (settings.data_dir / record.input_files[0]).read_bytes() == ORIGINAL
        assert await h.stores.inputs.read_inputs(record.id) == []
        await h.wait_for_state(record.id, {TaskState.DELIVERED})
        again = await h.core.resubmit(record.id, origin(2))
        assert again.input_files == [f"inputs/{again.id}/subject1.png"]
        assert await h.core.input_bytes(again) == [("subject1", ORIGINAL)]


async def test_a_task_stored_as_files_before_the_upgrade_is_still_read(
    simulator: KlingSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bot before this change (schema 4, images under DATA_DIR) took a task in and
    stopped; the upgraded bot (schema 5, images in the database) creates it from its files
    and repeats it into the database."""
    monkeypatch.setattr(schema, "MIGRATIONS", MIGRATIONS[:4])
    before = settings_for(simulator, input_storage="files")
    old = await Harness(before).open(start=False)
    record = await old.submit()
    assert await old.store.schema_version() == 4  # type: ignore[attr-defined]
    await old.close()
    monkeypatch.setattr(schema, "MIGRATIONS", MIGRATIONS)

    upgraded = before.model_copy(update={"input_storage": "database"})
    async with harness(upgraded) as h:
        assert await h.store.schema_version() == len(MIGRATIONS)  # type: ignore[attr-defined]
        done = await h.wait_for_state(record.id, {TaskState.DELIVERED})
        assert h.outcomes(EventType.COMPLETED) == [record.id], done.failure_code
        assert done.input_files == [f"inputs/{record.id}/subject1.png"]
        assert await h.core.input_bytes(done) == [("subject1", ORIGINAL)]
        again = await h.core.resubmit(record.id, origin(2))
        assert again.input_files == [f"db:{again.id}/subject1.png"]
        assert await h.stores.inputs.read_inputs(again.id) == [("subject1", ORIGINAL)]


async def test_retention_removes_the_images_kept_in_the_database(
    simulator: KlingSimulator,
) -> None:
    async with harness(settings_for(simulator, retention_days=1)) as h:
        record = await h.submit()
        done = await h.wait_for_state(record.id, {TaskState.DELIVERED})
        retention = h.core.retention
        assert await retention.cleanup_files() == 0  # too recent
        retention.clock = lambda: time.time() + 2 * 86400
        assert await retention.cleanup_files() == 2  # the stored images and the results
        assert await h.stores.inputs.read_inputs(record.id) == []
        assert not h.core.result_paths(done)[0].exists()
        with pytest.raises(FileNotFoundError, match="deleted after 1 days"):
            await h.core.resubmit(record.id, origin(2))
        with pytest.raises(FileNotFoundError):
            await h.core.input_bytes(done)


async def test_a_database_slow_to_give_the_images_delays_the_create_and_fails_nothing(
    simulator: KlingSimulator, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read that times out (TimeoutError, an OSError) says nothing about the images being
    gone: the create is tried again once the database answers."""
    settings = settings_for(simulator, database_url=postgres_url)
    first = await Harness(settings).open(start=False)
    record = await first.submit()
    await first.close()

    monkeypatch.setattr(pg_module, "COMMAND_TIMEOUT", 0.3)  # a read waiting this long raises
    blocker = await asyncpg.connect(postgres_url)
    locked = blocker.transaction()
    await locked.start()
    await blocker.execute("LOCK TABLE task_inputs IN ACCESS EXCLUSIVE MODE")
    async with harness(settings) as h:
        try:
            await asyncio.sleep(1.0)  # the first create's read timed out meanwhile
            stored = await h.store.get(record.id)
            assert stored is not None and stored.state is TaskState.QUEUED, describe_failure(stored)
        finally:
            await locked.rollback()
            await blocker.close()
        done = await h.wait_for_state(record.id, {TaskState.DELIVERED}, limit=20)
        assert h.outcomes(EventType.COMPLETED) == [record.id], describe_failure(done)
        assert simulator.calls["create_image"] == 1
