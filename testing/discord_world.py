"""The whole bot against the fake Discord, the simulator as Kling: the ``World`` the end-to-end
tests drive (``open_world`` is the body of the ``world`` fixture in tests/conftest.py).

``World.start_bot`` runs KlingBot on what the composition root builds (``bot.app.open_app``:
the task core and the stores; the bot adds the listener) the way ``run_bot`` does; ``until``
waits for a condition; ``run_image`` / ``posted_image_result`` drive a member's ``/kling image``;
``EPHEMERAL`` and ``MODERATOR_PERMISSIONS`` are Discord's bits.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.app import App, open_app
from bot.config import Settings
from bot.discord.bot import KlingBot
from bot.tasks.models import TaskState
from kling_sim.simulator import KlingSimulator, SimulatorConfig
from testing.fake_discord import FakeDiscord, FakeMessage
from testing.images import png_bytes

TOKEN = "fake-bot-token"
EPHEMERAL = 64
P_MANAGE_MESSAGES = 1 << 13
MODERATOR_PERMISSIONS = P_MANAGE_MESSAGES | (1 << 11)


@dataclass
class World:
    fake: FakeDiscord
    sim: KlingSimulator
    settings: Settings
    guild_id: int
    channel_id: int
    tmp: Path
    bot: KlingBot | None = None
    app: App | None = None  # what the composition root built for the running bot
    _stack: contextlib.AsyncExitStack | None = None
    _run: asyncio.Task[None] | None = None

    async def start_bot(self) -> KlingBot:
        stack = contextlib.AsyncExitStack()
        self.app = await stack.enter_async_context(open_app(self.settings))
        bot = KlingBot(
            settings=self.app.settings,
            tracker=self.app.core,
            guild_ready_timeout=0.05,
        )
        # Tests want quick retries and edits; production values are seconds.
        bot.delivery.retry_base_delay = 0.05
        bot.delivery.retry_window = 0.6
        bot.status_messages.interval = 0.2
        self.bot, self._stack = bot, stack
        self._run = asyncio.create_task(bot.start(TOKEN))
        await self.fake.wait_until_ready()
        await asyncio.wait_for(bot.wait_until_ready(), 5)
        return bot

    async def stop_bot(self) -> None:
        if self.bot is not None:
            await self.bot.close()
        if self._run is not None:
            await self._run
        if self._stack is not None:
            await self._stack.aclose()
        self.bot = self.app = self._stack = self._run = None

    @property
    def tracker(self) -> Any:
        """The running bot's task core."""
        assert self.app is not None
        return self.app.core

    async def task_state(self, task_id: int) -> TaskState | None:
        record = await self.tracker.tasks.get(task_id)
        return None if record is None else record.state

    async def wait_state(self, task_id: int, *states: TaskState) -> None:
        async def reached() -> bool:
            return await self.task_state(task_id) in states

        await until(reached)

    def result_messages(self, channel_id: int | None = None) -> list[FakeMessage]:
        """Posts made with the bot token (not interaction responses) carrying a task footer."""
        channel = self.channel_id if channel_id is None else channel_id
        return [
            m
            for m in self.fake.messages(channel)
            if m.interaction_id is None
            and m.webhook_id is None
            and any("Task #" in ((e.get("footer") or {}).get("text") or "") for e in m.embeds)
        ]

    async def wait_result(
        self, predicate: Callable[[FakeMessage], bool] | None = None
    ) -> FakeMessage:
        def found() -> FakeMessage | None:
            return next(
                (m for m in self.result_messages() if predicate is None or predicate(m)), None
            )

        return await until(found)

    async def first_followup(self, interaction: Any) -> FakeMessage:
        return await until(lambda: next(iter(self.fake.followups(interaction)), None))


async def until(check: Callable[[], Any], limit: float = 10.0) -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy.

    The tracker and the simulator run on their own clocks and publish nothing to wait on.
    """
    async with asyncio.timeout(limit):
        while True:
            value = check()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def open_world(tmp_path: Path) -> AsyncIterator[World]:
    """A fake Discord with one server and channel, a simulator, and settings for the bot
    against both (the bot is started by ``World.start_bot``); everything closed afterwards."""
    fake = FakeDiscord(token=TOKEN)
    await fake.start()
    guild = fake.add_guild(channels=("generation",))
    channel_id = next(iter(guild.channels))
    sim = KlingSimulator(SimulatorConfig(submitted_seconds=0.1, processing_seconds=0.4, seed=1))
    base_url = await sim.start()
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        discord_token=TOKEN,
        discord_api_base=fake.api_base,
        discord_gateway_url=fake.gateway_url,
        kling_provider="simulator",
        kling_base_url=base_url,
        data_dir=tmp_path / "data",
        database_url=f"sqlite:///{tmp_path / 'bot.db'}",
        webhook_host="127.0.0.1",
        webhook_port=0,
        poll_first_delay=0.1,
        poll_max_interval=0.3,
    )
    w = World(fake, sim, settings, guild.id, channel_id, tmp_path)
    with fake.patch_discord_py():
        try:
            yield w
        finally:
            await w.stop_bot()
            await sim.close()
            await fake.close()
    assert not fake.unknown_requests, [(r.method, r.path) for r in fake.unknown_requests]


async def run_image(world: World, **attachments: Any) -> Any:
    return await world.fake.send_slash_command(
        "kling",
        subcommand="image",
        options={"prompt": "a red cube on a table", "count": 2, "aspect_ratio": "1:1"},
        attachments=attachments or {"subject1": ("cube.png", png_bytes())},
    )


async def posted_image_result(world: World) -> Any:
    """A member's ``/kling image`` run to its result post in the channel."""
    interaction = await run_image(world)
    await world.fake.wait_for_callback(interaction)
    return await world.wait_result()
