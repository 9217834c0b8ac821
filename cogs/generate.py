"""Members' commands: /kling image, /kling video, /kling queue, /kling status, /kling help.

Only the commands' shape (options, descriptions, choices) is declared here; each command calls
a use-case of ``bot.discord`` and answers with what it returns.
"""

from __future__ import annotations

import discord
from discord import app_commands
from discord.app_commands import Range
from discord.ext import commands

from bot.discord import embeds
from bot.discord.choices import (
    DURATION_CHOICES,
    IMAGE_RATIO_CHOICES,
    MODE_CHOICES,
    MODEL_CHOICES,
    VIDEO_RATIO_CHOICES,
)
from bot.discord.context import app_of, locale_of
from bot.discord.listing import help_embed, my_queue_embed
from bot.discord.localized import described
from bot.discord.moderation import own_task
from bot.discord.submission import image_params, submit, video_params
from bot.discord.words import one_of_words
from bot.kling.options import (
    IMAGE_COUNT_MAX,
    IMAGE_COUNT_MIN,
    MAX_INPUT_IMAGES,
    MAX_PROMPT_CHARS,
    VIDEO_DURATIONS,
)

Prompt = Range[str, 1, MAX_PROMPT_CHARS]


def given(
    named: list[tuple[str, discord.Attachment | None]],
) -> list[tuple[str, discord.Attachment]]:
    """The attachments the member gave, in option order. They are read by ``submit``, only
    once the request passed the checks that need no download."""
    return [(label, attachment) for label, attachment in named if attachment is not None]


# Guild only: in DMs no moderator sees the tasks and no guild rule (blocked words, limits) applies.
@app_commands.guild_only()
class Generate(commands.GroupCog, group_name="kling", group_description=described("command.kling")):
    # posts_in_channel: the result is posted with the bot's own permissions, checked up front.
    @app_commands.command(
        name="image",
        description=described("command.image", inputs=MAX_INPUT_IMAGES),
        extras={"posts_in_channel": True},
    )
    @app_commands.describe(
        prompt=described("command.image.prompt"),
        subject1=described("command.image.subject1"),
        subject2=described("command.image.subject"),
        subject3=described("command.image.subject"),
        subject4=described("command.image.subject"),
        scene=described("command.image.scene"),
        style=described("command.image.style"),
        negative_prompt=described("command.image.negative_prompt"),
        count=described("command.image.count", min=IMAGE_COUNT_MIN, max=IMAGE_COUNT_MAX),
        aspect_ratio=described("command.image.aspect_ratio"),
        model=described("command.image.model"),
    )
    @app_commands.choices(aspect_ratio=IMAGE_RATIO_CHOICES, model=MODEL_CHOICES)
    async def image(
        self,
        interaction: discord.Interaction[discord.Client],
        subject1: discord.Attachment,
        prompt: Prompt | None = None,
        subject2: discord.Attachment | None = None,
        subject3: discord.Attachment | None = None,
        subject4: discord.Attachment | None = None,
        scene: discord.Attachment | None = None,
        style: discord.Attachment | None = None,
        negative_prompt: Prompt | None = None,
        count: Range[int, IMAGE_COUNT_MIN, IMAGE_COUNT_MAX] | None = None,
        aspect_ratio: str | None = None,
        model: str | None = None,
    ) -> None:
        await interaction.response.defer(thinking=True)
        app = app_of(interaction)
        params = await image_params(
            app,
            interaction.guild_id,
            prompt=prompt,
            negative_prompt=negative_prompt,
            count=count,
            aspect_ratio=aspect_ratio,
            model=model,
        )
        images = [
            ("subject1", subject1),
            ("subject2", subject2),
            ("subject3", subject3),
            ("subject4", subject4),
            ("scene", scene),
            ("style", style),
        ]
        await submit(app, interaction, params, given(images))

    @app_commands.command(
        name="video",
        description=described(
            "command.video", inputs=MAX_INPUT_IMAGES, durations=one_of_words(VIDEO_DURATIONS)
        ),
        extras={"posts_in_channel": True},
    )
    @app_commands.describe(
        prompt=described("command.video.prompt"),
        image1=described("command.video.image1"),
        image2=described("command.video.image"),
        image3=described("command.video.image"),
        image4=described("command.video.image"),
        negative_prompt=described("command.video.negative_prompt"),
        mode=described("command.video.mode"),
        duration=described("command.video.duration"),
        aspect_ratio=described("command.video.aspect_ratio"),
    )
    @app_commands.choices(
        mode=MODE_CHOICES, duration=DURATION_CHOICES, aspect_ratio=VIDEO_RATIO_CHOICES
    )
    async def video(
        self,
        interaction: discord.Interaction[discord.Client],
        prompt: Prompt,
        image1: discord.Attachment,
        image2: discord.Attachment | None = None,
        image3: discord.Attachment | None = None,
        image4: discord.Attachment | None = None,
        negative_prompt: Prompt | None = None,
        mode: str | None = None,
        duration: str | None = None,
        aspect_ratio: str | None = None,
    ) -> None:
        await interaction.response.defer(thinking=True)
        app = app_of(interaction)
        params = await video_params(
            app,
            interaction.guild_id,
            prompt=prompt,
            negative_prompt=negative_prompt,
            mode=mode,
            duration=duration,
            aspect_ratio=aspect_ratio,
        )
        images = [("image1", image1), ("image2", image2), ("image3", image3), ("image4", image4)]
        await submit(app, interaction, params, given(images))

    @app_commands.command(name="queue", description=described("command.queue"))
    async def queue(self, interaction: discord.Interaction[discord.Client]) -> None:
        embed = await my_queue_embed(
            app_of(interaction), interaction.guild_id, interaction.user.id, locale_of(interaction)
        )
        await interaction.response.send_message(embed=embed, ephemeral=True)

    @app_commands.command(name="status", description=described("command.status"))
    @app_commands.describe(task=described("command.status.task"))
    async def status(self, interaction: discord.Interaction[discord.Client], task: str) -> None:
        record = await own_task(app_of(interaction), interaction.user.id, task)
        embed = embeds.details_embed(record, locale_of(interaction))
        await interaction.response.send_message(embed=embed, ephemeral=True)

    @app_commands.command(name="help", description=described("command.help"))
    async def help(self, interaction: discord.Interaction[discord.Client]) -> None:
        embed = help_embed(locale_of(interaction))
        await interaction.response.send_message(embed=embed, ephemeral=True)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Generate())
