"""The one error handler for slash commands, and a reply helper that works at any stage.

Known errors become short ephemeral messages; anything else is logged with its traceback and
the member gets an error id that is also in the log, so a report can be matched to its cause.
"""

from __future__ import annotations

import logging
import secrets
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands

from bot.tasks.store import DatabaseFileChanged

if TYPE_CHECKING:
    from bot.discord.bot import KlingBot

log = logging.getLogger(__name__)

# What the bot needs in a channel to post results (threads need their own send permission).
# Read Message History: after an ambiguous failure delivery reads the channel to find its post.
REQUIRED_PERMISSIONS = (
    "view_channel",
    "send_messages",
    "attach_files",
    "embed_links",
    "read_message_history",
)


def permission_names(names: list[str]) -> str:
    return ", ".join(name.replace("_", " ").title() for name in names)


async def reply(
    interaction: discord.Interaction[Any],
    content: str | None = None,
    *,
    embed: discord.Embed | None = None,
    ephemeral: bool = True,
    view: discord.ui.View | None = None,
) -> None:
    """Answer whether or not the interaction was already responded to or deferred."""
    kwargs: dict[str, Any] = {"content": content, "ephemeral": ephemeral}
    if embed is not None:
        kwargs["embed"] = embed
    if view is not None:
        kwargs["view"] = view
    if interaction.response.is_done():
        await interaction.followup.send(**kwargs)
    else:
        await interaction.response.send_message(**kwargs)


async def refuse(interaction: discord.Interaction[Any], message: str) -> None:
    """Tell only the member; remove a public "thinking..." placeholder nobody needs to see."""
    placeholder = (
        interaction.response.type is discord.InteractionResponseType.deferred_channel_message
        and not interaction.extras.get("status_shown")
    )
    if placeholder:
        # Discord turns the first followup after a deferral into the deferred message itself,
        # ignoring its ephemeral flag: remove the placeholder first so the refusal stays private.
        try:
            await interaction.delete_original_response()
        except discord.HTTPException:
            log.debug("could not delete the deferred placeholder", exc_info=True)
    await reply(interaction, message, ephemeral=True)


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
    """Refuse up front, naming the permissions, instead of failing when the result is ready.

    Only for what ends in a post in the channel (generation commands, Again, Animate):
    ephemeral answers need none of these permissions.
    """
    missing = missing_channel_permissions(interaction)
    if missing:
        raise app_commands.BotMissingPermissions(missing)


def posts_in_channel(command: Any) -> bool:
    """Commands mark this with ``extras={"posts_in_channel": True}``."""
    return bool(getattr(command, "extras", {}).get("posts_in_channel"))


class KlingCommandTree(app_commands.CommandTree["KlingBot"]):
    async def interaction_check(self, interaction: discord.Interaction[KlingBot], /) -> bool:
        if interaction.type is not discord.InteractionType.application_command:
            return True
        if posts_in_channel(interaction.command):
            require_channel_permissions(interaction)
        return True

    async def on_error(
        self, interaction: discord.Interaction[KlingBot], error: app_commands.AppCommandError, /
    ) -> None:
        message = self.message_for(error)
        if message is None:
            error_id = secrets.token_hex(3).upper()
            command = interaction.command.qualified_name if interaction.command else "?"
            original = getattr(error, "original", error)
            log.error(
                "command /%s failed (error id %s, guild %s, user %s)",
                command,
                error_id,
                interaction.guild_id,
                interaction.user.id,
                exc_info=original,
            )
            message = f"Something went wrong (error id {error_id}). Please try again later."
        try:
            await refuse(interaction, message)
        except discord.HTTPException:
            # The token may have expired or the interaction was never acknowledged in time.
            log.warning("could not tell the member about an error", exc_info=True)

    @staticmethod
    def message_for(error: app_commands.AppCommandError) -> str | None:
        if isinstance(error, app_commands.CommandOnCooldown):
            return f"Slow down: try again in {error.retry_after:.0f} s."
        if isinstance(error, app_commands.BotMissingPermissions):
            return (
                "I am missing permissions in this channel: "
                f"{permission_names(error.missing_permissions)}. Ask a server admin to grant "
                "them, or use another channel."
            )
        if isinstance(error, app_commands.MissingPermissions):
            return f"You need these permissions: {permission_names(error.missing_permissions)}."
        if isinstance(error, app_commands.NoPrivateMessage):
            return "This command only works in a server."
        if isinstance(error, app_commands.CheckFailure):
            text = str(error)
            # discord.py's generic CheckFailure text is not meant for members.
            if not text or text.startswith("The check functions"):
                return "You cannot use this command here."
            return text
        if isinstance(error, app_commands.TransformerError):
            return f"I could not use “{error.value}” for this option: check the value."
        if isinstance(error, app_commands.CommandNotFound | app_commands.CommandSignatureMismatch):
            return "This command is out of date. Please try again in a minute."
        if isinstance(getattr(error, "original", None), DatabaseFileChanged):
            return (
                "The bot cannot take new tasks right now: its database file was deleted or "
                "replaced. Nothing was sent to Kling and no credits were used. Please tell a "
                "server admin."
            )
        return None
