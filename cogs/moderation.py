"""Moderators' commands: /kling-mod status|tasks|queue|usage|cancel|config.

``default_permissions`` only hides the group from members by default (server admins can change
it, and Discord ignores it on subcommands), so every command also checks at run time: Manage
Messages in the channel, or the moderator role from the guild config.
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
from bot.discord.checks import (
    GenerationDefaults,
    GuildConfig,
    Refused,
    guild_config,
    require_moderator,
)
from bot.tasks.models import TaskRecord, TaskState
from cogs.generate import (
    DURATION_CHOICES,
    IMAGE_RATIO_CHOICES,
    MODE_CHOICES,
    MODEL_CHOICES,
    VIDEO_RATIO_CHOICES,
    queue_summary,
)

log = logging.getLogger(__name__)

PAGE_SIZE = 10
STATE_CHOICES = [Choice(name=s.value, value=s.value) for s in TaskState]
# How each guild default is named in the config summary and its change list.
DEFAULT_LABELS = {
    "image_model": "image model",
    "image_aspect_ratio": "image aspect ratio",
    "image_count": "images per task",
    "video_mode": "video mode",
    "video_duration": "video duration (s)",
    "video_aspect_ratio": "video aspect ratio",
}


async def tasks_page(
    bot: KlingBot,
    guild_id: int | None,
    member_id: int | None,
    state: str | None,
    page: int,
) -> tuple[discord.Embed, bool]:
    """One page of tasks, newest first; returns the embed and whether a next page exists."""
    store = bot.tracker.store
    states = [TaskState(state)] if state else None
    rows = await store.list_tasks(
        guild_id=guild_id,
        user_id=member_id,
        states=states,
        limit=PAGE_SIZE + 1,
        offset=page * PAGE_SIZE,
    )
    has_next = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    now = time.time()
    title = "Tasks"
    if member_id:
        title += " of a member"
    if state:
        title += f" ({state})"
    embed = discord.Embed(title=title, colour=discord.Colour.blurple())
    body = "\n".join(embeds.task_line(t, now=now) for t in rows)
    embed.description = embeds.short(body, 4000) or "No tasks."
    embed.set_footer(text=f"Page {page + 1}")
    return embed, has_next


class TasksPager(discord.ui.View):
    """Prev/Next for /kling-mod tasks (ephemeral, so it lives only as long as the message)."""

    def __init__(
        self,
        bot: KlingBot,
        owner_id: int,
        guild_id: int | None,
        member_id: int | None,
        state: str | None,
        page: int,
        has_next: bool,
    ) -> None:
        super().__init__(timeout=600)
        self.bot, self.owner_id = bot, owner_id
        self.guild_id, self.member_id, self.state = guild_id, member_id, state
        self.page = page
        self._sync(has_next)

    def _sync(self, has_next: bool) -> None:
        self.prev.disabled = self.page == 0
        self.next.disabled = not has_next

    async def interaction_check(self, interaction: discord.Interaction[Any]) -> bool:
        return interaction.user.id == self.owner_id

    async def _show(self, interaction: discord.Interaction[Any], page: int) -> None:
        self.page = max(0, page)
        embed, has_next = await tasks_page(
            self.bot, self.guild_id, self.member_id, self.state, self.page
        )
        self._sync(has_next)
        await interaction.response.edit_message(embed=embed, view=self)

    @discord.ui.button(label="Prev", style=discord.ButtonStyle.secondary)
    async def prev(self, interaction: discord.Interaction[Any], _: discord.ui.Button[Any]) -> None:
        await self._show(interaction, self.page - 1)

    @discord.ui.button(label="Next", style=discord.ButtonStyle.secondary)
    async def next(self, interaction: discord.Interaction[Any], _: discord.ui.Button[Any]) -> None:
        await self._show(interaction, self.page + 1)


@app_commands.guild_only()
@app_commands.default_permissions(manage_messages=True)
class Moderation(commands.GroupCog, group_name="kling-mod", group_description="Kling moderation"):
    def __init__(self, bot: KlingBot) -> None:
        self.bot = bot
        super().__init__()

    async def interaction_check(self, interaction: discord.Interaction[KlingBot]) -> bool:  # type: ignore[override]
        return await require_moderator(interaction)

    async def _guild_task(self, interaction: discord.Interaction[KlingBot], ref: str) -> TaskRecord:
        record = await self.bot.tracker.store.find(ref.strip())
        if record is None or record.guild_id != interaction.guild_id:
            raise Refused(f"No task {ref} in this server (local id, Kling id or external id).")
        return record

    @app_commands.command(name="status")
    @app_commands.describe(task="Local id (12 or #12), Kling task id or external task id")
    async def status(self, interaction: discord.Interaction[KlingBot], task: str) -> None:
        """Everything about any task in this server."""
        record = await self._guild_task(interaction, task)
        await interaction.response.send_message(embed=embeds.details_embed(record), ephemeral=True)

    @app_commands.command(name="tasks")
    @app_commands.describe(
        member="Only this member's tasks", state="Only tasks in this state", page="Page number"
    )
    @app_commands.choices(state=STATE_CHOICES)
    async def tasks(
        self,
        interaction: discord.Interaction[KlingBot],
        member: discord.User | None = None,
        state: str | None = None,
        page: app_commands.Range[int, 1, 1000] = 1,
    ) -> None:
        """This server's tasks, newest first."""
        member_id = member.id if member else None
        embed, has_next = await tasks_page(
            self.bot, interaction.guild_id, member_id, state, page - 1
        )
        view = TasksPager(
            self.bot,
            interaction.user.id,
            interaction.guild_id,
            member_id,
            state,
            page - 1,
            has_next,
        )
        await interaction.response.send_message(embed=embed, view=view, ephemeral=True)

    @app_commands.command(name="queue")
    async def queue(self, interaction: discord.Interaction[KlingBot]) -> None:
        """Kling slots in use, tasks waiting and the oldest wait, per kind."""
        tracker = self.bot.tracker
        embed = discord.Embed(
            title="Kling queue",
            description=queue_summary(tracker.queue_stats()),
            colour=discord.Colour.blurple(),
        )
        await interaction.response.send_message(embed=embed, ephemeral=True)

    @app_commands.command(name="usage")
    @app_commands.describe(member="Only this member", days="How many days back (default 30)")
    async def usage(
        self,
        interaction: discord.Interaction[KlingBot],
        member: discord.User | None = None,
        days: app_commands.Range[int, 1, 365] = 30,
    ) -> None:
        """Tasks and credits per member and for the whole server."""
        since = time.time() - days * 86400
        rows = await self.bot.tracker.store.usage(
            guild_id=interaction.guild_id, since=since, user_id=member.id if member else None
        )
        rows = sorted(rows, key=lambda r: (r.credits, r.tasks), reverse=True)
        embed = discord.Embed(title=f"Usage, last {days} days", colour=discord.Colour.blurple())
        lines = [
            f"<@{r.user_id}>: {r.tasks} tasks ({r.succeeded} ok, {r.failed} failed), "
            f"{r.credits:g} credits"
            for r in rows[:25]
        ]
        embed.description = embeds.short("\n".join(lines), 4000) or "No tasks in this period."
        if member is None:
            embed.add_field(
                name="Server total",
                value=f"{sum(r.tasks for r in rows)} tasks, "
                f"{sum(r.credits for r in rows):g} credits",
            )
        await interaction.response.send_message(embed=embed, ephemeral=True)

    @app_commands.command(name="cancel")
    @app_commands.describe(task="Local id (12 or #12), Kling task id or external task id")
    async def cancel(self, interaction: discord.Interaction[KlingBot], task: str) -> None:
        """Cancel a task: a queued one leaves the queue, a running one is not posted."""
        record = await self._guild_task(interaction, task)
        if not record.is_active:
            raise Refused(f"Task {record.short_ref} is already {record.state}.")
        updated = await self.bot.tracker.cancel(record.id)
        if updated is not None and updated.state == TaskState.CANCELLED:
            text = f"Task {record.short_ref} was cancelled before it reached Kling."
        else:
            text = (
                f"Task {record.short_ref} is already running at Kling: it cannot be stopped "
                "there, but its result will not be posted."
            )
        log.info("moderator %s cancelled task %s", interaction.user.id, record.id)
        await interaction.response.send_message(text, ephemeral=True)

    @app_commands.command(name="config")
    @app_commands.describe(
        allow_channel="Allow generation in this channel (none allowed = every channel)",
        disallow_channel="Remove this channel from the allowed ones",
        max_active="Tasks a member may have running at once (0 = no limit)",
        daily_limit="Tasks a member may start per 24 hours (0 = no limit)",
        block_word="Refuse prompts containing this word",
        unblock_word="Stop refusing this word",
        moderator_role="Members with this role may use /kling-mod",
        clear_moderator_role="Remove the moderator role setting",
        image_model="Default image model when a member does not choose one",
        image_aspect_ratio="Default shape of images",
        image_count="Default number of images per task (1-9)",
        video_mode="Default video mode",
        video_duration="Default video length",
        video_aspect_ratio="Default shape of videos",
        clear_defaults="Forget this server's defaults (back to the bot's own)",
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
        interaction: discord.Interaction[KlingBot],
        allow_channel: discord.abc.GuildChannel | None = None,
        disallow_channel: discord.abc.GuildChannel | None = None,
        max_active: app_commands.Range[int, 0, 100] | None = None,
        daily_limit: app_commands.Range[int, 0, 10000] | None = None,
        block_word: app_commands.Range[str, 1, 100] | None = None,
        unblock_word: app_commands.Range[str, 1, 100] | None = None,
        moderator_role: discord.Role | None = None,
        clear_moderator_role: bool = False,
        image_model: str | None = None,
        image_aspect_ratio: str | None = None,
        image_count: app_commands.Range[int, 1, 9] | None = None,
        video_mode: str | None = None,
        video_duration: str | None = None,
        video_aspect_ratio: str | None = None,
        clear_defaults: bool = False,
    ) -> None:
        """Show this server's Kling settings, or change them."""
        guild_id = interaction.guild_id
        assert guild_id is not None  # guild_only
        store = self.bot.tracker.store
        config = await guild_config(self.bot, guild_id)
        changed = apply_config_changes(
            config,
            allow_channel=allow_channel.id if allow_channel else None,
            disallow_channel=disallow_channel.id if disallow_channel else None,
            max_active=max_active,
            daily_limit=daily_limit,
            block_word=block_word,
            unblock_word=unblock_word,
            moderator_role=moderator_role.id if moderator_role else None,
            clear_moderator_role=clear_moderator_role,
        )
        changed += apply_default_changes(
            config.defaults,
            clear=clear_defaults,
            image_model=image_model,
            image_aspect_ratio=image_aspect_ratio,
            image_count=image_count,
            video_mode=video_mode,
            video_duration=video_duration,
            video_aspect_ratio=video_aspect_ratio,
        )
        if changed:
            await store.set_guild_config(guild_id, config.to_dict())
            log.info("moderator %s changed guild %s config", interaction.user.id, guild_id)
        embed = config_embed(config, changed, server_model=self.bot.settings.kling_image_model)
        await interaction.response.send_message(embed=embed, ephemeral=True)


def apply_config_changes(
    config: GuildConfig,
    *,
    allow_channel: int | None,
    disallow_channel: int | None,
    max_active: int | None,
    daily_limit: int | None,
    block_word: str | None,
    unblock_word: str | None,
    moderator_role: int | None,
    clear_moderator_role: bool,
) -> list[str]:
    changed: list[str] = []
    if allow_channel is not None and allow_channel not in config.allowed_channels:
        config.allowed_channels.append(allow_channel)
        changed.append(f"allowed <#{allow_channel}>")
    if disallow_channel is not None and disallow_channel in config.allowed_channels:
        config.allowed_channels.remove(disallow_channel)
        changed.append(f"no longer allowed <#{disallow_channel}>")
    if max_active is not None:
        config.max_active = max_active
        changed.append(f"running tasks per member: {max_active or 'no limit'}")
    if daily_limit is not None:
        config.daily_limit = daily_limit
        changed.append(f"tasks per member per 24 h: {daily_limit or 'no limit'}")
    if block_word:
        word = block_word.strip().lower()
        if word and word not in config.blocked_words:
            config.blocked_words.append(word)
            changed.append("blocked a word")
    if unblock_word:
        word = unblock_word.strip().lower()
        if word in config.blocked_words:
            config.blocked_words.remove(word)
            changed.append("unblocked a word")
    if moderator_role is not None:
        config.moderator_role_id = moderator_role
        changed.append(f"moderator role <@&{moderator_role}>")
    if clear_moderator_role and config.moderator_role_id is not None:
        config.moderator_role_id = None
        changed.append("moderator role removed")
    return changed


def apply_default_changes(
    defaults: GenerationDefaults, *, clear: bool = False, **values: Any
) -> list[str]:
    """Set the given defaults (None: leave as is); ``clear`` forgets all of them first."""
    changed: list[str] = []
    if clear:
        for name in DEFAULT_LABELS:
            setattr(defaults, name, None)
        changed.append("defaults cleared")
    for name, value in values.items():
        if value is not None:
            setattr(defaults, name, value)
            changed.append(f"default {DEFAULT_LABELS[name]}: {value}")
    return changed


def defaults_summary(defaults: GenerationDefaults, server_model: str | None) -> str:
    """What a member gets when leaving each option out, marking what this server did not set."""
    image = defaults.image_options(
        count=None, aspect_ratio=None, model=None, server_model=server_model
    )
    video = defaults.video_options(mode=None, duration=None, aspect_ratio=None)
    effective = {
        "image_model": image["model_name"],
        "image_aspect_ratio": image["aspect_ratio"],
        "image_count": image["n"],
        "video_mode": video["mode"],
        "video_duration": video["duration"],
        "video_aspect_ratio": video["aspect_ratio"],
    }
    lines = []
    for name, label in DEFAULT_LABELS.items():
        own = getattr(defaults, name) is not None
        lines.append(f"{label}: **{effective[name]}**" + ("" if own else " (bot default)"))
    return "\n".join(lines)


def config_embed(
    config: GuildConfig, changed: list[str], *, server_model: str | None = None
) -> discord.Embed:
    embed = discord.Embed(title="Kling settings for this server", colour=discord.Colour.blurple())
    channels = ", ".join(f"<#{c}>" for c in config.allowed_channels) or "every channel"
    embed.add_field(name="Allowed channels", value=embeds.short(channels, 1024), inline=False)
    embed.add_field(name="Running tasks per member", value=str(config.max_active or "no limit"))
    embed.add_field(name="Tasks per member per 24 h", value=str(config.daily_limit or "no limit"))
    # Spoilered: the list is offensive by nature and this message may be screenshotted.
    words = ", ".join(f"||{w}||" for w in config.blocked_words) or "none"
    embed.add_field(name="Blocked words", value=embeds.short(words, 1024), inline=False)
    role = (
        f"<@&{config.moderator_role_id}>"
        if config.moderator_role_id
        else "none (Manage Messages only)"
    )
    embed.add_field(name="Moderator role", value=role, inline=False)
    embed.add_field(
        name="Defaults", value=defaults_summary(config.defaults, server_model), inline=False
    )
    if changed:
        embed.add_field(name="Changed", value=embeds.short("\n".join(changed), 1024), inline=False)
    return embed


async def setup(bot: KlingBot) -> None:
    await bot.add_cog(Moderation(bot))
