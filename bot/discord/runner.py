"""The thin entry point that owns the bot's lifecycle (discord.py's advanced_startup pattern).

``run_bot`` creates the HTTP session, the store, the Kling client (or the in-process simulator)
and the tracker, injects them into ``KlingBot``, runs it, and closes everything in reverse order.
``sync_commands`` registers the slash commands over REST only, without starting anything else.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import discord

from bot.config import Settings
from bot.discord.bot import KlingBot
from bot.kling.client import KlingClient
from bot.tasks.store import TaskStore, open_store
from bot.tasks.tracker import Tracker
from bot.text import t
from kling_sim.simulator import SimulatorConfig, simulated_settings

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Services:
    settings: Settings  # with KLING_BASE_URL pointing at the simulator when simulating
    session: aiohttp.ClientSession
    store: TaskStore
    client: KlingClient
    tracker: Tracker


@contextlib.asynccontextmanager
async def open_services(
    settings: Settings,
    *,
    simulate: bool = False,
    simulator_config: SimulatorConfig | None = None,
) -> AsyncIterator[Services]:
    """Everything the bot needs besides Discord; closed in reverse order on exit.

    The tracker is created, not started: ``KlingBot.setup_hook`` starts it once delivery has
    subscribed, and closing it here happens after the bot is closed.
    """
    async with contextlib.AsyncExitStack() as stack:
        settings = await simulated_settings(
            settings, stack, force=simulate, config=simulator_config
        )
        session = aiohttp.ClientSession()
        stack.push_async_callback(session.close)
        client = KlingClient.from_settings(settings, session)
        store = open_store(settings)
        await store.open()
        stack.push_async_callback(store.close)
        tracker = Tracker(settings=settings, store=store, client=client, session=session)
        stack.push_async_callback(tracker.close)
        yield Services(settings, session, store, client, tracker)


async def run_bot(settings: Settings, *, simulate: bool) -> None:
    """Run the bot until it is stopped. Raises ConfigError for missing settings."""
    token = settings.require_discord_token()
    async with open_services(settings, simulate=simulate) as services:
        bot = KlingBot(settings=services.settings, tracker=services.tracker)
        async with bot:
            await bot.start(token)


async def sync_commands(settings: Settings, guild_id: int | None) -> list[str]:
    """Register the slash commands (globally, or at once in one guild); returns their names.

    Logs in over REST only: no gateway, no tracker, no webhook listener.
    """
    token = settings.require_discord_token()
    bot = KlingBot(settings=settings, tracker=None)
    async with bot:
        await bot.login(token)  # runs setup_hook, which loads the cogs
        if guild_id is not None:
            guild = discord.Object(id=guild_id)
            bot.tree.copy_global_to(guild=guild)
            synced = await bot.tree.sync(guild=guild)
            where = f"guild {guild_id}"
        else:
            synced = await bot.tree.sync()
            where = "globally (may take up to an hour to appear)"
    names = [_command_name(c) for c in synced]
    print(f"Synced {t('count.command', count=len(names))} {where}: {', '.join(names)}")
    return names


def _command_name(command: Any) -> str:
    return "/" + str(getattr(command, "name", command))
