"""The Discord bot's lifecycle: what starts with Discord (``setup_hook``) and stops with it.

The composition root creates the task core and its dependencies and injects them here. The bot
installs the translator of the commands' descriptions, loads the cogs, registers the
restart-safe buttons and the Animate modal's listener, starts the task work (status messages
and delivery subscribed to the core, the core, the webhook listener: ``bot.discord.task_work``)
and stops it again in ``close``. What the commands and buttons do lives in the modules of
``bot.discord``, which see this bot only through the Protocols of ``bot.discord.context``.

It is an ``AutoShardedBot``: without ``DISCORD_SHARD_COUNT`` it runs every shard Discord
recommends (``GET /gateway/bot``); with it, the shards of ``DISCORD_SHARD_IDS`` (all of them
without a list), so several ``run`` processes can split the gateway between them.
"""

from __future__ import annotations

import logging
import weakref
from typing import TYPE_CHECKING, Any

import discord
from discord.ext import commands

from bot.config import Settings
from bot.discord.animate import on_animate_modal_submit
from bot.discord.buttons import TASK_BUTTONS
from bot.discord.context import DiscordApp, MemberLocks, PostingApp
from bot.discord.delivery import Delivery
from bot.discord.errors import KlingCommandTree
from bot.discord.localized import CatalogueTranslator
from bot.discord.status import StatusMessages
from bot.discord.task_work import TaskWork, apply_discord_endpoints

if TYPE_CHECKING:
    from bot.tasks.core import TaskCore

log = logging.getLogger(__name__)

EXTENSIONS = ("cogs.generate", "cogs.moderation")


# The bot never joins voice: skip discord.py's start-up warnings about voice libraries.
discord.VoiceClient.warn_nacl = False
discord.VoiceClient.warn_dave = False


def shard_options(settings: Settings) -> dict[str, Any]:
    """``AutoShardedBot``'s shard arguments: none (every shard, Discord's count) by default."""
    options: dict[str, Any] = {}
    if settings.discord_shard_count is not None:
        options["shard_count"] = settings.discord_shard_count
    if settings.discord_shard_ids is not None:
        options["shard_ids"] = list(settings.discord_shard_ids)
    return options


class KlingBot(commands.AutoShardedBot):
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
        for name, value in shard_options(settings).items():
            options.setdefault(name, value)
        super().__init__(
            command_prefix=commands.when_mentioned,
            tree_cls=KlingCommandTree,
            help_command=None,
            **options,
        )
        self.settings = settings
        self._tracker = tracker
        self._start_webhook = start_webhook
        self.work = TaskWork(self)
        self.member_locks: MemberLocks = weakref.WeakValueDictionary()

    @property
    def delivery(self) -> Delivery:
        return self.work.delivery

    @property
    def status_messages(self) -> StatusMessages:
        return self.work.status_messages

    @property
    def webhook_port(self) -> int | None:
        return self.work.webhook_port

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
        await self.work.start(
            self._tracker, self.settings, health=self._health, webhook=self._start_webhook
        )

    def _health(self) -> tuple[str, bool]:
        return ("discord", self.is_ready() and not self.is_closed())

    async def launch_shards(self) -> None:
        if self.shard_count is None and self.settings.discord_gateway_url:
            # Without a count discord.py connects to the URL GET /gateway/bot names, not to
            # DISCORD_GATEWAY_URL: ask for the count only, so the proxy stays in the path.
            self.shard_count, _url, _limits = await self.http.get_bot_gateway()
        await super().launch_shards()

    async def close(self) -> None:
        await self.work.close()
        await super().close()

    async def on_ready(self) -> None:
        shards = ", ".join(str(shard) for shard in sorted(self.shards))
        log.info(
            "connected to Discord as %s in %d guild(s), shard(s) %s of %s",
            self.user,
            len(self.guilds),
            shards,
            self.shard_count,
        )


if TYPE_CHECKING:

    def _is_a_discord_app(bot: KlingBot) -> DiscordApp:
        """The type checker holds ``KlingBot`` to what the Discord side expects of it."""
        return bot

    def _is_a_posting_app(bot: KlingBot) -> PostingApp:
        return bot
