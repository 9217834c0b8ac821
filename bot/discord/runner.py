"""The thin entry point that owns the bot's lifecycle (discord.py's advanced_startup pattern).

``run_bot`` builds everything through the composition root (``bot.app.open_app``: the HTTP
session, the stores, the Kling client or the in-process simulator, the task core), injects the
task core into ``KlingBot``, runs it, and closes everything in reverse order. ``sync_commands``
registers the slash commands over REST only, without starting anything else.
"""

from __future__ import annotations

import logging
from typing import Any

import discord

from bot.app import open_app
from bot.config import Settings
from bot.discord.bot import KlingBot
from bot.text import t

log = logging.getLogger(__name__)


async def run_bot(settings: Settings, *, simulate: bool) -> None:
    """Run the bot until it is stopped. Raises ConfigError for missing settings."""
    token = settings.require_discord_token()
    async with open_app(settings, simulate=simulate) as app:
        bot = KlingBot(settings=app.settings, tracker=app.core)
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
