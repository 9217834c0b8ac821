"""Who may do what, and the rules a request must pass before anything is downloaded.

``Refused`` carries a catalogue key and its values, not a sentence: the error reporter words it
in the member's language. The rules read the guild config (``bot.discord.guild_config``) and
count the member's tasks through the core's read view; what Discord reports about an attachment
(type, size, dimensions) is checked before the file is read.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any

import discord
from discord import app_commands

from bot.discord.context import DiscordApp, app_of
from bot.discord.guild_config import GuildConfig, load_guild_config
from bot.kling.images import MAX_PIXELS
from bot.tasks.failures import Failure
from bot.tasks.models import ACTIVE_STATES
from bot.text import t

DAY = 24 * 3600.0
# Discord accepts bigger uploads (boosted servers); Kling takes 10 MB after conversion. Reading
# more than this into memory for one command is not worth it.
MAX_ATTACHMENT_BYTES = 25 * 1024 * 1024
# How many allowed channels a refusal names.
CHANNELS_NAMED = 10


class Refused(app_commands.CheckFailure):
    """A request refused for a reason the member can act on: a catalogue key and its values.

    ``str()`` is the English sentence (for logs); ``words(locale)`` the member's.
    """

    def __init__(self, key: str, /, **params: Any) -> None:
        self.key = key
        self.params = params
        super().__init__(t(key, None, **params))

    def words(self, locale: str | None) -> str:
        return t(self.key, locale, **self.params)


class RefusedFailure(Refused):
    """Refused for a reason the core words as a failure code (``bot.tasks.failures``)."""

    def __init__(self, failure: Failure) -> None:
        self.failure = failure
        super().__init__(f"failure.{failure.code}", **failure.params)

    def words(self, locale: str | None) -> str:
        return self.failure.words(locale)


class NotModerator(Refused):
    def __init__(self) -> None:
        super().__init__("refused.not_moderator")


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


async def require_moderator(interaction: discord.Interaction[Any]) -> bool:
    """Run-time check for moderator commands: default_permissions is only a hint."""
    config = await load_guild_config(app_of(interaction), interaction.guild_id)
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
    app: DiscordApp,
    interaction: discord.Interaction[Any],
    *,
    prompt: str | None,
    negative_prompt: str | None,
) -> None:
    """Channel, blocked words and the member's limits, in that order (cheapest first)."""
    config = await load_guild_config(app, interaction.guild_id)
    _check_channel(interaction, config)
    word = blocked_word_in(config, prompt, negative_prompt)
    if word is not None:
        raise Refused("refused.blocked_word", word=word)
    await _check_member_limits(app, interaction, config)


def _check_channel(interaction: discord.Interaction[Any], config: GuildConfig) -> None:
    if interaction.guild_id is None or not config.allowed_channels:
        return
    # A thread counts as its parent channel.
    parent_id = getattr(interaction.channel, "parent_id", None)
    allowed = config.allowed_channels
    if interaction.channel_id not in allowed and parent_id not in allowed:
        where = ", ".join(f"<#{c}>" for c in allowed[:CHANNELS_NAMED])
        raise Refused("refused.channel_not_allowed", channels=where)


async def _check_member_limits(
    app: DiscordApp, interaction: discord.Interaction[Any], config: GuildConfig
) -> None:
    tasks = app.tracker.tasks
    guild_id, user_id = interaction.guild_id, interaction.user.id
    if config.max_active > 0:
        active = await tasks.count_tasks(guild_id=guild_id, user_id=user_id, states=ACTIVE_STATES)
        if active >= config.max_active:
            raise Refused("refused.max_active", count=active, limit=config.max_active)
    if config.daily_limit > 0:
        today = await tasks.count_tasks(guild_id=guild_id, user_id=user_id, since=time.time() - DAY)
        if today >= config.daily_limit:
            raise Refused("refused.daily_limit", limit=config.daily_limit)


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
            raise Refused("refused.attachment_not_image", name=name, kind=kind)
        if attachment.size > MAX_ATTACHMENT_BYTES:
            size = f"{attachment.size / 2**20:.1f}"
            raise Refused("refused.attachment_too_large", name=name, size=size)
        w, h = attachment.width, attachment.height  # None when Discord did not measure it
        if w and h and w * h > MAX_PIXELS:
            raise Refused(
                "refused.attachment_too_many_pixels",
                name=name,
                size=f"{w:,}x{h:,}",
                megapixels=f"{w * h / 1e6:.0f}",
                limit=f"{MAX_PIXELS / 1e6:g}",
            )
