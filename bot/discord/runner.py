"""The thin entry point that owns the bot's lifecycle (discord.py's advanced_startup pattern).

``run_bot`` builds everything through the composition root (``bot.app.open_app``: the HTTP
session, the stores, the Kling client or the in-process simulator, the task core), injects the
task core into ``KlingBot``, runs it, and closes everything in reverse order. ``run_worker``
does the same for ``KlingWorker`` (no gateway). Both stop cleanly on SIGINT (Ctrl+C: the
command exits 130) and on SIGTERM (how Docker and systemd stop a service: exit 0).
``sync_commands`` registers the slash commands over REST only, without starting anything else.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Coroutine
from typing import Any

import discord

from bot.app import open_app
from bot.config import Settings
from bot.discord.bot import KlingBot
from bot.discord.worker import KlingWorker
from bot.text import t

log = logging.getLogger(__name__)


async def run_bot(settings: Settings, *, simulate: bool) -> None:
    """Run the bot until it is stopped. Raises ConfigError for missing settings."""
    token = settings.require_discord_token()
    async with open_app(settings, simulate=simulate) as app:
        bot = KlingBot(settings=app.settings, tracker=app.core)
        async with bot:
            await until_terminated(bot.start(token))


async def run_worker(settings: Settings, *, simulate: bool) -> None:
    """Run a worker (no gateway) until it is stopped. Raises ConfigError for missing
    settings."""
    token = settings.require_discord_token()
    async with open_app(settings, simulate=simulate, role="worker") as app:
        worker = KlingWorker(settings=app.settings, tracker=app.core)
        async with worker:
            await until_terminated(worker.serve(token))


async def until_terminated(serving: Coroutine[Any, Any, None]) -> None:
    """Await ``serving``; a SIGTERM cancels it and returns, so the caller closes everything
    in order, as after Ctrl+C (which asyncio turns into a cancellation already)."""
    loop = asyncio.get_running_loop()
    work = asyncio.ensure_future(serving)
    terminated = asyncio.Event()

    def terminate() -> None:
        log.info("SIGTERM received: stopping")
        terminated.set()
        work.cancel()

    loop.add_signal_handler(signal.SIGTERM, terminate)
    try:
        await work
    except asyncio.CancelledError:
        if not terminated.is_set():
            raise
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


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
