"""Members' commands: /kling image, /kling video, /kling queue, /kling status, /kling help.

Thin: turns Discord input into calls on the bot and tracker, and results into messages.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import discord
from discord import app_commands
from discord.app_commands import Choice
from discord.ext import commands

from bot.discord import embeds
from bot.discord.bot import KlingBot
from bot.discord.checks import Refused, guild_config
from bot.kling.models import IMAGE_ASPECT_RATIOS, IMAGE_MODELS, VIDEO_ASPECT_RATIOS, TaskKind
from bot.tasks.models import ACTIVE_STATES

log = logging.getLogger(__name__)

IMAGE_RATIO_CHOICES = [Choice(name=r, value=r) for r in IMAGE_ASPECT_RATIOS]
VIDEO_RATIO_CHOICES = [Choice(name=r, value=r) for r in VIDEO_ASPECT_RATIOS]
MODEL_CHOICES = [Choice(name=m, value=m) for m in IMAGE_MODELS]
MODE_CHOICES = [Choice(name="std (standard)", value="std"), Choice(name="pro", value="pro")]
DURATION_CHOICES = [Choice(name="5 seconds", value="5"), Choice(name="10 seconds", value="10")]


def given(
    named: list[tuple[str, discord.Attachment | None]],
) -> list[tuple[str, discord.Attachment]]:
    """The attachments the member gave, in option order. They are read by ``submit_request``,
    only once the request passed the checks that need no download."""
    return [(label, attachment) for label, attachment in named if attachment is not None]


# Guild only: in DMs no moderator sees the tasks and no guild rule (blocked words, limits) applies.
@app_commands.guild_only()
class Generate(commands.GroupCog, group_name="kling", group_description="Generate with Kling AI"):
    def __init__(self, bot: KlingBot) -> None:
        self.bot = bot
        super().__init__()

    # posts_in_channel: the result is posted with the bot's own permissions, checked up front.
    @app_commands.command(name="image", extras={"posts_in_channel": True})
    @app_commands.describe(
        prompt="What the picture should show (optional: the images alone can be enough)",
        subject1="The main subject image (JPEG, PNG or WebP)",
        subject2="Another subject image",
        subject3="Another subject image",
        subject4="Another subject image",
        scene="A background or scene image",
        style="An image whose style to copy",
        negative_prompt="What the picture should not show",
        count="How many images to make (1-9; default: this server's)",
        aspect_ratio="The shape of the images (default: this server's)",
        model="The Kling image model (default: this server's)",
    )
    @app_commands.choices(aspect_ratio=IMAGE_RATIO_CHOICES, model=MODEL_CHOICES)
    async def image(
        self,
        interaction: discord.Interaction[KlingBot],
        subject1: discord.Attachment,
        prompt: app_commands.Range[str, 1, 2500] | None = None,
        subject2: discord.Attachment | None = None,
        subject3: discord.Attachment | None = None,
        subject4: discord.Attachment | None = None,
        scene: discord.Attachment | None = None,
        style: discord.Attachment | None = None,
        negative_prompt: app_commands.Range[str, 1, 2500] | None = None,
        count: app_commands.Range[int, 1, 9] | None = None,
        aspect_ratio: str | None = None,
        model: str | None = None,
    ) -> None:
        """Make images from 1-4 subject images, optional scene and style images and prompt."""
        await interaction.response.defer(thinking=True)
        items = given(
            [
                ("subject1", subject1),
                ("subject2", subject2),
                ("subject3", subject3),
                ("subject4", subject4),
                ("scene", scene),
                ("style", style),
            ]
        )
        defaults = (await guild_config(self.bot, interaction.guild_id)).defaults
        params: dict[str, Any] = {
            "prompt": prompt,
            "negative_prompt": negative_prompt,
            **defaults.image_options(
                count=count,
                aspect_ratio=aspect_ratio,
                model=model,
                server_model=self.bot.settings.kling_image_model,
            ),
        }
        await self.bot.submit_request(interaction, TaskKind.IMAGE, params, items)

    @app_commands.command(name="video", extras={"posts_in_channel": True})
    @app_commands.describe(
        prompt="What should happen in the video",
        image1="The first image (JPEG, PNG or WebP)",
        image2="Another image",
        image3="Another image",
        image4="Another image",
        negative_prompt="What the video should not show",
        mode="std is faster and cheaper, pro looks better (default: this server's)",
        duration="Length of the video (default: this server's)",
        aspect_ratio="The shape of the video (default: this server's)",
    )
    @app_commands.choices(
        mode=MODE_CHOICES, duration=DURATION_CHOICES, aspect_ratio=VIDEO_RATIO_CHOICES
    )
    async def video(
        self,
        interaction: discord.Interaction[KlingBot],
        prompt: app_commands.Range[str, 1, 2500],
        image1: discord.Attachment,
        image2: discord.Attachment | None = None,
        image3: discord.Attachment | None = None,
        image4: discord.Attachment | None = None,
        negative_prompt: app_commands.Range[str, 1, 2500] | None = None,
        mode: str | None = None,
        duration: str | None = None,
        aspect_ratio: str | None = None,
    ) -> None:
        """Make a 5 or 10 second video from 1-4 images and a prompt."""
        await interaction.response.defer(thinking=True)
        items = given(
            [("image1", image1), ("image2", image2), ("image3", image3), ("image4", image4)]
        )
        defaults = (await guild_config(self.bot, interaction.guild_id)).defaults
        params: dict[str, Any] = {
            "prompt": prompt,
            "negative_prompt": negative_prompt,
            **defaults.video_options(mode=mode, duration=duration, aspect_ratio=aspect_ratio),
        }
        await self.bot.submit_request(interaction, TaskKind.VIDEO, params, items)

    @app_commands.command(name="queue")
    async def queue(self, interaction: discord.Interaction[KlingBot]) -> None:
        """Your tasks, their places in the queue, and how long the queue is."""
        tracker = self.bot.tracker
        mine = await tracker.store.list_tasks(
            guild_id=interaction.guild_id, user_id=interaction.user.id, states=ACTIVE_STATES
        )
        now = time.time()
        embed = discord.Embed(title="Kling queue", colour=discord.Colour.blurple())
        lines = [embeds.task_line(t, now=now, position=tracker.queue_position(t.id)) for t in mine]
        embed.add_field(
            name="Your tasks",
            value=embeds.short("\n".join(lines), 1024) or "You have no tasks running.",
            inline=False,
        )
        embed.add_field(name="Queue", value=queue_summary(tracker.queue_stats()), inline=False)
        await interaction.response.send_message(embed=embed, ephemeral=True)

    @app_commands.command(name="status")
    @app_commands.describe(task="The task number, e.g. 12 or #12")
    async def status(self, interaction: discord.Interaction[KlingBot], task: str) -> None:
        """Everything about one of your tasks."""
        record = await self.bot.tracker.store.find(task.strip())
        if record is None or record.user_id != interaction.user.id:
            # Same answer for "not found" and "not yours": other members' tasks stay private.
            raise Refused(f"You have no task {task}. See `/kling queue` for your tasks.")
        await interaction.response.send_message(embed=embeds.details_embed(record), ephemeral=True)

    @app_commands.command(name="help")
    async def help(self, interaction: discord.Interaction[KlingBot]) -> None:
        """How to use the Kling bot."""
        await interaction.response.send_message(embed=embeds.help_embed(), ephemeral=True)


def queue_summary(stats: dict[Any, Any]) -> str:
    lines = []
    for kind, s in stats.items():
        limit = "unlimited" if s.limit is None else str(s.limit)
        wait = f", oldest waiting {embeds.duration_words(s.oldest_wait)}" if s.queued else ""
        lines.append(f"**{kind}**: {s.queued} waiting, slots {s.slots_used}/{limit}{wait}")
    return "\n".join(lines) or "The queue is empty."


async def setup(bot: KlingBot) -> None:
    await bot.add_cog(Generate(bot))
