"""Gateway shards: ``kling-bot run`` is an ``AutoShardedBot``.

Two ``run`` processes split two shards (``DISCORD_SHARD_COUNT=2``, ``DISCORD_SHARD_IDS=0`` and
``1``) against one fake Discord, which, like Discord, sends each guild's events only on its
shard (``(guild_id >> 22) % shard_count``): each process answers the commands of its own
guild. With SQLite each has its own file (SQLite serves one process); on PostgreSQL the two shards
and a ``worker`` share one database. Without the settings one process runs every shard
Discord recommends. A ``run`` process also stops cleanly on SIGTERM.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest
from aiohttp.test_utils import unused_port

from bot.tasks.store import task_rows
from kling_sim.simulator import KlingSimulator, SimulatorConfig
from testing.bot_process import (
    FINAL_STATES,
    TOKEN,
    BotProcess,
    bot_env,
    read_tasks,
    unexpected_log_lines,
    wait_all_final,
)
from testing.fake_discord import FakeDiscord, FakeMessage
from testing.images import make_png


def guild_id_on_shard(fake: FakeDiscord, shard: int, count: int) -> int:
    """A fresh guild id that Discord puts on ``shard`` of ``count``."""
    timestamp = fake.snowflake() >> 22
    timestamp += (shard - timestamp) % count
    return (timestamp << 22) | 7  # low bits the fake's own snowflakes never use


@dataclass
class Shards:
    fake: FakeDiscord
    sim: KlingSimulator
    channels: list[int]  # one channel per guild, the guild on shard i at index i
    tmp: Path

    def process(
        self, name: str, command: Literal["run", "worker"] = "run", **env: str
    ) -> BotProcess:
        workdir = self.tmp / name
        workdir.mkdir()
        settings = bot_env(self.fake, self.sim.base_url, workdir, webhook_port=unused_port())
        return BotProcess({**settings, **env}, workdir=workdir, command=command)


@pytest.fixture
async def shards(tmp_path: Path) -> AsyncIterator[Shards]:
    async with FakeDiscord(token=TOKEN) as fake:
        channels = []
        for shard in (0, 1):
            guild = fake.add_guild(guild_id_on_shard(fake, shard, 2), name=f"shard {shard}")
            channels.append(next(iter(guild.channels)))
        sim = KlingSimulator(SimulatorConfig(submitted_seconds=0.1, processing_seconds=0.3))
        await sim.start()
        try:
            yield Shards(fake, sim, channels, tmp_path)
        finally:
            await sim.close()


async def _identified(fake: FakeDiscord, expected: set[tuple[int, int]]) -> None:
    deadline = time.monotonic() + 30
    while {tuple(p["shard"]) for p in fake.identify_payloads if p.get("shard")} != expected:
        assert time.monotonic() < deadline, [p.get("shard") for p in fake.identify_payloads]
        await asyncio.sleep(0.05)


async def _image_command(fake: FakeDiscord, channel_id: int) -> None:
    interaction = await fake.send_slash_command(
        "kling",
        subcommand="image",
        options={"prompt": "a red square", "count": 1},
        attachments={"subject1": ("subject.png", make_png(400, 400))},
        channel_id=channel_id,
    )
    await fake.wait_for_callback(interaction, timeout=20)


def _result_posts(fake: FakeDiscord, channel_id: int) -> list[FakeMessage]:
    """Bot-token posts in the channel (the status replies come through the webhook)."""
    return [m for m in fake.messages(channel_id) if m.webhook_id is None and m.embeds]


async def _stop_all(*processes: BotProcess) -> None:
    for process in processes:
        if process.alive:
            await process.stop()


async def _kill_all(*processes: BotProcess) -> None:
    for process in processes:
        if process.alive:
            process.kill()
            await process.wait_dead()


async def _all_final(database_url: str, count: int, *processes: BotProcess) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 60
    while True:
        rows = task_rows(database_url)
        if len(rows) >= count and all(row["state"] in FINAL_STATES for row in rows):
            return rows
        assert time.monotonic() < deadline, [(row["id"], row["state"]) for row in rows]
        assert all(process.alive for process in processes), [p.log_tail() for p in processes]
        await asyncio.sleep(0.25)


async def test_two_run_processes_split_the_shards_and_each_answers_its_guild(
    shards: Shards,
) -> None:
    fake = shards.fake
    first = shards.process("shard0", DISCORD_SHARD_COUNT="2", DISCORD_SHARD_IDS="0")
    second = shards.process("shard1", DISCORD_SHARD_COUNT="2", DISCORD_SHARD_IDS="1")
    try:
        await first.start(fake)
        await second.start(fake)
        await _identified(fake, {(0, 2), (1, 2)})
        assert len(fake.identify_payloads) == 2  # one shard each, nobody runs both
        assert not fake.requests_to("GET", r"/gateway/bot")  # the count is given

        for channel_id in shards.channels:
            await _image_command(fake, channel_id)
        for process in (first, second):
            rows = await wait_all_final(process, process.workdir / "bot.db", 60, at_least=1)
            assert [row["state"] for row in rows] == ["delivered"]
        # Each process took its own shard's guild's command, and only that one.
        for shard, process in enumerate((first, second)):
            (row,) = read_tasks(process.workdir / "bot.db")
            assert row["channel_id"] == shards.channels[shard]
            assert (int(row["guild_id"]) >> 22) % 2 == shard
        for channel_id in shards.channels:
            assert len(_result_posts(fake, channel_id)) == 1
        await _stop_all(first, second)
    finally:
        await _kill_all(first, second)
    for process in (first, second):
        assert unexpected_log_lines(process.log_text()) == []


async def test_two_shards_and_a_worker_share_one_postgresql_database(
    shards: Shards, postgres_url: str
) -> None:
    fake = shards.fake
    shared = {"DATABASE_URL": postgres_url, "DISCORD_SHARD_COUNT": "2"}
    first = shards.process("shard0", DISCORD_SHARD_IDS="0", **shared)
    second = shards.process("shard1", DISCORD_SHARD_IDS="1", **shared)
    worker = shards.process("worker", "worker", DATABASE_URL=postgres_url)
    processes = (first, second, worker)
    try:
        for process in processes:
            await process.start(fake)
        await _identified(fake, {(0, 2), (1, 2)})
        assert len(fake.identify_payloads) == 2  # the worker never identifies

        for channel_id in shards.channels:
            await _image_command(fake, channel_id)
        rows = await _all_final(postgres_url, 2, *processes)
        assert sorted(row["channel_id"] for row in rows) == sorted(shards.channels)
        assert [row["state"] for row in rows] == ["delivered", "delivered"]
        for channel_id in shards.channels:
            assert len(_result_posts(fake, channel_id)) == 1  # each task posted once
        # Each shard's process took the command of its own guild's channel only.
        for shard, process in enumerate((first, second)):
            taken = re.findall(r"submitted by user \d+ in channel (\d+)", process.log_text())
            assert taken == [str(shards.channels[shard])]
        health = await worker.healthz()
        assert health is not None and health[0] == 200
        await _stop_all(*processes)
    finally:
        await _kill_all(*processes)
    for process in processes:
        assert unexpected_log_lines(process.log_text()) == []


async def test_without_shard_settings_one_process_runs_every_recommended_shard(
    shards: Shards,
) -> None:
    fake = shards.fake
    fake.recommended_shards = 2  # what GET /gateway/bot answers
    bot = shards.process("all")
    try:
        await bot.start(fake)
        # discord.py identifies one shard at a time, 5 s apart (Discord's max_concurrency 1).
        await _identified(fake, {(0, 2), (1, 2)})
        assert fake.requests_to("GET", r"/gateway/bot")
        for channel_id in shards.channels:
            await _image_command(fake, channel_id)
        rows = await wait_all_final(bot, bot.workdir / "bot.db", 60, at_least=2)
        assert sorted(row["channel_id"] for row in rows) == sorted(shards.channels)
        assert [row["state"] for row in rows] == ["delivered", "delivered"]
        # SIGTERM (docker stop, systemd): a clean stop, exit 0, as after Ctrl+C.
        assert await bot.stop(signal_number=signal.SIGTERM) == 0
    finally:
        if bot.alive:
            bot.kill()
            await bot.wait_dead()
    assert unexpected_log_lines(bot.log_text()) == []
    assert "SIGTERM received: stopping" in bot.log_text()
