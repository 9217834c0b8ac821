"""Answering an interaction at whatever stage it is: not yet answered, deferred, or answered.

Every reply the bot gives to a member goes through ``reply`` (and refusals through ``refuse``),
so the rules about Discord's deferred placeholders live in one place.
"""

from __future__ import annotations

import logging
from typing import Any

import discord

log = logging.getLogger(__name__)


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


def mark_status_shown(interaction: discord.Interaction[Any]) -> None:
    """The deferred reply now shows a task's status: a later refusal must not delete it."""
    interaction.extras["status_shown"] = True
