"""Crash suite, scaled out: one ``run`` and two ``worker``s on one PostgreSQL database, any of
them SIGKILLed at random and started again, still deliver every task once.

The processes share a database (a fresh one on the suite's PostgreSQL) and nothing else: each
has its own DATA_DIR, as on its own machine. Kling's callbacks reach them through a round-robin
balancer (``testing.balancer``) in front of their three webhook listeners, as a load balancer
at ``PUBLIC_BASE_URL`` would; members' commands reach ``run``, the gateway. While commands
arrive, a random process is killed every few seconds and started again after a moment. Then,
per task and for the account:

* every accepted task (a task row) is ``delivered``, with exactly one post in its channel, its
  results byte for byte what Kling (the simulator) serves, or its failure;
* the simulator created each task exactly once (no double charge);
* the account's image slots in use at Kling (created, not yet ended) never went above
  ``KLING_IMAGE_CONCURRENCY``, whichever process died holding them (the simulator does not
  enforce the limit here: the bot must);
* everything was final within ``LEASE_TIMEOUT`` plus a minute of the last kill;
* no process logged a traceback or an ERROR.

Parameters (environment): ``SCALEOUT_TASKS`` (default 90), ``SCALEOUT_KILLS`` (default 12),
``SCALEOUT_SEED``. The figures are printed with ``-s``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import unused_port

from bot.tasks.store import open_store, task_rows
from kling_sim.simulator import Faults, KlingSimulator, SimulatorConfig
from testing.balancer import RoundRobin
from testing.bot_process import (
    FINAL_STATES,
    START_TIMEOUT,
    TOKEN,
    WEBHOOK_SECRET,
    BotProcess,
    bot_env,
    delivery_error_words,
    failure_words,
    task_posts,
    unexpected_log_lines,
)
from testing.fake_discord import FakeDiscord, FakeInteraction
from testing.images import make_png

pytestmark = pytest.mark.slow

TASKS = int(os.environ.get("SCALEOUT_TASKS", "90"))
KILLS = int(os.environ.get("SCALEOUT_KILLS", "12"))
SEED = int(os.environ.get("SCALEOUT_SEED", "20261204"))
LEASE_TIMEOUT = 3.0
IMAGE_SLOTS = 4  # the bot's KLING_IMAGE_CONCURRENCY (the simulator is left unlimited)
SEND_INTERVAL = 0.2
SETTLE_LIMIT = LEASE_TIMEOUT + 60.0  # every task final this soon after the last kill
# A command the gateway process could not acknowledge within Discord's 3 s (just restarted).
TOO_LATE = r"command /kling \w+ failed[\s\S]*error code: 10062"


@dataclass
class Fleet:
    fake: FakeDiscord
    sim: KlingSimulator
    balancer: RoundRobin
    processes: list[BotProcess]  # run, worker, worker
    database_url: str
    guild_id: int
    channel_ids: list[int]

    @property
    def gateway(self) -> BotProcess:
        return self.processes[0]


@contextlib.asynccontextmanager
async def fleet(tmp_path: Path, database_url: str) -> AsyncIterator[Fleet]:
    fake = FakeDiscord(token=TOKEN)
    await fake.start()
    guild = fake.add_guild(channels=("gen-a", "gen-b", "gen-c"))
    sim = KlingSimulator(
        SimulatorConfig(
            submitted_seconds=0.2,
            processing_seconds=0.8,
            seed=SEED,
            media_size=96,
            faults=Faults(task_failure_rate=0.05),
        )
    )
    await sim.start()
    ports = [unused_port() for _ in range(3)]
    balancer = RoundRobin([f"http://127.0.0.1:{port}" for port in ports])
    await balancer.__aenter__()
    async with open_store(database_url) as stores:  # the schema, and no per-member limits
        await stores.guild_settings.set_guild_config(guild.id, {"max_active": 0, "daily_limit": 0})
    processes = []
    for index, port in enumerate(ports):
        env = bot_env(
            fake,
            sim.base_url,
            tmp_path,
            webhook_port=port,
            DATABASE_URL=database_url,
            DATA_DIR=str(tmp_path / f"data{index}"),  # its own disk, as on its own machine
            PUBLIC_BASE_URL=balancer.url,
            WEBHOOK_SECRET=WEBHOOK_SECRET,
            LEASE_TIMEOUT=str(LEASE_TIMEOUT),
            KLING_IMAGE_CONCURRENCY=str(IMAGE_SLOTS),
        )
        command = "run" if index == 0 else "worker"
        processes.append(
            BotProcess(env, workdir=tmp_path, command=command, log_name=f"{command}{index}.log")
        )
    try:
        yield Fleet(fake, sim, balancer, processes, database_url, guild.id, list(guild.channels))
    finally:
        for process in processes:
            if process.alive:
                process.kill()
                await process.wait_dead()
        await balancer.__aexit__(None, None, None)
        await sim.close()
        await fake.close()


async def send_commands(fleet: Fleet, rng: random.Random, count: int) -> list[FakeInteraction]:
    users = [fleet.fake.add_user(name=f"member{i}") for i in range(10)]
    sent = []
    for i in range(count):
        await fleet.fake.wait_until_ready(timeout=START_TIMEOUT)
        colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        sent.append(
            await fleet.fake.send_slash_command(
                "kling",
                subcommand="image",
                options={"prompt": f"scale-out image {i}", "count": rng.randint(1, 2)},
                attachments={"subject1": ("subject.png", make_png(400, 400, colour))},
                channel_id=rng.choice(fleet.channel_ids),
                user=rng.choice(users),
            )
        )
        await asyncio.sleep(SEND_INTERVAL)
    return sent


async def wait_all_final(fleet: Fleet, timeout: float) -> list[dict[str, Any]]:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while True:
        rows = task_rows(fleet.database_url)
        if rows and all(row["state"] in FINAL_STATES for row in rows):
            return rows
        if time.monotonic() > deadline:
            stuck = {row["id"]: row["state"] for row in rows if row["state"] not in FINAL_STATES}
            tails = "\n".join(p.log_tail(30) for p in fleet.processes)
            raise AssertionError(f"{len(stuck)} tasks not final: {stuck}\n{tails}")
        await asyncio.sleep(0.25)


def most_slots_at_once(sim: KlingSimulator) -> int:
    """The most image slots the account had in use at Kling at any moment."""
    changes = []
    for task in sim.tasks.values():
        if task.kind.value == "image":
            changes += [(task.created_at, task.slots), (task.done_at, -task.slots)]
    used = most = 0
    for _, delta in sorted(changes, key=lambda change: (change[0], change[1])):  # ends first
        used += delta
        most = max(most, used)
    return most


async def test_three_processes_killed_at_random_deliver_every_task_once(
    tmp_path: Path, postgres_url: str
) -> None:
    rng = random.Random(SEED)
    began = time.monotonic()
    async with fleet(tmp_path, postgres_url) as run:
        for process in run.processes:
            await process.start(run.fake)
        sender = asyncio.create_task(send_commands(run, random.Random(SEED + 1), TASKS))
        kills: collections.Counter[str] = collections.Counter()
        last_kill = time.monotonic()
        try:
            while not sender.done() or sum(kills.values()) < KILLS:
                await asyncio.sleep(rng.uniform(0.5, 2.5))
                victim = rng.choice(run.processes)
                if victim.kill():
                    kills[victim.log_path.stem] += 1
                    last_kill = time.monotonic()
                await victim.wait_dead()
                await asyncio.sleep(rng.uniform(0.0, 1.5))
                await victim.start(run.fake)
            interactions = await sender
        finally:
            sender.cancel()
        rows = await wait_all_final(run, SETTLE_LIMIT)
        settled_after = time.monotonic() - last_kill
        await asyncio.sleep(1.0)  # a stray second post would land now
        for process in run.processes:
            await process.stop()

        acknowledged = [i for i in interactions if i.acknowledged]
        assert len(rows) <= len(acknowledged), "a task without a deferred interaction"
        assert len(rows) >= 0.7 * TASKS, f"only {len(rows)} of {TASKS} commands became tasks"

        # --- delivered exactly once, with Kling's results -----------------------------------
        posts = task_posts(run.fake)
        not_delivered = [
            (r["id"], r["state"], delivery_error_words(r))
            for r in rows
            if r["state"] != "delivered"
        ]
        assert not not_delivered, f"tasks not delivered: {not_delivered}"
        duplicated = {tid: len(ms) for tid, ms in posts.items() if len(ms) > 1}
        assert not duplicated, f"tasks posted more than once: {duplicated}"
        lost = [r["id"] for r in rows if not posts.get(r["id"])]
        assert not lost, f"tasks marked delivered with no post: {lost}"
        succeeded = 0
        async with aiohttp.ClientSession() as session:
            for row in rows:
                (message,) = posts[row["id"]]
                assert message.channel_id == row["channel_id"], row["id"]
                if row["kling_status"] != "succeed":
                    assert "failed" in message.content and failure_words(row), row["id"]
                    continue
                succeeded += 1
                urls = json.loads(row["result_urls"])
                assert len(urls) == json.loads(row["params"])["n"] == len(message.attachments)
                for url, attachment in zip(urls, message.attachments, strict=True):
                    async with session.get(url) as served:  # the simulator, on loopback
                        assert attachment.data == await served.read(), (row["id"], url)

        # --- Kling: created once each, the account's slots never exceeded -------------------
        by_external = collections.Counter(t.external_task_id for t in run.sim.tasks.values())
        twice = {ext: n for ext, n in by_external.items() if n > 1}
        assert not twice, f"tasks created more than once at Kling: {twice}"
        assert set(by_external) <= {r["external_task_id"] for r in rows}
        most = most_slots_at_once(run.sim)
        assert most <= IMAGE_SLOTS, f"{most} image slots in use at once (limit {IMAGE_SLOTS})"

        # --- timing and logs ----------------------------------------------------------------
        assert settled_after <= SETTLE_LIMIT
        for process in run.processes:
            problems = unexpected_log_lines(process.log_text(), [TOO_LATE])
            assert not problems, f"{process.log_path.name}:\n" + "\n".join(problems[:30])
        print(
            f"\nscale-out crash suite: {len(interactions)} commands, {len(rows)} tasks "
            f"({succeeded} with results), {sum(by_external.values())} created at Kling, "
            f"kills {dict(kills)}, most image slots at once {most} of {IMAGE_SLOTS}, "
            f"callbacks by listener {[run.balancer.served[b] for b in run.balancer.backends]}, "
            f"all final {settled_after:.1f} s after the last kill, "
            f"total {time.monotonic() - began:.0f} s"
        )
        assert sum(kills.values()) >= KILLS
