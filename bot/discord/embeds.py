"""The embeds of one task: its live status, its result or failure post, and its details.

Pure functions of a task record and the reader's locale, so they are easy to test. Every word
comes from the catalogue (``discord.po``); why a task failed comes from the core's codes
(``bot.tasks.failures``). Only the footer's task reference is fixed: delivery searches the
channel for it after a crash, whatever language the post was made in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import discord

from bot.discord.words import duration_words, short, timestamp
from bot.kling.models import TaskKind
from bot.kling.options import (
    DEFAULT_IMAGE_ASPECT_RATIO,
    DEFAULT_IMAGE_COUNT,
    DEFAULT_IMAGE_MODEL,
    DEFAULT_VIDEO_ASPECT_RATIO,
    DEFAULT_VIDEO_DURATION,
    DEFAULT_VIDEO_MODE,
    DEFAULT_VIDEO_MODEL,
)
from bot.tasks.failures import describe_delivery_error, describe_failure
from bot.tasks.models import TaskRecord, TaskState
from bot.text import t

# Discord's limits on embed parts.
TITLE_CHARS = 256
FIELD_CHARS = 1024

_COLOURS = {
    TaskState.QUEUED: discord.Colour.light_grey(),
    TaskState.SUBMITTED: discord.Colour.blurple(),
    TaskState.PROCESSING: discord.Colour.blurple(),
    TaskState.SUCCEED: discord.Colour.green(),
    TaskState.DELIVERED: discord.Colour.green(),
    TaskState.FAILED: discord.Colour.red(),
    TaskState.UNDELIVERABLE: discord.Colour.orange(),
    TaskState.CANCELLED: discord.Colour.dark_grey(),
}


def footer_ref(task_id: int) -> str:
    """The task reference put in every result footer; delivery searches for it after a crash."""
    return f"Task #{task_id}"


def state_words(state: TaskState, locale: str | None = None) -> str:
    return t(f"state.{state.value}", locale)


def kind_word(task: TaskRecord, locale: str | None = None) -> str:
    return t(f"kind.{task.kind.value}", locale)


def model_of(task: TaskRecord) -> str:
    """The model the task's request used: stored with its parameters, else (tasks stored
    before the model was) Kling's default for its kind."""
    default = DEFAULT_IMAGE_MODEL if task.kind == TaskKind.IMAGE else DEFAULT_VIDEO_MODEL
    return str(task.params.get("model_name") or default)


def params_line(task: TaskRecord, locale: str | None = None) -> str:
    """The generation parameters in one line: what a member would want to reproduce."""
    p = task.params
    if task.kind == TaskKind.IMAGE:
        parts = [
            t("params.model", locale, model=model_of(task)),
            t("count.image", locale, count=p.get("n", DEFAULT_IMAGE_COUNT)),
            t("params.aspect", locale, ratio=p.get("aspect_ratio", DEFAULT_IMAGE_ASPECT_RATIO)),
        ]
    else:
        parts = [
            t("params.mode", locale, mode=p.get("mode", DEFAULT_VIDEO_MODE)),
            t("params.seconds", locale, seconds=p.get("duration", DEFAULT_VIDEO_DURATION)),
            t("params.aspect", locale, ratio=p.get("aspect_ratio", DEFAULT_VIDEO_ASPECT_RATIO)),
        ]
    if task.input_labels:
        parts.append(t("params.inputs", locale, labels=", ".join(task.input_labels)))
    else:
        parts.append(t("params.no_inputs", locale))
    return " · ".join(parts)


def credits_words(task: TaskRecord, locale: str | None = None) -> str:
    if task.simulated:
        return t("embed.credits_simulated", locale)
    return task.credits or t("words.none", locale)


def _footer(task: TaskRecord, locale: str | None) -> str:
    footer = footer_ref(task.id)
    if task.simulated:
        footer += " · " + t("embed.simulated_note", locale)
    return footer


def _simulated(title: str, task: TaskRecord, locale: str | None) -> str:
    if task.simulated:
        title = t(
            "embed.title_simulated", locale, title=title, note=t("embed.simulated_note", locale)
        )
    return short(title, TITLE_CHARS)


def _base(
    task: TaskRecord, title: str, colour: discord.Colour, locale: str | None
) -> discord.Embed:
    embed = discord.Embed(title=title, colour=colour)
    prompt = task.params.get("prompt")
    embed.description = short(prompt, 1000) if prompt else t("embed.no_prompt", locale)
    negative = task.params.get("negative_prompt")
    if negative:
        name = t("embed.negative_prompt", locale)
        embed.add_field(name=name, value=short(negative, 1000), inline=False)
    embed.add_field(
        name=t("embed.parameters", locale), value=params_line(task, locale), inline=False
    )
    embed.set_footer(text=_footer(task, locale))
    return embed


def status_embed(
    task: TaskRecord,
    locale: str | None = None,
    *,
    position: Any = None,
    changes: Sequence[str] = (),
) -> discord.Embed:
    """The live status message edited while the interaction token is valid."""
    state = state_words(task.state, locale)
    title = t(
        "embed.status.title", locale, kind=kind_word(task, locale), task=task.short_ref, state=state
    )
    if task.simulated:
        title = t("embed.status.title_simulated", locale, title=title)
    embed = _base(task, title, _COLOURS.get(task.state, discord.Colour.default()), locale)
    if task.state == TaskState.QUEUED and position is not None:
        state = t("embed.status.queued_at", locale, state=state, position=position.position)
        wait = getattr(position, "estimated_wait", None)
        if wait:
            state = t("embed.status.wait", locale, state=state, wait=duration_words(wait, locale))
    embed.add_field(name=t("embed.state", locale), value=state, inline=False)
    if task.finished_at is None:
        # A Discord timestamp counts up in the client: no edits needed to keep it current.
        embed.add_field(
            name=t("embed.started", locale), value=timestamp(task.created_at), inline=True
        )
    else:
        taken = duration_words(task.duration(), locale)
        embed.add_field(name=t("embed.time_taken", locale), value=taken, inline=True)
    why = describe_failure(task, locale)
    if why:
        embed.add_field(name=t("embed.why", locale), value=short(why, 1000), inline=False)
    if changes:
        name = t("embed.input_adjustments", locale)
        embed.add_field(name=name, value=short("\n".join(changes), 1000), inline=False)
    return embed


def result_embed(
    task: TaskRecord, locale: str | None = None, *, links: Sequence[str] = ()
) -> discord.Embed:
    """The channel post of a finished task."""
    title = t("embed.result.title", locale, kind=kind_word(task, locale), task=task.short_ref)
    embed = _base(task, _simulated(title, task, locale), discord.Colour.green(), locale)
    embed.add_field(name=t("embed.model", locale), value=model_of(task), inline=True)
    taken = duration_words(task.duration(), locale)
    embed.add_field(name=t("embed.time_taken", locale), value=taken, inline=True)
    embed.add_field(name=t("embed.credits", locale), value=credits_words(task, locale))
    if links:
        lines = [
            t("embed.result.link", locale, number=i + 1, url=url) for i, url in enumerate(links)
        ]
        note = t("embed.result.links_note", locale, note=t("embed.link_note", locale))
        for number, value in enumerate(link_fields(lines, note=note)):
            name = t("embed.links", locale) if number == 0 else "\u200b"
            embed.add_field(name=name, value=value, inline=False)
    return embed


def link_fields(links: Sequence[str], *, note: str, limit: int = FIELD_CHARS) -> list[str]:
    """Whole markdown links packed into field values of at most ``limit`` characters.

    A link cut in half is a dead link, so values break between links, never inside one; the
    note goes at the end of the last value (or in a value of its own).
    """
    values: list[str] = []
    current = ""
    for link in [*links, note]:
        joined = f"{current}\n{link}" if current else link
        if len(joined) <= limit:
            current = joined
        else:
            values.append(current)
            current = link[:limit]
    values.append(current)
    return values


def failure_embed(task: TaskRecord, locale: str | None = None) -> discord.Embed:
    title = t("embed.failure.title", locale, kind=kind_word(task, locale), task=task.short_ref)
    embed = _base(task, _simulated(title, task, locale), discord.Colour.red(), locale)
    why = describe_failure(task, locale) or t("embed.failure.no_reason", locale)
    embed.add_field(name=t("embed.why", locale), value=short(why, 1000), inline=False)
    credits = t("embed.credits_simulated", locale) if task.simulated else t("words.none", locale)
    embed.add_field(name=t("embed.credits", locale), value=credits)
    return embed


def details_embed(task: TaskRecord, locale: str | None = None) -> discord.Embed:
    """Everything known about a task (Details button, /kling status, /kling-mod status)."""
    title = t(
        "embed.details.title",
        locale,
        kind=kind_word(task, locale),
        task=task.short_ref,
        state=task.state.value,
    )
    embed = discord.Embed(title=title, colour=_COLOURS.get(task.state, discord.Colour.default()))
    none = t("words.none", locale)
    params = "\n".join(f"`{k}`: {short(str(v), 300)}" for k, v in task.params.items() if v)
    embed.add_field(
        name=t("embed.parameters", locale), value=short(params or none, FIELD_CHARS), inline=False
    )
    inputs = ", ".join(task.input_labels) or none
    embed.add_field(name=t("embed.details.inputs", locale), value=inputs, inline=False)
    ids = t(
        "embed.details.ids",
        locale,
        local=task.short_ref,
        kling=task.kling_task_id or none,
        external=task.external_task_id,
    )
    embed.add_field(name=t("embed.details.ids_name", locale), value=ids, inline=False)
    times = t(
        "embed.details.timings",
        locale,
        created=timestamp(task.created_at, "T", locale),
        submitted=timestamp(task.submitted_at, "T", locale),
        processing=timestamp(task.processing_at, "T", locale),
        finished=timestamp(task.finished_at, "T", locale),
        delivered=timestamp(task.delivered_at, "T", locale),
    )
    embed.add_field(name=t("embed.details.timings_name", locale), value=times, inline=True)
    run = t(
        "embed.details.run",
        locale,
        taken=duration_words(task.duration(), locale),
        credits=credits_words(task, locale),
        provider=task.provider,
        kling_status=task.kling_status or none,
        user_id=task.user_id,
    )
    embed.add_field(name=t("embed.details.run_name", locale), value=run, inline=True)
    failure = describe_failure(task, locale)
    if failure:
        embed.add_field(
            name=t("embed.details.failure", locale), value=short(failure, 1000), inline=False
        )
    delivery = describe_delivery_error(task, locale)
    if delivery:
        embed.add_field(
            name=t("embed.details.delivery", locale), value=short(delivery, 1000), inline=False
        )
    if task.cancel_requested and task.is_active:
        embed.add_field(
            name=t("embed.details.cancel", locale),
            value=t("embed.details.cancel_requested", locale),
        )
    embed.set_footer(text=_footer(task, locale))
    return embed
