"""What moderators (and members, for their own tasks) do with tasks and the server's settings:
find a task, cancel it, page through the server's tasks, read usage, change the guild config.

The commands in ``cogs`` call these; the words and embeds are in ``moderation_views``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bot.discord.checks import Refused
from bot.discord.context import DiscordApp
from bot.discord.guild_config import (
    GenerationDefaults,
    GuildConfig,
    load_guild_config,
    save_guild_config,
)
from bot.tasks.models import TaskRecord, TaskState, UsageRow
from bot.text import t

PAGE_SIZE = 10
DAY = 86400.0
# The guild defaults, in the order the config summary shows them.
DEFAULT_NAMES = (
    "image_model",
    "image_aspect_ratio",
    "image_count",
    "video_mode",
    "video_duration",
    "video_aspect_ratio",
)


async def guild_task(app: DiscordApp, guild_id: int | None, ref: str) -> TaskRecord:
    """Any task of this server, by local id, Kling id or external id."""
    record = await app.tracker.tasks.find(ref.strip())
    if record is None or record.guild_id != guild_id:
        raise Refused("refused.no_guild_task", ref=ref)
    return record


async def own_task(app: DiscordApp, user_id: int, ref: str) -> TaskRecord:
    """One of the member's own tasks; others' tasks stay private."""
    record = await app.tracker.tasks.find(ref.strip())
    if record is None or record.user_id != user_id:
        # Same answer for "not found" and "not yours".
        raise Refused("refused.no_own_task", ref=ref)
    return record


async def cancel_task(app: DiscordApp, record: TaskRecord) -> str:
    """Cancel a task; the catalogue key of what became of it."""
    if not record.is_active:
        raise Refused("refused.already_ended", task=record.short_ref, state=record.state.value)
    updated = await app.tracker.cancel(record.id)
    if updated is not None and updated.state == TaskState.CANCELLED:
        return "moderation.cancelled_before_kling"
    return "moderation.cancelled_running"


@dataclass(frozen=True, slots=True)
class TasksQuery:
    """Which of the server's tasks a page lists (``/kling-mod tasks``), newest first."""

    guild_id: int | None
    member_id: int | None = None
    state: str | None = None


async def tasks_page(
    app: DiscordApp, query: TasksQuery, page: int
) -> tuple[list[TaskRecord], bool]:
    """One page of tasks (0-based) and whether a next page exists."""
    rows = await app.tracker.tasks.list_tasks(
        guild_id=query.guild_id,
        user_id=query.member_id,
        states=[TaskState(query.state)] if query.state else None,
        limit=PAGE_SIZE + 1,
        offset=page * PAGE_SIZE,
    )
    return rows[:PAGE_SIZE], len(rows) > PAGE_SIZE


async def usage(
    app: DiscordApp, guild_id: int | None, *, days: int, user_id: int | None, now: float
) -> list[UsageRow]:
    """Tasks and credits per member over the last ``days``, biggest spenders first."""
    rows = await app.tracker.tasks.usage(guild_id=guild_id, since=now - days * DAY, user_id=user_id)
    return sorted(rows, key=lambda r: (r.credits, r.tasks), reverse=True)


async def change_config(
    app: DiscordApp,
    guild_id: int,
    *,
    settings: dict[str, Any],
    defaults: dict[str, Any],
    clear_defaults: bool,
    locale: str | None = None,
) -> tuple[GuildConfig, list[str]]:
    """Apply a moderator's changes to the guild config and store them; the config and what
    changed, in words (nothing changed: nothing stored)."""
    config = await load_guild_config(app, guild_id)
    changed = apply_config_changes(config, locale=locale, **settings)
    changed += apply_default_changes(
        config.defaults, clear=clear_defaults, locale=locale, **defaults
    )
    if changed:
        await save_guild_config(app, guild_id, config)
    return config, changed


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
    locale: str | None = None,
) -> list[str]:
    changed: list[str] = []

    def note(key: str, **params: Any) -> None:
        changed.append(t(key, locale, **params))

    no_limit = t("config.no_limit", locale)
    if allow_channel is not None and allow_channel not in config.allowed_channels:
        config.allowed_channels.append(allow_channel)
        note("config.changed.allowed", channel_id=allow_channel)
    if disallow_channel is not None and disallow_channel in config.allowed_channels:
        config.allowed_channels.remove(disallow_channel)
        note("config.changed.disallowed", channel_id=disallow_channel)
    if max_active is not None:
        config.max_active = max_active
        note("config.changed.max_active", value=max_active or no_limit)
    if daily_limit is not None:
        config.daily_limit = daily_limit
        note("config.changed.daily_limit", value=daily_limit or no_limit)
    if block_word:
        word = block_word.strip().lower()
        if word and word not in config.blocked_words:
            config.blocked_words.append(word)
            note("config.changed.blocked_word")
    if unblock_word:
        word = unblock_word.strip().lower()
        if word in config.blocked_words:
            config.blocked_words.remove(word)
            note("config.changed.unblocked_word")
    if moderator_role is not None:
        config.moderator_role_id = moderator_role
        note("config.changed.moderator_role", role_id=moderator_role)
    if clear_moderator_role and config.moderator_role_id is not None:
        config.moderator_role_id = None
        note("config.changed.moderator_role_removed")
    return changed


def apply_default_changes(
    defaults: GenerationDefaults,
    *,
    clear: bool = False,
    locale: str | None = None,
    **values: Any,
) -> list[str]:
    """Set the given defaults (None: leave as is); ``clear`` forgets all of them first."""
    changed: list[str] = []
    if clear:
        for name in DEFAULT_NAMES:
            setattr(defaults, name, None)
        changed.append(t("config.changed.defaults_cleared", locale))
    for name, value in values.items():
        if value is not None:
            setattr(defaults, name, value)
            label = t(f"config.default.{name}", locale)
            changed.append(t("config.changed.default", locale, label=label, value=value))
    return changed
