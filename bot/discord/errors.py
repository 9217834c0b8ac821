"""The one error reporter: what a member is told when a command, button or modal fails.

Known errors (a refusal, a missing permission, a cooldown, a replaced database file) become a
short private message in the member's language; anything else is logged with its traceback and
the member gets an error id that is also in the log, so a report can be matched to its cause.
The command tree calls ``report_error`` from ``on_error``; every component and modal callback
calls it from its own ``except``.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

import discord
from discord import app_commands

from bot.discord.checks import Refused
from bot.discord.context import locale_of
from bot.discord.permissions import permission_names, posts_in_channel, require_channel_permissions
from bot.discord.replies import refuse
from bot.tasks.store import DatabaseFileChanged
from bot.text import t

log = logging.getLogger(__name__)


def message_for(error: BaseException, locale: str | None = None) -> str | None:
    """The member's words for a known error, or None for one that is a bug or an outage."""
    if isinstance(error, Refused):
        return error.words(locale)
    if isinstance(error, app_commands.CommandOnCooldown):
        return t("error.cooldown", locale, seconds=f"{error.retry_after:.0f}")
    if isinstance(error, app_commands.BotMissingPermissions):
        names = permission_names(error.missing_permissions)
        return t("error.bot_missing_permissions", locale, permissions=names)
    if isinstance(error, app_commands.MissingPermissions):
        names = permission_names(error.missing_permissions)
        return t("error.member_missing_permissions", locale, permissions=names)
    if isinstance(error, app_commands.NoPrivateMessage):
        return t("error.server_only", locale)
    if isinstance(error, app_commands.CheckFailure):
        text = str(error)
        # discord.py's generic CheckFailure text is not meant for members.
        if not text or text.startswith("The check functions"):
            return t("error.check_failed", locale)
        return text
    if isinstance(error, app_commands.TransformerError):
        return t("error.bad_option_value", locale, value=error.value)
    if isinstance(error, app_commands.CommandNotFound | app_commands.CommandSignatureMismatch):
        return t("error.command_out_of_date", locale)
    if isinstance(error, DatabaseFileChanged):
        return t("error.database_file_changed", locale)
    original = getattr(error, "original", None)  # CommandInvokeError wraps the callback's error
    if isinstance(original, BaseException):
        return message_for(original, locale)
    return None


async def report_error(
    interaction: discord.Interaction[Any], error: BaseException, what: str
) -> None:
    """Tell the member what went wrong (privately); log what was not their doing."""
    locale = locale_of(interaction)
    message = message_for(error, locale)
    if message is None:
        error_id = secrets.token_hex(3).upper()
        log.error(
            "%s failed (error id %s, guild %s, user %s)",
            what,
            error_id,
            interaction.guild_id,
            interaction.user.id,
            exc_info=getattr(error, "original", error),
        )
        message = t("error.unexpected", locale, error_id=error_id)
    try:
        await refuse(interaction, message)
    except discord.HTTPException:
        # The token may have expired or the interaction was never acknowledged in time.
        log.warning("could not tell the member about an error", exc_info=True)


class KlingCommandTree(app_commands.CommandTree[discord.Client]):
    """Checks the bot's channel permissions before a command that posts, reports errors."""

    async def interaction_check(self, interaction: discord.Interaction[Any], /) -> bool:
        if interaction.type is not discord.InteractionType.application_command:
            return True
        if posts_in_channel(interaction.command):
            require_channel_permissions(interaction)
        return True

    async def on_error(
        self, interaction: discord.Interaction[Any], error: app_commands.AppCommandError, /
    ) -> None:
        command = interaction.command.qualified_name if interaction.command else "?"
        await report_error(interaction, error, f"command /{command}")

    message_for = staticmethod(message_for)
