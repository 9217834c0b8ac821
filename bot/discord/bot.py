"""The Discord bot: wires the cogs, the buttons, delivery and the webhook listener to the tracker.

The runner creates the tracker and its dependencies and injects them here; the bot only starts
what lives inside Discord's lifecycle (``setup_hook``) and stops it again in ``close``.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import discord
import yarl
from aiohttp import web
from discord.ext import commands
from pydantic import ValidationError

from bot.config import Settings
from bot.discord import checks
from bot.discord.delivery import Delivery
from bot.discord.errors import KlingCommandTree
from bot.discord.status import StatusMessages
from bot.discord.views import DYNAMIC_ITEMS, on_animate_modal_submit
from bot.kling.errors import KlingInvalidRequest
from bot.kling.images import ImageRejected, PreparedImage, prepare_images
from bot.kling.models import TaskKind
from bot.tasks.models import Origin, TaskRecord
from bot.tasks.tracker import InputsNotStored
from bot.tasks.webhook import start_listener

if TYPE_CHECKING:
    from bot.tasks.tracker import Tracker

log = logging.getLogger(__name__)

EXTENSIONS = ("cogs.generate", "cogs.moderation")

# An input image: a member's attachment (read only once the request passed the checks) or
# bytes the bot already holds (a result being animated).
ImageSource = bytes | discord.Attachment


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
        tracker: Tracker | None,
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
        self._webhook_runner: web.AppRunner | None = None
        self.webhook_port: int | None = None
        # Weak: a member's lock lives only while one of their commands holds or awaits it.
        self._member_locks: weakref.WeakValueDictionary[tuple[int | None, int], asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    @property
    def tracker(self) -> Tracker:
        if self._tracker is None:
            raise RuntimeError("this KlingBot was created without a tracker (command sync only)")
        return self._tracker

    async def setup_hook(self) -> None:
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        if self._tracker is None:  # `kling-bot sync`: commands only, nothing runs
            return
        self.add_dynamic_items(*DYNAMIC_ITEMS)
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

    # --- the submission flow shared by commands, buttons and the Animate modal --------------

    @staticmethod
    def origin_of(interaction: discord.Interaction[Any]) -> Origin:
        return Origin(
            channel_id=interaction.channel_id or 0,
            user_id=interaction.user.id,
            guild_id=interaction.guild_id,
        )

    async def check_request(
        self, interaction: discord.Interaction[KlingBot], params: dict[str, Any]
    ) -> None:
        await checks.check_request(
            interaction,
            prompt=params.get("prompt"),
            negative_prompt=params.get("negative_prompt"),
        )

    async def submit_request(
        self,
        interaction: discord.Interaction[KlingBot],
        kind: TaskKind,
        params: dict[str, Any],
        items: Sequence[tuple[str, ImageSource]],
    ) -> TaskRecord:
        """Check the rules, read and prepare the images, submit, and follow the task in the reply.

        Cheapest first, so a request that is refused costs no download and no decoding: the
        channel, blocked words and member limits; then what Discord reports about each
        attachment; then the download; then the images. The interaction must already be
        deferred. Raises ``checks.Refused`` (nothing was submitted) with a message for the
        member.
        """
        clean = {key: value for key, value in params.items() if value not in (None, "")}
        # One member's commands are checked and stored one at a time, so two sent together
        # cannot both pass a limit that only one of them fits in.
        async with self.member_lock(interaction.guild_id, interaction.user.id):
            await self.check_request(interaction, params)
            prepared = await self._prepared_images(items)
            task = await self._submit_checked(kind, clean, prepared, self.origin_of(interaction))
        changes = tuple(f"{p.label}: {change}" for p in prepared for change in p.changes)
        interaction.extras["status_shown"] = True
        await self.status_messages.follow(task, interaction, changes)
        log.info(
            "task %s (%s) submitted by user %s in channel %s",
            task.id,
            kind,
            interaction.user.id,
            interaction.channel_id,
        )
        return task

    async def _prepared_images(
        self, items: Sequence[tuple[str, ImageSource]]
    ) -> list[PreparedImage]:
        attachments = [(label, s) for label, s in items if isinstance(s, discord.Attachment)]
        checks.check_attachments(attachments)
        names = {label: checks.attachment_name(label, a) for label, a in attachments}
        inputs = [(label, await _read(names.get(label, label), source)) for label, source in items]
        try:
            return await prepare_images(inputs, fit=self.settings.image_fit)
        except ImageRejected as exc:
            name = names.get(exc.label, exc.label)
            raise checks.Refused(f"{name}: {exc.reason}. {exc.hint}") from None

    def member_lock(self, guild_id: int | None, user_id: int) -> asyncio.Lock:
        """Held while one of the member's requests is checked against the limits, has its images
        read and prepared, and is stored."""
        lock = self._member_locks.get((guild_id, user_id))
        if lock is None:
            lock = self._member_locks[(guild_id, user_id)] = asyncio.Lock()
        return lock

    async def _submit_checked(
        self,
        kind: TaskKind,
        params: dict[str, Any],
        prepared: Sequence[PreparedImage],
        origin: Origin,
    ) -> TaskRecord:
        try:
            return await self.tracker.submit(kind, params, prepared, origin)
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(part) for part in error["loc"])
            raise checks.Refused(
                f"Kling would refuse this request: {where}: {error['msg']}."
            ) from None
        except KlingInvalidRequest as exc:
            raise checks.Refused(f"Kling refused this request: {exc}") from None
        except InputsNotStored as exc:
            raise checks.Refused(exc.user_message) from None


async def _read(name: str, source: ImageSource) -> bytes:
    if isinstance(source, bytes):
        return source
    try:
        return await source.read()
    except discord.HTTPException:
        raise checks.Refused(
            f"{name}: I could not download it from Discord. Attach it again."
        ) from None
