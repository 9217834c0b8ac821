"""The Discord bot's lifecycle: what starts with Discord (``setup_hook``) and stops with it.

The composition root creates the task core and its dependencies and injects them here. The bot
installs the translator of the commands' descriptions, loads the cogs, registers the
restart-safe buttons and the Animate modal's listener, subscribes status messages and delivery
to the core, starts the core and the webhook listener, and stops them again in ``close``. What
the commands and buttons do lives in the modules of ``bot.discord``, which see this bot only
through the Protocols of ``bot.discord.context``.
"""

from __future__ import annotations

import logging
import weakref
from typing import TYPE_CHECKING, Any

import discord
import yarl
from aiohttp import web
from discord.ext import commands

from bot.config import Settings
from bot.discord.animate import on_animate_modal_submit
from bot.discord.buttons import TASK_BUTTONS
from bot.discord.context import DiscordApp, MemberLocks
from bot.discord.delivery import Delivery
from bot.discord.errors import KlingCommandTree
from bot.discord.localized import CatalogueTranslator
from bot.discord.status import StatusMessages
from bot.tasks.webhook import start_listener

if TYPE_CHECKING:
    from bot.tasks.core import TaskCore

log = logging.getLogger(__name__)

EXTENSIONS = ("cogs.generate", "cogs.moderation")


def apply_discord_endpoints(settings: Settings) -> None:
    """Point discord.py at a REST/gateway proxy (process-wide class attributes)."""
    # Interaction webhooks reuse Route.BASE, so one setting covers callbacks and followups too.
    if settings.discord_api_base:
        discord.http.Route.BASE = settings.discord_api_base.rstrip("/")
    if settings.discord_gateway_url:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord_gateway_url)


# The bot never joins voice: skip discord.py's start-up warnings about voice libraries.
discord.VoiceClient.warn_nacl = False
discord.VoiceClient.warn_dave = False


class KlingBot(commands.Bot):
    def __init__(
        self,
        *,
        settings: Settings,
        tracker: TaskCore | None,
        start_webhook: bool = True,
        **options: Any,
    ) -> None:
        apply_discord_endpoints(settings)
        options.setdefault("intents", discord.Intents.default())
        # No message cache: nothing here reads it (buttons carry their message, delivery asks
        # REST), and 1,000 cached result messages cost memory for nothing.
        options.setdefault("max_messages", None)
        super().__init__(
            command_prefix=commands.when_mentioned,
            tree_cls=KlingCommandTree,
            help_command=None,
            **options,
        )
        self.settings = settings
        self._tracker = tracker
        self._start_webhook = start_webhook
        self.delivery = Delivery(self)
        self.status_messages = StatusMessages(self)
        self.member_locks: MemberLocks = weakref.WeakValueDictionary()
        self._webhook_runner: web.AppRunner | None = None
        self.webhook_port: int | None = None

    @property
    def tracker(self) -> TaskCore:
        if self._tracker is None:
            raise RuntimeError("this KlingBot was created without a tracker (command sync only)")
        return self._tracker

    async def setup_hook(self) -> None:
        # Before the cogs: the commands' descriptions are translated when they are synced.
        await self.tree.set_translator(CatalogueTranslator())
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        if self._tracker is None:  # `kling-bot sync`: commands only, nothing runs
            return
        self.add_dynamic_items(*TASK_BUTTONS)
        self.add_listener(on_animate_modal_submit, "on_interaction")
        tracker = self._tracker
        # Subscribe before start: start re-announces tasks that finished while we were down.
        tracker.subscribe(self.status_messages.on_event)
        tracker.subscribe(self.delivery.on_event)
        tracker.health_checks.append(self._health)
        await tracker.start()
        if self._start_webhook:
            await self._start_webhook_server()

    def _health(self) -> tuple[str, bool]:
        return ("discord", self.is_ready() and not self.is_closed())

    async def _start_webhook_server(self) -> None:
        host, port = self.settings.webhook_host, self.settings.webhook_port
        runner = await start_listener(self.tracker.webhook_app(), host, port)
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
        await super().close()

    async def on_ready(self) -> None:
        log.info("connected to Discord as %s in %d guild(s)", self.user, len(self.guilds))


if TYPE_CHECKING:

    def _is_a_discord_app(bot: KlingBot) -> DiscordApp:
        """The type checker holds ``KlingBot`` to what the Discord side expects of it."""
        return bot
