"""Who may act on a task through its buttons and the Animate modal.

A ``custom_id`` names only the task, and can reach the bot from any server it is in: every
button and the modal act on a task only in the server it was made in, and Again and Animate
(which start paid work) only for its owner or a moderator of that server.
"""

from __future__ import annotations

from typing import Any

import discord

from bot.discord.checks import Refused, is_moderator
from bot.discord.context import DiscordApp
from bot.discord.guild_config import load_guild_config
from bot.discord.permissions import require_channel_permissions
from bot.tasks.models import TaskRecord


async def load_task(app: DiscordApp, task_id: int) -> TaskRecord:
    task = await app.tracker.tasks.get(task_id)
    if task is None:
        raise Refused("refused.task_gone", task=f"#{task_id}")
    return task


def require_task_server(interaction: discord.Interaction[Any], task: TaskRecord) -> None:
    """Rights in another server (its moderators, its rules) say nothing about this task."""
    if interaction.guild_id != task.guild_id:
        raise Refused("refused.task_elsewhere", task=task.short_ref)


async def require_generation_rights(
    app: DiscordApp, interaction: discord.Interaction[Any], task: TaskRecord
) -> None:
    """Again and Animate: only in the task's server, by its owner or a moderator of that
    server; the guild's rules and the bot's permissions apply."""
    if interaction.guild_id is None:
        # A result sent by direct message: no channel, moderators or limits of the guild here.
        raise Refused("refused.button_server_only")
    require_task_server(interaction, task)
    require_channel_permissions(interaction)
    if interaction.user.id == task.user_id:
        return
    config = await load_guild_config(app, interaction.guild_id)
    if not is_moderator(interaction, config):
        raise Refused("refused.not_owner")


def require_viewing_rights(interaction: discord.Interaction[Any], task: TaskRecord) -> None:
    """Details: anyone in the task's server, where its result is posted; elsewhere only its
    owner, in the direct message a result is sent as when its channel cannot take it."""
    if interaction.guild_id is None and interaction.user.id == task.user_id:
        return
    require_task_server(interaction, task)
