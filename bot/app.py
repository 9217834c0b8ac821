"""The composition root: builds what the bot is made of, and closes it again.

``open_kling`` is what a one-off command needs (the CLI's ``generate`` and ``task``): the
settings, one HTTP session and a Kling client, with the simulator in-process when asked for.
``open_app`` adds the stores and the task core (``App``): what ``kling-bot run`` and the
benchmark run, the Discord side on top (``KlingBot`` owns only Discord's lifecycle). Everything
is closed in reverse order on exit. The simulator is imported only when simulating: an install
never loads it (nor its video encoder) otherwise.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp

from bot.config import Settings
from bot.kling.client import KlingClient
from bot.tasks.core import TaskCore
from bot.tasks.metrics import Metrics
from bot.tasks.store import Stores, open_store

if TYPE_CHECKING:
    from kling_sim import SimulatorConfig


@dataclass(slots=True)
class App:
    settings: Settings  # with KLING_BASE_URL pointing at the simulator when simulating
    session: aiohttp.ClientSession
    stores: Stores
    client: KlingClient
    core: TaskCore


@contextlib.asynccontextmanager
async def open_kling(
    settings: Settings, *, simulate: bool = False, **client_options: float
) -> AsyncIterator[tuple[Settings, KlingClient, aiohttp.ClientSession]]:
    """A Kling client on one HTTP session; with the simulator provider, the simulator
    in-process. ``simulate`` (the ``--simulate`` flag) always starts one here, whatever
    ``KLING_BASE_URL`` says: a flag that means "no credits" must never reach a real API."""
    async with contextlib.AsyncExitStack() as stack:
        settings = await _simulated(settings, stack, simulate=simulate)
        settings.require_kling_credentials()
        session = await stack.enter_async_context(aiohttp.ClientSession())
        yield settings, KlingClient.from_settings(settings, session, **client_options), session


@contextlib.asynccontextmanager
async def open_app(
    settings: Settings,
    *,
    simulate: bool = False,
    simulator_config: SimulatorConfig | None = None,
    role: str = "run",
) -> AsyncIterator[App]:
    """Everything the bot needs besides Discord; closed in reverse order on exit.

    The task core is created, not started: ``KlingBot.setup_hook`` starts it once delivery has
    subscribed, and closing it here happens after the bot is closed.
    """
    async with contextlib.AsyncExitStack() as stack:
        settings = await _simulated(settings, stack, simulate=simulate, config=simulator_config)
        session = await stack.enter_async_context(aiohttp.ClientSession())
        metrics = Metrics()
        client = KlingClient.from_settings(settings, session, on_call=metrics.kling_call)
        stores = open_store(settings.database_url)
        await stores.open()
        stack.push_async_callback(stores.close)
        core = TaskCore(
            settings=settings,
            store=stores.tasks,
            guild_settings=stores.guild_settings,
            signals=stores.signals,
            role=role,  # what the process registers as: "run" or "worker"
            client=client,
            metrics=metrics,
        )
        stack.push_async_callback(core.close)
        yield App(settings, session, stores, client, core)


async def _simulated(
    settings: Settings,
    stack: contextlib.AsyncExitStack,
    *,
    simulate: bool,
    config: SimulatorConfig | None = None,
) -> Settings:
    if not (settings.simulated or simulate):
        return settings
    from kling_sim import simulated_settings  # only when simulating

    return await simulated_settings(settings, stack, force=simulate, config=config)
