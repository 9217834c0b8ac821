"""Lists and overviews: a member's tasks and the queue (``/kling queue``, ``/kling-mod queue``),
one line per task, and ``/kling help``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import discord

from bot.discord.context import DiscordApp
from bot.discord.words import duration_words, one_of_words, short
from bot.kling.options import IMAGE_COUNT_MAX, IMAGE_COUNT_MIN, MAX_INPUT_IMAGES, VIDEO_DURATIONS
from bot.tasks.models import ACTIVE_STATES, TaskRecord, TaskState
from bot.text import t

PROMPT_PREVIEW_CHARS = 80


def task_line(
    task: TaskRecord, locale: str | None = None, *, now: float | None = None, position: Any = None
) -> str:
    """One line per task in lists."""
    now = time.time() if now is None else now
    line = t(
        "list.task_line",
        locale,
        task=task.short_ref,
        kind=task.kind.value,
        state=task.state.value,
        elapsed=duration_words(task.elapsed(now), locale),
        user_id=task.user_id,
    )
    if position is not None and task.state == TaskState.QUEUED:
        line = t("list.task_line_position", locale, line=line, position=position.position)
    prompt = task.params.get("prompt")
    if prompt:
        line += f"\n> {short(prompt.replace(chr(10), ' '), PROMPT_PREVIEW_CHARS)}"
    return line


def queue_summary(stats: Mapping[Any, Any], locale: str | None = None) -> str:
    """Per kind: tasks waiting, Kling slots in use of the limit, the oldest wait."""
    lines = []
    for kind, s in stats.items():
        limit = t("list.unlimited", locale) if s.limit is None else str(s.limit)
        line = t(
            "list.queue_line",
            locale,
            kind=str(kind),
            queued=s.queued,
            used=s.slots_used,
            limit=limit,
        )
        if s.queued:
            wait = duration_words(s.oldest_wait, locale)
            line = t("list.queue_line_wait", locale, line=line, wait=wait)
        lines.append(line)
    return "\n".join(lines) or t("list.queue_empty", locale)


def queue_embed(app: DiscordApp, locale: str | None = None) -> discord.Embed:
    """The queue as a whole (``/kling-mod queue``)."""
    return discord.Embed(
        title=t("list.queue_title", locale),
        description=queue_summary(app.tracker.queue_stats(), locale),
        colour=discord.Colour.blurple(),
    )


async def my_queue_embed(
    app: DiscordApp, guild_id: int | None, user_id: int, locale: str | None = None
) -> discord.Embed:
    """A member's running tasks with their places, and the queue (``/kling queue``)."""
    core = app.tracker
    mine = await core.tasks.list_tasks(guild_id=guild_id, user_id=user_id, states=ACTIVE_STATES)
    now = time.time()
    lines = [
        task_line(task, locale, now=now, position=core.queue_position(task.id)) for task in mine
    ]
    embed = discord.Embed(title=t("list.queue_title", locale), colour=discord.Colour.blurple())
    embed.add_field(
        name=t("list.your_tasks", locale),
        value=short("\n".join(lines), 1024) or t("list.no_tasks_running", locale),
        inline=False,
    )
    embed.add_field(
        name=t("list.queue", locale),
        value=queue_summary(core.queue_stats(), locale),
        inline=False,
    )
    return embed


def help_embed(locale: str | None = None) -> discord.Embed:
    embed = discord.Embed(title=t("help.title", locale), colour=discord.Colour.blurple())
    embed.description = t("help.description", locale)
    fields = [
        (
            "/kling image",
            t(
                "help.image",
                locale,
                inputs=MAX_INPUT_IMAGES,
                min=IMAGE_COUNT_MIN,
                max=IMAGE_COUNT_MAX,
            ),
        ),
        (
            "/kling video",
            t(
                "help.video",
                locale,
                inputs=MAX_INPUT_IMAGES,
                durations=one_of_words(VIDEO_DURATIONS, locale),
            ),
        ),
        ("/kling queue · /kling status", t("help.queue_and_status", locale)),
        (t("help.buttons_name", locale), t("help.buttons", locale)),
        (t("help.images_name", locale), t("help.images", locale)),
    ]
    for name, value in fields:
        embed.add_field(name=name, value=value, inline=False)
    return embed
