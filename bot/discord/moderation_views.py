"""What moderators see: the paged task list with its Prev/Next buttons, usage, and the server's
settings. Embeds are pure functions of what ``bot.discord.moderation`` returns.
"""

from __future__ import annotations

import time
from typing import Any

import discord

from bot.discord.context import DiscordApp, locale_of
from bot.discord.errors import report_error
from bot.discord.guild_config import GenerationDefaults, GuildConfig
from bot.discord.listing import task_line
from bot.discord.moderation import DEFAULT_NAMES, TasksQuery, tasks_page
from bot.discord.words import short
from bot.tasks.models import TaskRecord, UsageRow
from bot.text import t

USAGE_ROWS_SHOWN = 25


def tasks_embed(
    rows: list[TaskRecord], query: TasksQuery, page: int, locale: str | None = None
) -> discord.Embed:
    title = t("moderation.tasks.title", locale)
    if query.member_id:
        title = t("moderation.tasks.of_member", locale, title=title)
    if query.state:
        title = t("moderation.tasks.in_state", locale, title=title, state=query.state)
    embed = discord.Embed(title=title, colour=discord.Colour.blurple())
    now = time.time()
    body = "\n".join(task_line(task, locale, now=now) for task in rows)
    embed.description = short(body, 4000) or t("moderation.tasks.none", locale)
    embed.set_footer(text=t("moderation.tasks.page", locale, page=page + 1))
    return embed


async def tasks_message(
    app: DiscordApp, query: TasksQuery, page: int, locale: str | None = None
) -> tuple[discord.Embed, bool]:
    """One page of tasks as an embed, and whether a next page exists."""
    rows, has_next = await tasks_page(app, query, page)
    return tasks_embed(rows, query, page, locale), has_next


class TasksPager(discord.ui.View):
    """Prev/Next for /kling-mod tasks (ephemeral, so it lives only as long as the message)."""

    def __init__(
        self,
        app: DiscordApp,
        owner_id: int,
        query: TasksQuery,
        page: int,
        has_next: bool,
        locale: str | None = None,
    ) -> None:
        super().__init__(timeout=600)
        self.app, self.owner_id, self.query, self.page = app, owner_id, query, page
        self.prev.label = t("button.prev", locale)
        self.next.label = t("button.next", locale)
        self._sync(has_next)

    def _sync(self, has_next: bool) -> None:
        self.prev.disabled = self.page == 0
        self.next.disabled = not has_next

    async def interaction_check(self, interaction: discord.Interaction[Any]) -> bool:
        return interaction.user.id == self.owner_id

    async def on_error(
        self, interaction: discord.Interaction[Any], error: Exception, item: discord.ui.Item[Any]
    ) -> None:
        await report_error(interaction, error, "task list page")

    async def _show(self, interaction: discord.Interaction[Any], page: int) -> None:
        self.page = max(0, page)
        embed, has_next = await tasks_message(
            self.app, self.query, self.page, locale_of(interaction)
        )
        self._sync(has_next)
        await interaction.response.edit_message(embed=embed, view=self)

    @discord.ui.button(label="Prev", style=discord.ButtonStyle.secondary)
    async def prev(self, interaction: discord.Interaction[Any], _: discord.ui.Button[Any]) -> None:
        await self._show(interaction, self.page - 1)

    @discord.ui.button(label="Next", style=discord.ButtonStyle.secondary)
    async def next(self, interaction: discord.Interaction[Any], _: discord.ui.Button[Any]) -> None:
        await self._show(interaction, self.page + 1)


def usage_embed(
    rows: list[UsageRow], *, days: int, whole_server: bool, locale: str | None = None
) -> discord.Embed:
    title = t("moderation.usage.title", locale, count=days)
    embed = discord.Embed(title=title, colour=discord.Colour.blurple())
    lines = [
        t(
            "moderation.usage.line",
            locale,
            user_id=r.user_id,
            tasks=r.tasks,
            succeeded=r.succeeded,
            failed=r.failed,
            credits=f"{r.credits:g}",
        )
        for r in rows[:USAGE_ROWS_SHOWN]
    ]
    embed.description = short("\n".join(lines), 4000) or t("moderation.usage.none", locale)
    if whole_server:
        total = t(
            "moderation.usage.total",
            locale,
            tasks=sum(r.tasks for r in rows),
            credits=f"{sum(r.credits for r in rows):g}",
        )
        embed.add_field(name=t("moderation.usage.total_name", locale), value=total)
    return embed


def defaults_summary(
    defaults: GenerationDefaults, server_model: str | None, locale: str | None = None
) -> str:
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
    for name in DEFAULT_NAMES:
        own = getattr(defaults, name) is not None
        key = "config.default_line" if own else "config.default_line_bot"
        label = t(f"config.default.{name}", locale)
        lines.append(t(key, locale, label=label, value=effective[name]))
    return "\n".join(lines)


def config_embed(
    config: GuildConfig,
    changed: list[str],
    *,
    server_model: str | None = None,
    locale: str | None = None,
) -> discord.Embed:
    embed = discord.Embed(title=t("config.title", locale), colour=discord.Colour.blurple())

    def field(key: str, value: str, *, inline: bool = True) -> None:
        embed.add_field(name=t(key, locale), value=short(value, 1024), inline=inline)

    no_limit = t("config.no_limit", locale)
    channels = ", ".join(f"<#{c}>" for c in config.allowed_channels)
    field("config.allowed_channels", channels or t("config.every_channel", locale), inline=False)
    field("config.max_active", str(config.max_active or no_limit))
    field("config.daily_limit", str(config.daily_limit or no_limit))
    # Spoilered: the list is offensive by nature and this message may be screenshotted.
    words = ", ".join(f"||{w}||" for w in config.blocked_words)
    field("config.blocked_words", words or t("config.no_blocked_words", locale), inline=False)
    role = config.moderator_role_id
    field(
        "config.moderator_role",
        f"<@&{role}>" if role else t("config.no_moderator_role", locale),
        inline=False,
    )
    field("config.defaults", defaults_summary(config.defaults, server_model, locale), inline=False)
    if changed:
        field("config.changed", "\n".join(changed), inline=False)
    return embed
