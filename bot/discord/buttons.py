"""The buttons on result posts: Again, Animate and Details.

They are ``DynamicItem``s: the task id lives in the ``custom_id`` (``kling:again:12``), so a
button on a week-old message still works after any number of restarts without keeping views in
memory. ``TaskButton`` does what all three share: it reads the task id from the ``custom_id``,
loads the task, checks it was made in this server and that the member may use the button (see
``task_access``), and reports any error; each button only says what it does. They are
registered in ``KlingBot.setup_hook`` (``TASK_BUTTONS``).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import discord

from bot.discord import embeds
from bot.discord.animate import AnimateModal
from bot.discord.checks import Refused
from bot.discord.context import DiscordApp, app_of, locale_of
from bot.discord.errors import report_error
from bot.discord.guild_config import load_guild_config
from bot.discord.replies import reply
from bot.discord.submission import submit_again
from bot.discord.task_access import (
    load_task,
    require_generation_rights,
    require_viewing_rights,
)
from bot.kling.models import TaskKind
from bot.tasks.models import TaskRecord
from bot.text import t


class TaskButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    # Never registered itself: each subclass matches ``kling:<its action>:<task id>``.
    template=r"kling:(?P<action>[a-z]+):(?P<id>[0-9]+)",
):
    action: ClassVar[str]
    label_key: ClassVar[str]
    emoji: ClassVar[str]
    style: ClassVar[discord.ButtonStyle]

    def __init_subclass__(cls, *, action: str, **kwargs: Any) -> None:
        super().__init_subclass__(template=rf"kling:{action}:(?P<id>[0-9]+)", **kwargs)
        cls.action = action

    def __init__(self, task_id: int, locale: str | None = None) -> None:
        super().__init__(
            discord.ui.Button(
                label=t(self.label_key, locale),
                emoji=self.emoji,
                style=self.style,
                custom_id=f"kling:{self.action}:{task_id}",
            )
        )
        self.task_id = task_id

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> TaskButton:
        return cls(int(match["id"]))

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        try:
            app = app_of(interaction)
            task = await load_task(app, self.task_id)
            await self.check_rights(app, interaction, task)
            await self.act(app, interaction, task)
        except Exception as exc:
            await report_error(interaction, exc, f"{self.action} on task {self.task_id}")

    async def check_rights(
        self, app: DiscordApp, interaction: discord.Interaction[Any], task: TaskRecord
    ) -> None:
        """Starting work (the default): the task's owner or a moderator, in its server."""
        await require_generation_rights(app, interaction, task)

    async def act(
        self, app: DiscordApp, interaction: discord.Interaction[Any], task: TaskRecord
    ) -> None:
        raise NotImplementedError


class AgainButton(TaskButton, action="again"):
    label_key, emoji, style = "button.again", "🔁", discord.ButtonStyle.primary

    async def act(
        self, app: DiscordApp, interaction: discord.Interaction[Any], task: TaskRecord
    ) -> None:
        await interaction.response.defer(thinking=True)
        await submit_again(app, interaction, task)


class AnimateButton(TaskButton, action="animate"):
    label_key, emoji, style = "button.animate", "🎬", discord.ButtonStyle.secondary

    async def act(
        self, app: DiscordApp, interaction: discord.Interaction[Any], task: TaskRecord
    ) -> None:
        if task.kind != TaskKind.IMAGE or not task.result_files:
            raise Refused("refused.animate_images_only")
        # A modal must be the first response: only quick store reads happen before it.
        defaults = (await load_guild_config(app, interaction.guild_id)).defaults
        await interaction.response.send_modal(
            AnimateModal(task, defaults, locale=locale_of(interaction))
        )


class DetailsButton(TaskButton, action="details"):
    label_key, emoji, style = "button.details", "ℹ️", discord.ButtonStyle.secondary

    async def check_rights(
        self, app: DiscordApp, interaction: discord.Interaction[Any], task: TaskRecord
    ) -> None:
        require_viewing_rights(interaction, task)

    async def act(
        self, app: DiscordApp, interaction: discord.Interaction[Any], task: TaskRecord
    ) -> None:
        await reply(interaction, embed=embeds.details_embed(task, locale_of(interaction)))


TASK_BUTTONS = (AgainButton, AnimateButton, DetailsButton)


def result_view(
    task: TaskRecord,
    *,
    succeeded: bool,
    direct_message: bool = False,
    locale: str | None = None,
) -> discord.ui.View:
    """The buttons of a result post. A direct message gets Details only: Again and Animate
    start tasks, which only the guild's channel, limits and moderators may govern."""
    view = discord.ui.View(timeout=None)
    if not direct_message:
        view.add_item(AgainButton(task.id, locale))
        if succeeded and task.kind == TaskKind.IMAGE:
            view.add_item(AnimateButton(task.id, locale))
    view.add_item(DetailsButton(task.id, locale))
    return view
