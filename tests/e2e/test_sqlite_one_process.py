"""SQLite serves one process: a second read-write store on the same database file, in this
process or another one (a second ``kling-bot run``), is refused with one line naming PostgreSQL;
readers are not, ``:memory:`` takes no lock, and a killed process leaves no stale lock."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp.test_utils import unused_port

from bot.config import ConfigError
from bot.tasks.store import SqliteTaskStore, open_store, task_rows
from bot.tasks.store.idmark import id_mark_path
from bot.text import t
from kling_sim.simulator import KlingSimulator, SimulatorConfig
from testing.bot_process import TOKEN, BotProcess, bot_env
from testing.fake_discord import FakeDiscord
from testing.paths import REPO_ROOT
from testing.store_records import create_tasks

EXIT_CONFIG = 3


def refusal(pid: int, db_path: Path) -> str:
    return t("store.sqlite.one_process", pid=pid, path=db_path)


def assert_names_the_way_out(message: str) -> None:
    assert "SQLite serves one process" in message
    assert "DATABASE_URL=postgresql://" in message


# --- in one process ---------------------------------------------------------------------------


async def test_a_second_store_on_the_same_file_is_refused_until_the_first_closes(
    tmp_path: Path,
) -> None:
    db_path = tmp_path / "bot.db"
    async with SqliteTaskStore(db_path) as first:
        await create_tasks(first)
        second = SqliteTaskStore(db_path)
        with pytest.raises(ConfigError) as refused:
            await second.open()
        assert str(refused.value) == refusal(os.getpid(), db_path)
        assert_names_the_way_out(str(refused.value))
        assert not await second.ping()
        assert await first.ping()  # the first store is untouched by the refusal
    async with SqliteTaskStore(db_path) as after:  # closing the first released the lock
        assert await after.count_tasks() == 1


async def test_open_store_refuses_a_second_url_on_the_same_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'bot.db'}"
    async with open_store(url):
        with pytest.raises(ConfigError, match="SQLite serves one process"):
            await open_store(url).open()


async def test_readers_are_not_refused(tmp_path: Path) -> None:
    db_path = tmp_path / "bot.db"
    async with SqliteTaskStore(db_path) as store:
        (task,) = await create_tasks(store)
        rows = task_rows(f"sqlite:///{db_path}")  # what the suites and the bench use
    assert [row["id"] for row in rows] == [task.id]


async def test_memory_databases_take_no_lock() -> None:
    async with open_store("sqlite:///:memory:"), open_store("sqlite:///:memory:") as second:
        assert await second.ping()  # each its own database: nothing to share, nothing refused


async def test_a_store_that_fails_to_open_releases_the_lock(tmp_path: Path) -> None:
    db_path = tmp_path / "bot.db"
    async with SqliteTaskStore(db_path) as store:
        await create_tasks(store)
    mark = id_mark_path(db_path)
    good = mark.read_text()
    mark.write_text("not a number")
    with pytest.raises(RuntimeError, match="highest task id"):
        await SqliteTaskStore(db_path).open()
    mark.write_text(good)
    async with SqliteTaskStore(db_path) as store:
        assert await store.count_tasks() == 1


# --- across processes -------------------------------------------------------------------------


HOLDER = """
import asyncio
from bot.tasks.store import SqliteTaskStore

async def main():
    await SqliteTaskStore({path!r}).open()
    print("open", flush=True)
    await asyncio.Event().wait()  # until killed: the store is never closed

asyncio.run(main())
"""


async def test_a_killed_process_leaves_no_stale_lock(tmp_path: Path) -> None:
    db_path = tmp_path / "bot.db"
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        HOLDER.format(path=str(db_path)),
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        assert await asyncio.wait_for(holder.stdout.readline(), 60) == b"open\n"
        with pytest.raises(ConfigError) as refused:
            await SqliteTaskStore(db_path).open()
        assert str(refused.value) == refusal(holder.pid, db_path)
    finally:
        if holder.returncode is None:
            holder.send_signal(signal.SIGKILL)
        await holder.wait()
    async with SqliteTaskStore(db_path) as store:  # the OS dropped the dead process's lock
        assert await store.ping()


@pytest.mark.slow
async def test_a_second_bot_run_on_one_sqlite_database_exits_3(tmp_path: Path) -> None:
    fake = FakeDiscord(token=TOKEN)
    await fake.start()
    sim = KlingSimulator(SimulatorConfig(submitted_seconds=0.2, processing_seconds=0.4))
    await sim.start()
    env = bot_env(fake, sim.base_url, tmp_path, webhook_port=unused_port())
    first = BotProcess(env, workdir=tmp_path)
    try:
        await first.start(fake)
        assert first.pid is not None
        # Its own port, so that only the database can stand in its way.
        code, stderr = await run_bot_once({**env, "WEBHOOK_PORT": str(unused_port())}, tmp_path)
        assert code == EXIT_CONFIG, stderr
        assert stderr.splitlines() == ["kling-bot: " + refusal(first.pid, tmp_path / "bot.db")]
        assert first.alive  # the first bot carries on
        first.kill()
        await first.wait_dead()
        await first.start(fake)  # a SIGKILL leaves no stale lock: a new bot starts at once
        await first.stop()
    finally:
        if first.alive:
            first.kill()
            await first.wait_dead()
        await sim.close()
        await fake.close()


async def run_bot_once(env: dict[str, str], workdir: Path) -> tuple[int, str]:
    """``kling-bot run`` as a subprocess expected to end by itself: its exit code and stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "run",
        env=env, cwd=workdir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        _, err = await asyncio.wait_for(process.communicate(), 60)
    finally:
        if process.returncode is None:  # it did not end: it was not refused
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, err.decode()
