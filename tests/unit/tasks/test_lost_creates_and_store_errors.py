"""Money and lost work: a create whose answer was lost stays tracked until Kling answers, a
finished task is posted once the store takes writes again, and inputs that cannot be written
end their task at once. Real parts throughout: the simulator over loopback, a real SQLite lock
held by a second connection, the fake Discord, a real full file system."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import bot.tasks.creates as creates_module
import bot.tasks.store.sqlite as sqlite_module
from bot.kling.images import PreparedImage
from bot.kling.models import TaskKind
from bot.kling.params import ImageParams
from bot.tasks.creates import MAX_CREATE_FAILURES
from bot.tasks.failures import describe_failure
from bot.tasks.models import (
    ACTIVE_STATES,
    ClaimPurpose,
    EventType,
    TaskEvent,
    TaskRecord,
    TaskState,
)
from bot.tasks.requests import stored_request
from kling_sim.simulator import KlingSimulator
from testing.discord_world import World, run_image, until
from testing.fake_discord import Recorded
from testing.paths import REPO_ROOT
from testing.settings import settings_for
from testing.tracker_harness import Harness, harness, origin, subject

# --- 1: a create that may have reached Kling is never failed blind ---------------------------


async def test_a_task_waiting_for_a_lookup_keeps_its_slots_and_leaves_its_members_line(
    simulator: KlingSimulator,
) -> None:
    """Member 1's first task (2 slots) is created; the answer is lost, so it waits for a lookup:
    held by admission, its slots stay counted, and the member's next task is not held up."""
    faults = simulator.config.faults
    faults.lost_create_response_rate, faults.hang_seconds = 1.0, 0.5
    settings = settings_for(simulator, kling_image_concurrency=3, kling_max_attempts=1)
    async with harness(settings) as h:
        first = await h.core.submit(
            TaskKind.IMAGE, ImageParams(prompt="x", n=2), [subject()], origin(1)
        )
        await h.wait_until(lambda: simulator.calls["create_image"] == 1)
        faults.lost_create_response_rate = 0.0
        faults.server_error_rate = 1.0  # lookups get no answer: it stays held
        held = await _held_for_lookup(h, first.id)
        assert await h.slots_used() == 2  # it may run at Kling: its slots stay counted
        second = await h.submit(user_id=1)
        await h.wait_until(lambda: simulator.calls["create_image"] == 2)
        assert (await _stored(h, second.id)).submit_attempts == 1  # not held up by the first
        assert await h.slots_used() == 3  # 3 of 3 slots counted
        third = await h.submit(user_id=2)
        await asyncio.sleep(0.3)
        assert (await _stored(h, third.id)).submit_attempts == 0  # no slot left for it
        again_at = h.core.admission.book.attempts[first.id].again_at
        assert again_at is not None and again_at == held.not_before


async def _stored(h: Harness, task_id: int) -> TaskRecord:
    record = await h.store.get(task_id)
    assert record is not None
    return record


async def _held_for_lookup(h: Harness, task_id: int) -> TaskRecord:
    """Wait until admission holds the queued task (its "admit" claim kept) for a lookup."""
    for _ in range(200):
        record = await _stored(h, task_id)
        live = (record.claim_until or 0) > time.time()
        if record.claim_purpose == ClaimPurpose.ADMIT and live and record.not_before:
            attempts = h.core.admission.book.attempts.get(task_id)
            if attempts is not None and attempts.again_at is not None:
                return record
        await asyncio.sleep(0.02)
    raise AssertionError(f"task {task_id} was never held for a lookup")


async def test_a_lost_create_stays_tracked_while_lookups_fail_and_across_a_restart(
    simulator: KlingSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The create reaches Kling but its answer is lost; every lookup then answers 5000 for far
    longer than the bot used to retry. The task is never failed, a restart keeps it, and once
    Kling answers it is followed to its result: created once, delivered once."""
    monkeypatch.setattr(creates_module, "MAX_BACKOFF", 0.05)  # fast lookups, same scenario
    faults = simulator.config.faults
    faults.lost_create_response_rate, faults.hang_seconds = 1.0, 0.5
    settings = settings_for(simulator, kling_max_attempts=1)
    first = await Harness(settings).open()
    record = await first.submit()
    await first.wait_until(lambda: simulator.calls["create_image"] == 1)
    faults.lost_create_response_rate, faults.server_error_rate = 0.0, 1.0  # queries fail now

    lookups_past_the_old_limit = 3 * MAX_CREATE_FAILURES
    await first.wait_until(
        lambda: (
            simulator.calls["get_image"] >= lookups_past_the_old_limit
            or first.outcomes(EventType.FAILED)
        )
    )
    stored = await first.store.get(record.id)
    assert stored is not None and stored.state is TaskState.QUEUED, stored
    assert first.outcomes(EventType.FAILED) == []
    assert await first.slots_used() == 1  # held: it may run at Kling
    await first.kill()
    await first.store.close()

    second = await Harness(settings).open()
    try:
        after_restart = simulator.calls["get_image"] + 5
        await second.wait_until(lambda: simulator.calls["get_image"] >= after_restart)
        stored = await second.store.get(record.id)
        assert stored is not None and stored.state is TaskState.QUEUED, stored
        assert stored.submit_attempts >= 1
        assert await second.slots_used() == 1

        faults.server_error_rate = 0.0  # Kling answers again
        done = await second.wait_for_state(record.id, {TaskState.DELIVERED})
        assert describe_failure(done) is None
        assert done.kling_task_id in simulator.tasks
        assert second.outcomes(EventType.COMPLETED) == [record.id]
        assert second.outcomes(EventType.FAILED) == []
        assert simulator.calls["create_image"] == 1 and len(simulator.tasks) == 1
        assert await second.slots_used() == 0
    finally:
        await second.close()


async def lose_the_images(h: Harness, record: TaskRecord) -> None:
    """The task's stored images are gone (deleted by hand, a disk lost), wherever they were."""
    if h.settings.input_storage == "files":
        shutil.rmtree(h.settings.data_dir / "inputs" / str(record.id))
    else:
        assert await h.stores.inputs.remove_inputs([record.id]) == 1


@pytest.mark.parametrize("storage", ["database", "files"])
async def test_unreadable_inputs_of_a_task_kling_runs_do_not_fail_it(
    simulator: KlingSimulator, storage: str
) -> None:
    """Killed while the create's answer hung; the stored images are gone at the restart.
    Kling has the task: it is followed and delivered, not failed for want of its inputs."""
    simulator.config.faults.lost_create_response_rate = 1.0
    simulator.config.faults.hang_seconds = 30.0
    settings = settings_for(simulator, input_storage=storage)
    first = await Harness(settings).open()
    record = await first.submit()
    await first.wait_until(lambda: simulator.calls["create_image"] == 1)
    await first.kill()
    await lose_the_images(first, record)
    await first.store.close()

    simulator.config.faults.lost_create_response_rate = 0.0
    second = await Harness(settings).open()
    try:
        done = await second.wait_for_state(record.id, {TaskState.DELIVERED})
        assert second.outcomes(EventType.FAILED) == []
        assert second.outcomes(EventType.COMPLETED) == [record.id]
        assert describe_failure(done) is None and done.kling_task_id in simulator.tasks
        assert simulator.calls["create_image"] == 1
    finally:
        await second.close()


@pytest.mark.parametrize("storage", ["database", "files"])
async def test_unreadable_inputs_of_a_task_kling_never_got_fail_with_the_true_reason(
    simulator: KlingSimulator, storage: str
) -> None:
    """The create answered 5000 (nothing made, but the bot cannot know that): at the restart
    the images are gone. Kling is asked first; it has no such task, so the task fails saying
    why, and that no credits were used."""
    simulator.config.faults.server_error_rate = 1.0
    settings = settings_for(simulator, kling_max_attempts=1, input_storage=storage)
    first = await Harness(settings).open()
    record = await first.submit()

    async def create_tried() -> bool:
        stored = await first.store.get(record.id)
        return stored is not None and stored.submit_attempts >= 1 and stored.not_before is not None

    await until(create_tried)
    await first.kill()
    await lose_the_images(first, record)
    await first.store.close()
    assert simulator.tasks == {}

    simulator.config.faults.server_error_rate = 0.0
    lookups_before = simulator.calls["get_image"]
    second = await Harness(settings).open()
    try:
        done = await second.wait_for_state(record.id, {TaskState.DELIVERED})
        assert second.outcomes(EventType.FAILED) == [record.id]
        reason = describe_failure(done) or ""
        assert "images" in reason and "no credits were used" in reason, reason
        assert simulator.calls["get_image"] > lookups_before  # Kling was asked first
        assert simulator.tasks == {}
    finally:
        await second.close()


@pytest.mark.parametrize("at_kling", [True, False])
async def test_a_maybe_created_task_too_big_for_a_lowered_limit_is_looked_up_first(
    simulator: KlingSimulator, at_kling: bool
) -> None:
    settings = settings_for(simulator, kling_image_concurrency=4)
    first = await Harness(settings).open(start=False)
    record = await first.core.submit(
        TaskKind.IMAGE, ImageParams(prompt="x", n=4), [subject()], origin(1)
    )
    if at_kling:  # the create reached Kling; its answer was lost
        await first.client.create_task(await stored_request(record, first.core.inputs, settings))
    await first.store.update(record.id, submit_attempts=1)
    await first.close()

    second = await Harness(settings.model_copy(update={"kling_image_concurrency": 2})).open()
    try:
        done = await second.wait_for_state(record.id, {TaskState.DELIVERED})
        assert simulator.calls["get_image"] >= 1  # asked Kling before deciding
        if at_kling:
            assert second.outcomes(EventType.COMPLETED) == [record.id]
            assert describe_failure(done) is None
        else:
            assert second.outcomes(EventType.FAILED) == [record.id]
            assert "at most 2" in (describe_failure(done) or "")
        assert simulator.calls["create_image"] == (1 if at_kling else 0)
    finally:
        await second.close()


# --- 2: a finished task is posted as soon as the store takes writes again -------------------


class WriteLock:
    """An exclusive write lock on the SQLite file, held by a second connection (as another
    process would): the bot's writes wait out their busy timeout and fail; reads go on (WAL)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn: sqlite3.Connection | None = None

    def take(self) -> None:
        conn = sqlite3.connect(self.path, timeout=5, isolation_level=None, check_same_thread=False)
        conn.execute("BEGIN EXCLUSIVE")
        self.conn = conn

    def release(self) -> None:
        if self.conn is not None:
            self.conn.execute("ROLLBACK")
            self.conn.close()
            self.conn = None


def _is_result_post(rec: Recorded, channel_id: int) -> bool:
    if rec.method != "POST" or rec.path != f"/channels/{channel_id}/messages":
        return False
    embeds = (rec.json or {}).get("embeds") or []
    return any("Task #" in ((e.get("footer") or {}).get("text") or "") for e in embeds)


@pytest.mark.parametrize("when", ["before the post", "after the post"])
async def test_a_result_is_posted_once_as_soon_as_the_store_takes_writes_again(
    world: World,
    monkeypatch: pytest.MonkeyPatch,
    when: str,
) -> None:
    monkeypatch.setattr(sqlite_module, "BUSY_TIMEOUT_MS", 100)  # a locked write fails quickly
    await world.start_bot()
    lock = WriteLock(world.settings.sqlite_path())
    if when == "before the post":
        # Subscribed after delivery: its job is created, then the lock is taken before the job
        # runs (nothing here awaits), so delivery's first store write meets the lock.
        async def lock_at_completion(event: TaskEvent) -> None:
            if event.type is EventType.COMPLETED and lock.conn is None:
                lock.take()

        world.tracker.subscribe(lock_at_completion)
    else:
        # The post is stored, then the store refuses "delivered": the retry must find the post.
        def lock_at_post(rec: Recorded) -> None:
            if _is_result_post(rec, world.channel_id) and lock.conn is None:
                lock.take()

        world.fake.request_hooks.append(lock_at_post)
    try:
        interaction = await run_image(world)
        await world.fake.wait_for_callback(interaction)
        await until(lambda: lock.conn is not None)
        await asyncio.sleep(1.0)  # several delivery attempts meet the lock
        assert await world.task_state(1) is TaskState.SUCCEED
        assert len(world.result_messages()) == (0 if when == "before the post" else 1)
    finally:
        lock.release()
    await world.wait_state(1, TaskState.DELIVERED)  # no restart: within seconds
    await asyncio.sleep(0.3)
    assert len(world.result_messages()) == 1


# --- 3: inputs that cannot be written -------------------------------------------------------


def noise_png(side: int = 200) -> bytes:
    """A PNG that does not compress: about 3 * side**2 bytes."""
    out = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(3 * side * side)).save(out, "PNG")
    return out.getvalue()


@contextlib.contextmanager
def tiny_tmpfs(where: Path, size: str = "64k") -> Iterator[Path]:
    """A real file system that fills up (needs root); skips the test where mounting fails."""
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


BALLAST = "ballast"  # removed when the test is done: the full disk has room again


@contextlib.contextmanager
def storage_that_refuses_writes(tmp_path: Path, how: str) -> Iterator[dict[str, Any]]:
    """Settings where the images cannot be written: under DATA_DIR (INPUT_STORAGE=files) a
    full disk or a file in the way; in the database (the default) a full disk under it."""
    data_dir = tmp_path / "data"
    database_url = f"sqlite:///{tmp_path / 'bot.db'}"
    if how == "database full":
        # Room for the schema and the task's row, not for a 1 MB image (SQLITE_FULL).
        with tiny_tmpfs(tmp_path / "full", size="512k") as database_dir:
            (database_dir / BALLAST).write_bytes(b"\0" * 64 * 1024)
            yield {"data_dir": data_dir, "database_url": f"sqlite:///{database_dir / 'bot.db'}"}
        return
    if how == "disk full":
        with tiny_tmpfs(tmp_path / "full") as full_dir:
            yield {"input_storage": "files", "data_dir": full_dir, "database_url": database_url}
        return
    data_dir.mkdir()
    (data_dir / "inputs").write_bytes(b"")  # a file where the directory should be
    yield {"input_storage": "files", "data_dir": data_dir, "database_url": database_url}


def files_under(directory: Path) -> list[Path]:
    return [path for path in directory.rglob("*") if path.is_file()]


@pytest.mark.parametrize("how", ["disk full", "inputs is not a directory", "database full"])
async def test_inputs_that_cannot_be_written_end_the_task_at_once(
    simulator: KlingSimulator, tmp_path: Path, how: str
) -> None:
    with storage_that_refuses_writes(tmp_path, how) as storage:
        settings = settings_for(simulator, **storage)
        h = await Harness(settings).open()
        try:
            side = 600 if how == "database full" else 200
            big = PreparedImage(
                label="subject2", data=noise_png(side), format="png", width=side, height=side,
                changes=(),
            )  # fmt: skip
            with pytest.raises(OSError) as caught:
                await h.core.submit(
                    TaskKind.IMAGE, ImageParams(prompt="a cat"), [subject(), big], origin(7)
                )
            message = str(caught.value)
            assert "could not store" in message and "no credits were used" in message, message
            [record] = await h.store.list_tasks()
            assert record.state in {TaskState.FAILED, TaskState.DELIVERED}, record.state
            assert describe_failure(record) == message
            assert await h.store.count_tasks(user_id=7, states=ACTIVE_STATES) == 0
            await h.wait_until(lambda: h.outcomes(EventType.FAILED) == [record.id])
            if how == "disk full":
                assert files_under(settings.data_dir) == []  # no first image, no temp file
            if how == "database full":
                assert await h.stores.inputs.read_inputs(record.id) == []  # not the first
                assert files_under(settings.data_dir) == []
            await asyncio.sleep(0.2)
            assert simulator.calls["create_image"] == 0
        finally:
            # The operator makes room: the store's close writes its id mark beside the file.
            (tmp_path / "full" / BALLAST).unlink(missing_ok=True)
            await h.close()


async def test_a_member_whose_images_cannot_be_stored_is_told_in_the_channel(
    world: World,
) -> None:
    """The command gets an answer (no endless "thinking"), and the task's failure is posted
    with its reason like any other; nothing reached Kling."""
    world.settings = world.settings.model_copy(update={"input_storage": "files"})
    world.settings.data_dir.mkdir(parents=True)
    (world.settings.data_dir / "inputs").write_bytes(b"")  # every image write fails
    await world.start_bot()
    interaction = await run_image(world)
    await world.fake.wait_for_callback(interaction)
    post = await world.wait_result()
    why = {f["name"]: f["value"] for f in post.embeds[0]["fields"]}["Why"]
    assert "could not store" in why and "no credits were used" in why, why
    answer = await world.first_followup(interaction)
    assert answer.ephemeral
    await world.wait_state(1, TaskState.DELIVERED)
    assert world.sim.tasks == {}


_WRITE_PAST_THE_FILE_SIZE_LIMIT = """
import resource, signal, sys
from pathlib import Path
from bot.tasks.files import write_atomically
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # over the limit a write fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
try:
    write_atomically(Path(sys.argv[1]) / "inputs" / "1" / "subject1.png", b"x" * 100_000)
except OSError as exc:
    print(exc.errno)
"""


def test_a_failed_atomic_write_removes_its_temporary_file(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _WRITE_PAST_THE_FILE_SIZE_LIMIT, str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO_ROOT,
    )
    assert result.stdout.strip() == str(errno.EFBIG), result  # EFBIG: the write really failed
    assert files_under(tmp_path) == []
