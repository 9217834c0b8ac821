"""``kling-bot worker``: the task work without the gateway.

A worker takes no commands or button presses (those reach the ``run`` processes over the
gateway). It runs what ``bot.discord.task_work`` holds, the webhook listener, admission, the
poller, downloads, status edits and delivery, on a REST-only Discord client: ``login`` gives
discord.py's HTTP side with the bot token, without ``connect``. So it has no guild cache:
results are posted within Discord's basic upload limit (larger files as links) and in the
default language, and its ``/healthz`` checks the store and the REST login, not a gateway
(``discord_rest``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import discord

from bot.config import Settings
from bot.discord.task_work import TaskWork, apply_discord_endpoints

if TYPE_CHECKING:
    from bot.discord.context import PostingApp
    from bot.tasks.core import TaskCore

log = logging.getLogger(__name__)


class KlingWorker(discord.Client):
    def __init__(self, *, settings: Settings, tracker: TaskCore) -> None:
        apply_discord_endpoints(settings)
        # Intents only matter on a gateway; the default ones keep discord.py from warning that
        # its (never filled) guild cache lacks them.
        super().__init__(intents=discord.Intents.default(), max_messages=None)
        self.settings = settings
        self._tracker = tracker
        self.work = TaskWork(self)
        self._stopped = asyncio.Event()

    @property
    def tracker(self) -> TaskCore:
        return self._tracker

    @property
    def webhook_port(self) -> int | None:
        return self.work.webhook_port

    async def setup_hook(self) -> None:
        # Called by login(): the bot token is accepted, the REST client is ready.
        await self.work.start(self._tracker, self.settings, health=self._health)
        log.info("worker started as %s: no gateway, posting over REST", self.user)

    def _health(self) -> tuple[str, bool]:
        return ("discord_rest", self.user is not None and not self.is_closed())

    async def serve(self, token: str) -> None:
        """Log in over REST and work until ``close``."""
        await self.login(token)
        await self._stopped.wait()

    async def close(self) -> None:
        await self.work.close()
        await super().close()
        self._stopped.set()


if TYPE_CHECKING:

    def _is_a_posting_app(worker: KlingWorker) -> PostingApp:
        """The type checker holds the worker to what delivery and status edits use."""
        return worker
