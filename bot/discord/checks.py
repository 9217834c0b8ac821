"""Who may do what: moderator rights, the per-guild rules stored in the guild config, and what
Discord tells about an attachment (checked before it is downloaded).

Guild config keys (``store.get_guild_config``/``set_guild_config``, a JSON object):
``allowed_channels`` (list of channel ids; empty = every channel), ``max_active`` (a member's
tasks not yet finished at Kling), ``daily_limit`` (a member's tasks per 24 h), ``blocked_words``
(list), ``moderator_role_id``, ``defaults`` (the options a member leaves out: ``image_model``,
``image_aspect_ratio``, ``image_count``, ``video_mode``, ``video_duration``,
``video_aspect_ratio``). A missing limit uses the default below; 0 means no limit. A missing
default uses the server-wide setting, else Kling's own default.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands

from bot.kling.images import MAX_PIXELS
from bot.kling.models import (
    IMAGE_ASPECT_RATIOS,
    IMAGE_MODELS,
    VIDEO_ASPECT_RATIOS,
    ImageTaskRequest,
    TaskKind,
    VideoTaskRequest,
)
from bot.tasks.models import ACTIVE_STATES
from bot.text import t

if TYPE_CHECKING:
    from bot.discord.bot import KlingBot

# Used where no Settings are at hand; the bot passes MEMBER_MAX_ACTIVE / MEMBER_DAILY_LIMIT.
DEFAULT_MAX_ACTIVE = 3
DEFAULT_DAILY_LIMIT = 50
DAY = 24 * 3600.0
# Discord accepts bigger uploads (boosted servers); Kling takes 10 MB after conversion. Reading
# more than this into memory for one command is not worth it.
MAX_ATTACHMENT_BYTES = 25 * 1024 * 1024


class Refused(app_commands.CheckFailure):
    """A request refused for a reason the member can act on; str() is the message."""


class NotModerator(app_commands.CheckFailure):
    def __init__(self) -> None:
        super().__init__(
            "Only moderators can do this (Manage Messages permission or the moderator role)."
        )


def request_default(kind: TaskKind, name: str) -> Any:
    """Kling's own default for a request field: the request models are the one source."""
    request = ImageTaskRequest if kind == TaskKind.IMAGE else VideoTaskRequest
    return request.model_fields[name].default


def first_set(*values: Any) -> Any:
    return next((value for value in values if value is not None), None)


def _one_of(value: Any, allowed: Iterable[Any]) -> Any:
    # A stored value Kling no longer takes (a retired model) must not break every command.
    return value if value in tuple(allowed) else None


@dataclass(slots=True)
class GenerationDefaults:
    """A guild's values for the options a member leaves out; None: the server-wide default."""

    image_model: str | None = None
    image_aspect_ratio: str | None = None
    image_count: int | None = None
    video_mode: str | None = None
    video_duration: str | None = None
    video_aspect_ratio: str | None = None

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> GenerationDefaults:
        raw = raw or {}
        return cls(
            image_model=_one_of(raw.get("image_model"), IMAGE_MODELS),
            image_aspect_ratio=_one_of(raw.get("image_aspect_ratio"), IMAGE_ASPECT_RATIOS),
            image_count=_one_of(raw.get("image_count"), range(1, 10)),
            video_mode=_one_of(raw.get("video_mode"), ("std", "pro")),
            video_duration=_one_of(raw.get("video_duration"), ("5", "10")),
            video_aspect_ratio=_one_of(raw.get("video_aspect_ratio"), VIDEO_ASPECT_RATIOS),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def image_options(
        self,
        *,
        count: int | None,
        aspect_ratio: str | None,
        model: str | None,
        server_model: str | None,
    ) -> dict[str, Any]:
        """Image parameters: the member's option, else this guild's default, else the
        server-wide setting, else Kling's default. Stored resolved, so Again repeats them."""
        image = TaskKind.IMAGE
        return {
            "n": first_set(count, self.image_count, request_default(image, "n")),
            "aspect_ratio": first_set(
                aspect_ratio, self.image_aspect_ratio, request_default(image, "aspect_ratio")
            ),
            "model_name": first_set(
                model, self.image_model, server_model, request_default(image, "model_name")
            ),
        }

    def video_options(
        self, *, mode: str | None, duration: str | None, aspect_ratio: str | None
    ) -> dict[str, Any]:
        """Video parameters, resolved like ``image_options``."""
        video = TaskKind.VIDEO
        return {
            "mode": first_set(mode, self.video_mode, request_default(video, "mode")),
            "duration": first_set(
                duration, self.video_duration, request_default(video, "duration")
            ),
            "aspect_ratio": first_set(
                aspect_ratio, self.video_aspect_ratio, request_default(video, "aspect_ratio")
            ),
            "model_name": request_default(video, "model_name"),
        }


@dataclass(slots=True)
class GuildConfig:
    allowed_channels: list[int] = field(default_factory=list)
    max_active: int = DEFAULT_MAX_ACTIVE
    daily_limit: int = DEFAULT_DAILY_LIMIT
    blocked_words: list[str] = field(default_factory=list)
    moderator_role_id: int | None = None
    defaults: GenerationDefaults = field(default_factory=GenerationDefaults)

    @classmethod
    def from_dict(
        cls,
        raw: dict[str, Any] | None,
        *,
        max_active: int = DEFAULT_MAX_ACTIVE,
        daily_limit: int = DEFAULT_DAILY_LIMIT,
    ) -> GuildConfig:
        """The guild's stored config; limits it never set come from the server-wide defaults."""
        raw = raw or {}

        def limit(key: str, default: int) -> int:
            value = raw.get(key)
            return default if value is None else int(value)

        role = raw.get("moderator_role_id")
        return cls(
            allowed_channels=[int(c) for c in raw.get("allowed_channels") or []],
            max_active=limit("max_active", max_active),
            daily_limit=limit("daily_limit", daily_limit),
            blocked_words=[str(w) for w in raw.get("blocked_words") or []],
            moderator_role_id=int(role) if role else None,
            defaults=GenerationDefaults.from_dict(raw.get("defaults")),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "allowed_channels": list(self.allowed_channels),
            "max_active": self.max_active,
            "daily_limit": self.daily_limit,
            "blocked_words": list(self.blocked_words),
            "moderator_role_id": self.moderator_role_id,
            "defaults": self.defaults.to_dict(),
        }


async def guild_config(bot: KlingBot, guild_id: int | None) -> GuildConfig:
    settings = bot.settings
    raw = await bot.tracker.store.get_guild_config(guild_id) if guild_id is not None else {}
    return GuildConfig.from_dict(
        raw, max_active=settings.member_max_active, daily_limit=settings.member_daily_limit
    )


def is_moderator(interaction: discord.Interaction[Any], config: GuildConfig) -> bool:
    # interaction.permissions are the member's resolved permissions in this channel.
    if interaction.guild_id is None:
        return False
    if interaction.permissions.manage_messages or interaction.permissions.administrator:
        return True
    user = interaction.user
    if config.moderator_role_id and isinstance(user, discord.Member):
        return any(role.id == config.moderator_role_id for role in user.roles)
    return False


async def require_moderator(interaction: discord.Interaction[KlingBot]) -> bool:
    """Run-time check for moderator commands: default_permissions is only a hint."""
    config = await guild_config(interaction.client, interaction.guild_id)
    if not is_moderator(interaction, config):
        raise NotModerator()
    return True


def blocked_word_in(config: GuildConfig, *texts: str | None) -> str | None:
    """The first blocked word found as a whole word, case-insensitively, or None."""
    for word in config.blocked_words:
        pattern = re.compile(rf"(?<!\w){re.escape(word)}(?!\w)", re.IGNORECASE)
        for text in texts:
            if text and pattern.search(text):
                return word
    return None


async def check_request(
    interaction: discord.Interaction[KlingBot],
    *,
    prompt: str | None,
    negative_prompt: str | None,
) -> None:
    """Channel, limits and blocked words; raises Refused with a message for the member."""
    bot = interaction.client
    store = bot.tracker.store
    config = await guild_config(bot, interaction.guild_id)
    channel_id = interaction.channel_id
    if interaction.guild_id is not None and config.allowed_channels:
        # A thread counts as its parent channel.
        channel = interaction.channel
        parent_id = getattr(channel, "parent_id", None)
        if channel_id not in config.allowed_channels and parent_id not in config.allowed_channels:
            where = ", ".join(f"<#{c}>" for c in config.allowed_channels[:10])
            raise Refused(f"Kling generation is not enabled in this channel. Try {where}.")
    word = blocked_word_in(config, prompt, negative_prompt)
    if word is not None:
        raise Refused(f"Your prompt contains the blocked word “{word}”. Reword it and try again.")
    user_id = interaction.user.id
    if config.max_active > 0:
        active = await store.count_tasks(
            guild_id=interaction.guild_id, user_id=user_id, states=ACTIVE_STATES
        )
        if active >= config.max_active:
            raise Refused(
                f"You already have {t('count.task', count=active)} running "
                f"(limit {config.max_active}). "
                "Wait for one to finish — see `/kling queue`."
            )
    if config.daily_limit > 0:
        today = await store.count_tasks(
            guild_id=interaction.guild_id, user_id=user_id, since=time.time() - DAY
        )
        if today >= config.daily_limit:
            raise Refused(
                f"You reached the limit of {config.daily_limit} tasks in 24 hours. Try again later."
            )


def attachment_name(label: str, attachment: discord.Attachment) -> str:
    """How messages name an input: the command option and the member's file."""
    return f"{label} ({attachment.filename})"


def check_attachments(attachments: Sequence[tuple[str, discord.Attachment]]) -> None:
    """Refuses, from what Discord reports about each file, what could not be used anyway, so
    nothing is downloaded or decoded for it. The image itself is checked again once read."""
    for label, attachment in attachments:
        name = attachment_name(label, attachment)
        kind = attachment.content_type  # None when Discord could not tell
        if kind and not kind.lower().startswith(("image/", "application/octet-stream")):
            raise Refused(
                f"{name} is not an image (Discord says it is {kind}). "
                "Attach a JPEG, PNG, WebP or GIF."
            )
        if attachment.size > MAX_ATTACHMENT_BYTES:
            raise Refused(
                f"{name} is {attachment.size / 2**20:.1f} MB, more than the 25 MB this bot reads. "
                "Attach a smaller image (a JPEG or PNG under 10 MB is best)."
            )
        w, h = attachment.width, attachment.height  # None when Discord did not measure it
        if w and h and w * h > MAX_PIXELS:
            raise Refused(
                f"{name} is {w:,}x{h:,} pixels ({w * h / 1e6:.0f} megapixels), more than the "
                f"{MAX_PIXELS / 1e6:g} megapixels this bot can work on. "
                "Resize it and attach it again."
            )
