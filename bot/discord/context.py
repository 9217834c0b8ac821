"""What the Discord side uses of the running bot and of the task core, as Protocols.

Every module of ``bot/discord`` and ``cogs`` codes against these, never against ``KlingBot``
or ``TaskCore``: ``bot.discord.bot`` imports them and satisfies them, so the dependency goes one
way. A button or a command reaches the bot through its interaction (``app_of``). The Discord
side reads tasks and server settings only through the core's read view (``core.tasks``) and its
settings store (``core.guild_settings``), and writes tasks only through the core's methods.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import discord

from bot.config import Settings
from bot.kling.models import TaskKind
from bot.tasks.models import Origin, TaskRecord

if TYPE_CHECKING:
    from bot.kling.images import PreparedImage
    from bot.kling.params import TaskParams
    from bot.tasks.store import GuildSettingsStore, TaskReader

# Held while one member's request is checked, has its images read and is stored; weak, so a
# lock lives only while one of their requests holds or awaits it.
MemberLocks = weakref.WeakValueDictionary[tuple[int | None, int], asyncio.Lock]


class QueuePlace(Protocol):
    """Where a queued task stands (what the status message and ``/kling queue`` show)."""

    @property
    def position(self) -> int: ...
    @property
    def estimated_wait(self) -> float: ...


class QueueTotals(Protocol):
    """One kind's queue as a whole."""

    @property
    def queued(self) -> int: ...
    @property
    def slots_used(self) -> int: ...
    @property
    def limit(self) -> int | None: ...
    @property
    def oldest_wait(self) -> float: ...


class Core(Protocol):
    """The task core, as far as the Discord side calls it."""

    @property
    def tasks(self) -> TaskReader: ...  # the read view: no writes from the Discord side
    @property
    def guild_settings(self) -> GuildSettingsStore: ...

    async def submit(
        self,
        kind: TaskKind,
        params: TaskParams,
        images: Sequence[PreparedImage],
        origin: Origin,
    ) -> TaskRecord: ...
    async def resubmit(self, task_id: int, origin: Origin) -> TaskRecord: ...
    async def cancel(self, task_id: int) -> TaskRecord | None: ...
    def queue_position(self, task_id: int) -> QueuePlace | None: ...
    def queue_stats(self) -> Mapping[TaskKind, QueueTotals]: ...
    async def set_status_message(self, task_id: int, message_id: int) -> None: ...
    async def begin_delivery(self, task_id: int) -> int: ...
    async def mark_delivered(self, task_id: int) -> bool: ...
    async def mark_undeliverable(
        self, task_id: int, code: str, params: Mapping[str, str | int | float] | None = None
    ) -> bool: ...
    def result_paths(self, task: TaskRecord) -> list[Path]: ...


class FollowsStatus(Protocol):
    """Keeps a member's reply to a command showing its task's state."""

    async def follow(
        self,
        task: TaskRecord,
        interaction: discord.Interaction[Any],
        changes: tuple[str, ...] = (),
    ) -> None: ...


class HasCore(Protocol):
    """Reaches the task core (a bot made only to sync commands has none: it raises)."""

    @property
    def tracker(self) -> Core: ...


class DiscordApp(HasCore, Protocol):
    """The running bot as its commands, buttons and modals see it."""

    @property
    def settings(self) -> Settings: ...
    @property
    def status_messages(self) -> FollowsStatus: ...
    @property
    def member_locks(self) -> MemberLocks: ...


class PostingApp(HasCore, Protocol):
    """The running bot as delivery sees it: the core, and Discord's REST calls."""

    @property
    def user(self) -> discord.ClientUser | None: ...
    def get_guild(self, guild_id: int, /) -> discord.Guild | None: ...
    def get_partial_messageable(
        self, id: int, *, guild_id: int | None = None, type: discord.ChannelType | None = None
    ) -> discord.PartialMessageable: ...
    async def create_dm(self, user: discord.abc.Snowflake) -> discord.DMChannel: ...


def app_of(interaction: discord.Interaction[Any]) -> DiscordApp:
    """The bot an interaction reached (``KlingBot``, typed by what the Discord side uses)."""
    app: DiscordApp = interaction.client
    return app


def locale_of(interaction: discord.Interaction[Any]) -> str:
    """The member's Discord language (``"en-US"``), for ``bot.text.t``."""
    return str(interaction.locale)
