"""``kling-bot worker`` as a subprocess: no gateway, the task work over Discord's REST API.

A worker runs alone here (SQLite serves one process): the task is stored first through the
public task core (``TaskCore.submit``, as a ``run`` process that then stopped would have left
it), with the status message a ``run`` process had answered the command with. The worker
started afterwards admits and creates it at the simulator, takes Kling's callback on its own
listener, downloads the result and posts it once with the bot token, editing the status
message by its channel and message id (the interaction token belongs to the gone process).
"""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import unused_port

from bot.app import open_app
from bot.config import Settings
from bot.kling.images import PreparedImage
from bot.kling.models import TaskKind
from bot.kling.params import ImageParams
from bot.tasks.models import Origin
from kling_sim.simulator import KlingSimulator, SimulatorConfig
from testing.bot_process import (
    TOKEN,
    BotProcess,
    bot_env,
    task_posts,
    unexpected_log_lines,
    wait_all_final,
)
from testing.fake_discord import FakeDiscord, FakeInteraction
from testing.images import make_png


@dataclass
class Scene:
    fake: FakeDiscord
    sim: KlingSimulator
    env: dict[str, str]
    workdir: Path
    channel_id: int
    guild_id: int

    @property
    def db_path(self) -> Path:
        return self.workdir / "bot.db"

    def worker(self) -> BotProcess:
        return BotProcess(self.env, workdir=self.workdir, command="worker", log_name="worker.log")


@pytest.fixture
async def scene(tmp_path: Path) -> AsyncIterator[Scene]:
    async with FakeDiscord(token=TOKEN) as fake:
        guild = fake.add_guild(channels=("gen",))
        sim = KlingSimulator(SimulatorConfig(submitted_seconds=0.1, processing_seconds=0.3))
        await sim.start()
        try:
            env = bot_env(fake, sim.base_url, tmp_path, webhook_port=unused_port())
            yield Scene(fake, sim, env, tmp_path, next(iter(guild.channels)), guild.id)
        finally:
            await sim.close()


def _settings(env: dict[str, str]) -> Settings:
    """The worker's own settings, read from its environment as it will read them."""
    names = {name.upper(): name for name in Settings.model_fields}
    values = {names[key]: value for key, value in env.items() if key in names}
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


async def _stored_task(scene: Scene, reply: FakeInteraction) -> int:
    """An image task as a stopped ``run`` process leaves it: queued, its inputs on disk, its
    status message (the reply to the command) named in the row."""
    assert reply.original_message_id is not None
    origin = Origin(
        channel_id=scene.channel_id,
        user_id=reply.user_id,
        guild_id=scene.guild_id,
        message_id=reply.original_message_id,
    )
    image = PreparedImage(
        label="subject1", data=make_png(400, 400), format="png", width=400, height=400, changes=()
    )
    async with open_app(_settings(scene.env)) as app:
        record = await app.core.submit(
            TaskKind.IMAGE, ImageParams(prompt="a red square", n=1), [image], origin
        )
    return record.id


async def _status_title(fake: FakeDiscord, reply: FakeInteraction, *, until: str) -> str:
    """The status message's title once it says ``until`` (edits are paced: 2 s apart)."""
    title = ""
    for _ in range(100):
        message = fake.original_message(reply)
        title = message.embeds[0]["title"] if message is not None and message.embeds else ""
        if until in title:
            return title
        await asyncio.sleep(0.1)
    raise AssertionError(f"the status message never said {until!r}: {title!r}")


async def _metrics(port: str) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        return await response.text()


async def test_a_worker_finishes_a_stored_task_over_rest_and_posts_it_once(scene: Scene) -> None:
    fake = scene.fake
    reply = fake.add_command_reply(channel_id=scene.channel_id)
    task_id = await _stored_task(scene, reply)
    worker = scene.worker()
    try:
        await worker.start(fake)
        health = await worker.healthz()
        assert health is not None
        status, body = health
        assert status == 200, body
        # Its health is the store and the REST login: no gateway to be "disconnected".
        assert body["checks"] == {"store": True, "discord_rest": True}

        rows = await wait_all_final(worker, scene.db_path, timeout=60, at_least=1)
        assert [(row["id"], row["state"]) for row in rows] == [(task_id, "delivered")]
        accepted = re.search(r'kling_bot_callbacks_total\{result="accepted"\} (\d+)',
                             await _metrics(scene.env["WEBHOOK_PORT"]))  # fmt: skip
        assert accepted is not None and int(accepted[1]) >= 1  # Kling's callback reached it

        posts = task_posts(fake)
        assert list(posts) == [task_id] and len(posts[task_id]) == 1
        assert posts[task_id][0].attachments  # the result image itself, uploaded
        # The status message was edited with the bot token, by its ids, up to the end.
        title = await _status_title(fake, reply, until="the result is posted")
        assert f"#{task_id}" in title
        path = rf"/channels/{scene.channel_id}/messages/{reply.original_message_id}"
        edits = fake.requests_to("PATCH", path)
        assert len(edits) >= 2
        assert all(e.headers.get("Authorization") == f"Bot {TOKEN}" for e in edits)
        assert not fake.requests_to("PATCH", r"/webhooks/.*")  # no interaction token used
        # Never on the gateway.
        assert fake.identify_payloads == [] and fake.gateway_connections == []

        assert await worker.stop(signal_number=signal.SIGTERM) == 0
    finally:
        if worker.alive:
            worker.kill()
            await worker.wait_dead()
    assert unexpected_log_lines(worker.log_text()) == []
    assert "SIGTERM received: stopping" in worker.log_text()


async def test_a_worker_stops_on_ctrl_c_like_run(scene: Scene) -> None:
    worker = scene.worker()
    try:
        await worker.start(scene.fake)
        assert await worker.stop() == 130  # SIGINT: "interrupted", as `run`
    finally:
        if worker.alive:
            worker.kill()
            await worker.wait_dead()
    assert unexpected_log_lines(worker.log_text()) == []


async def test_worker_simulate_needs_no_kling(scene: Scene) -> None:
    """``kling-bot worker --simulate``: the simulator in-process, whatever KLING_BASE_URL says."""
    env = {**scene.env, "KLING_BASE_URL": "http://127.0.0.1:9"}  # nothing listens there
    worker = BotProcess(
        env, workdir=scene.workdir, command="worker", args=("--simulate",), log_name="sim.log"
    )
    try:
        await worker.start(scene.fake)
        assert await worker.stop(signal_number=signal.SIGTERM) == 0
    finally:
        if worker.alive:
            worker.kill()
            await worker.wait_dead()
    assert "simulating Kling at http://127.0.0.1:" in worker.log_text()
    assert unexpected_log_lines(worker.log_text()) == []


@pytest.mark.parametrize(
    ("token", "line"),
    [("a-wrong-token", "Discord refused DISCORD_TOKEN"), ("", "DISCORD_TOKEN is not set")],
)
async def test_a_worker_without_a_valid_token_is_one_line_and_exit_3(
    scene: Scene, token: str, line: str
) -> None:
    env = {**scene.env, "DISCORD_TOKEN": token}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "worker", cwd=scene.workdir, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    message = stderr.decode()
    assert process.returncode == 3, message
    assert message.strip().splitlines()[-1].startswith(f"kling-bot: {line}")
    assert "Traceback" not in message
    assert unexpected_log_lines(message) == []
