"""What every process that works on tasks runs beside its Discord client, ``run`` and
``worker`` alike: status messages and delivery subscribed to the task core, the core's loops,
and the webhook listener (Kling's callbacks, ``/healthz``, ``/metrics``).

Both post and edit with the bot token only, so they need no gateway: the ``worker`` process
runs this on a REST-only client (``bot.discord.worker``), ``run`` on the gateway bot. Either
client first points discord.py at the configured endpoints (``apply_discord_endpoints``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import discord
import yarl
from aiohttp import web

from bot.config import Settings
from bot.discord.context import PostingApp
from bot.discord.delivery import Delivery
from bot.discord.status import StatusMessages
from bot.tasks.webhook import start_listener

if TYPE_CHECKING:
    from bot.tasks.core import TaskCore

log = logging.getLogger(__name__)

HealthCheck = Callable[[], tuple[str, bool]]


def apply_discord_endpoints(settings: Settings) -> None:
    """Point discord.py at a REST/gateway proxy (process-wide class attributes)."""
    # Interaction webhooks reuse Route.BASE, so one setting covers callbacks and followups too.
    if settings.discord_api_base:
        discord.http.Route.BASE = settings.discord_api_base.rstrip("/")
    if settings.discord_gateway_url:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord_gateway_url)


class TaskWork:
    """Started by the client's ``setup_hook`` (once the token is accepted), closed with it."""

    def __init__(self, app: PostingApp) -> None:
        self.delivery = Delivery(app)
        self.status_messages = StatusMessages(app)
        self._webhook_runner: web.AppRunner | None = None
        self.webhook_port: int | None = None

    async def start(
        self, core: TaskCore, settings: Settings, *, health: HealthCheck, webhook: bool = True
    ) -> None:
        # Subscribe before start: start re-announces tasks that finished while we were down.
        core.subscribe(self.status_messages.on_event)
        core.subscribe(self.delivery.on_event)
        core.health_checks.append(health)
        await core.start()
        if webhook:
            await self._serve_webhooks(core, settings)

    async def _serve_webhooks(self, core: TaskCore, settings: Settings) -> None:
        host, port = settings.webhook_host, settings.webhook_port
        runner = await start_listener(core.webhook_app(), host, port)
        self._webhook_runner = runner
        addresses = runner.addresses
        self.webhook_port = addresses[0][1] if addresses else port
        log.info("webhook listener on %s:%s", host, self.webhook_port)

    async def close(self) -> None:
        await self.status_messages.close()
        await self.delivery.close()
        if self._webhook_runner is not None:
            await self._webhook_runner.cleanup()
            self._webhook_runner = None
