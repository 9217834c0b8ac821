"""Moderators' commands: /kling-mod status|tasks|queue|usage|cancel|config.

``default_permissions`` only hides the group from members by default (server admins can change
it, and Discord ignores it on subcommands), so every command also checks at run time: Manage
Messages in the channel, or the moderator role from the guild config. The commands only declare
their options and call ``bot.discord.moderation``; the embeds are in ``moderation_views``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import discord
from discord import app_commands
from discord.app_commands import Range
from discord.ext import commands

from bot.discord import embeds
from bot.discord.checks import require_moderator
from bot.discord.choices import (
    DURATION_CHOICES,
    IMAGE_RATIO_CHOICES,
    MODE_CHOICES,
    MODEL_CHOICES,
    STATE_CHOICES,
    VIDEO_RATIO_CHOICES,
)
from bot.discord.context import app_of, locale_of
from bot.discord.listing import queue_embed
from bot.discord.localized import described
from bot.discord.moderation import TasksQuery, cancel_task, change_config, guild_task, usage
from bot.discord.moderation_views import TasksPager, config_embed, tasks_message, usage_embed
from bot.kling.options import IMAGE_COUNT_MAX, IMAGE_COUNT_MIN
from bot.text import t

log = logging.getLogger(__name__)

Interaction = discord.Interaction[discord.Client]
TASK_REF = "command.mod.task_ref"


@app_commands.guild_only()
@app_commands.default_permissions(manage_messages=True)
class Moderation(
    commands.GroupCog, group_name="kling-mod", group_description=described("command.mod")
):
    async def interaction_check(self, interaction: Interaction) -> bool:
        return await require_moderator(interaction)

    @app_commands.command(name="status", description=described("command.mod.status"))
    @app_commands.describe(task=described(TASK_REF))
    async def status(self, interaction: Interaction, task: str) -> None:
        record = await guild_task(app_of(interaction), interaction.guild_id, task)
        embed = embeds.details_embed(record, locale_of(interaction))
        await interaction.response.send_message(embed=embed, ephemeral=True)

    @app_commands.command(name="tasks", description=described("command.mod.tasks"))
    @app_commands.describe(
        member=described("command.mod.tasks.member"),
        state=described("command.mod.tasks.state"),
        page=described("command.mod.tasks.page"),
    )
    @app_commands.choices(state=STATE_CHOICES)
    async def tasks(
        self,
        interaction: Interaction,
        member: discord.User | None = None,
        state: str | None = None,
        page: Range[int, 1, 1000] = 1,
    ) -> None:
        app, locale = app_of(interaction), locale_of(interaction)
        query = TasksQuery(interaction.guild_id, member.id if member else None, state)
        embed, has_next = await tasks_message(app, query, page - 1, locale)
        view = TasksPager(app, interaction.user.id, query, page - 1, has_next, locale)
        await interaction.response.send_message(embed=embed, view=view, ephemeral=True)

    @app_commands.command(name="queue", description=described("command.mod.queue"))
    async def queue(self, interaction: Interaction) -> None:
        embed = queue_embed(app_of(interaction), locale_of(interaction))
        await interaction.response.send_message(embed=embed, ephemeral=True)

    @app_commands.command(name="usage", description=described("command.mod.usage"))
    @app_commands.describe(
        member=described("command.mod.usage.member"), days=described("command.mod.usage.days")
    )
    async def usage(
        self,
        interaction: Interaction,
        member: discord.User | None = None,
        days: Range[int, 1, 365] = 30,
    ) -> None:
        rows = await usage(
            app_of(interaction),
            interaction.guild_id,
            days=days,
            user_id=member.id if member else None,
            now=time.time(),
        )
        embed = usage_embed(
            rows, days=days, whole_server=member is None, locale=locale_of(interaction)
        )
        await interaction.response.send_message(embed=embed, ephemeral=True)

    @app_commands.command(name="cancel", description=described("command.mod.cancel"))
    @app_commands.describe(task=described(TASK_REF))
    async def cancel(self, interaction: Interaction, task: str) -> None:
        app = app_of(interaction)
        record = await guild_task(app, interaction.guild_id, task)
        outcome = await cancel_task(app, record)
        log.info("moderator %s cancelled task %s", interaction.user.id, record.id)
        text = t(outcome, locale_of(interaction), task=record.short_ref)
        await interaction.response.send_message(text, ephemeral=True)

    @app_commands.command(name="config", description=described("command.mod.config"))
    @app_commands.describe(
        allow_channel=described("command.mod.config.allow_channel"),
        disallow_channel=described("command.mod.config.disallow_channel"),
        max_active=described("command.mod.config.max_active"),
        daily_limit=described("command.mod.config.daily_limit"),
        block_word=described("command.mod.config.block_word"),
        unblock_word=described("command.mod.config.unblock_word"),
        moderator_role=described("command.mod.config.moderator_role"),
        clear_moderator_role=described("command.mod.config.clear_moderator_role"),
        image_model=described("command.mod.config.image_model"),
        image_aspect_ratio=described("command.mod.config.image_aspect_ratio"),
        image_count=described(
            "command.mod.config.image_count", min=IMAGE_COUNT_MIN, max=IMAGE_COUNT_MAX
        ),
        video_mode=described("command.mod.config.video_mode"),
        video_duration=described("command.mod.config.video_duration"),
        video_aspect_ratio=described("command.mod.config.video_aspect_ratio"),
        clear_defaults=described("command.mod.config.clear_defaults"),
    )
    @app_commands.choices(
        image_model=MODEL_CHOICES,
        image_aspect_ratio=IMAGE_RATIO_CHOICES,
        video_mode=MODE_CHOICES,
        video_duration=DURATION_CHOICES,
        video_aspect_ratio=VIDEO_RATIO_CHOICES,
    )
    async def config(
        self,
        interaction: Interaction,
        allow_channel: discord.abc.GuildChannel | None = None,
        disallow_channel: discord.abc.GuildChannel | None = None,
        max_active: Range[int, 0, 100] | None = None,
        daily_limit: Range[int, 0, 10000] | None = None,
        block_word: Range[str, 1, 100] | None = None,
        unblock_word: Range[str, 1, 100] | None = None,
        moderator_role: discord.Role | None = None,
        clear_moderator_role: bool = False,
        image_model: str | None = None,
        image_aspect_ratio: str | None = None,
        image_count: Range[int, IMAGE_COUNT_MIN, IMAGE_COUNT_MAX] | None = None,
        video_mode: str | None = None,
        video_duration: str | None = None,
        video_aspect_ratio: str | None = None,
        clear_defaults: bool = False,
    ) -> None:
        guild_id = interaction.guild_id
        assert guild_id is not None  # guild_only
        app, locale = app_of(interaction), locale_of(interaction)
        settings: dict[str, Any] = {
            "allow_channel": allow_channel.id if allow_channel else None,
            "disallow_channel": disallow_channel.id if disallow_channel else None,
            "max_active": max_active,
            "daily_limit": daily_limit,
            "block_word": block_word,
            "unblock_word": unblock_word,
            "moderator_role": moderator_role.id if moderator_role else None,
            "clear_moderator_role": clear_moderator_role,
        }
        defaults: dict[str, Any] = {
            "image_model": image_model,
            "image_aspect_ratio": image_aspect_ratio,
            "image_count": image_count,
            "video_mode": video_mode,
            "video_duration": video_duration,
            "video_aspect_ratio": video_aspect_ratio,
        }
        config, changed = await change_config(
            app,
            guild_id,
            settings=settings,
            defaults=defaults,
            clear_defaults=clear_defaults,
            locale=locale,
        )
        if changed:
            log.info("moderator %s changed guild %s config", interaction.user.id, guild_id)
        server_model = app.settings.kling_image_model
        embed = config_embed(config, changed, server_model=server_model, locale=locale)
        await interaction.response.send_message(embed=embed, ephemeral=True)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Moderation())
