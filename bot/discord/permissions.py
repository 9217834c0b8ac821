"""What the bot needs in a channel to post results, checked before paid work starts.

Only what ends in a post in the channel (generation commands, Again, Animate) is checked:
ephemeral answers need none of these permissions.
"""

from __future__ import annotations

from typing import Any

import discord
from discord import app_commands

# Threads need their own send permission. Read Message History: after an ambiguous failure
# delivery reads the channel to find its post.
REQUIRED_PERMISSIONS = (
    "view_channel",
    "send_messages",
    "attach_files",
    "embed_links",
    "read_message_history",
)


def permission_names(names: list[str]) -> str:
    """Discord's own names for permissions, as the server settings show them."""
    return ", ".join(name.replace("_", " ").title() for name in names)


def missing_channel_permissions(interaction: discord.Interaction[Any]) -> list[str]:
    if interaction.guild_id is None:
        return []
    perms = interaction.app_permissions
    in_thread = isinstance(interaction.channel, discord.Thread)
    wanted = [
        "send_messages_in_threads" if in_thread and name == "send_messages" else name
        for name in REQUIRED_PERMISSIONS
    ]
    return [name for name in wanted if not getattr(perms, name)]


def require_channel_permissions(interaction: discord.Interaction[Any]) -> None:
    """Refuse up front, naming the permissions, instead of failing when the result is ready."""
    missing = missing_channel_permissions(interaction)
    if missing:
        raise app_commands.BotMissingPermissions(missing)


def posts_in_channel(command: Any) -> bool:
    """Commands mark this with ``extras={"posts_in_channel": True}``."""
    return bool(getattr(command, "extras", {}).get("posts_in_channel"))
