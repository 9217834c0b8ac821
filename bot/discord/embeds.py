"""Embeds the bot shows: live status, results, failures, details, lists and help.

Pure functions of task records, so they are easy to test and the cogs stay thin.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from typing import Any

import discord

from bot.discord.checks import request_default
from bot.kling.models import TaskKind
from bot.tasks.models import TaskRecord, TaskState
from bot.text import t

SIMULATED_NOTE = "Simulated — no Kling credits used"
LINK_NOTE = "Kling deletes this file after 30 days"

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
_STATE_WORDS = {
    TaskState.QUEUED: "Waiting for a Kling slot",
    TaskState.SUBMITTED: "Submitted to Kling",
    TaskState.PROCESSING: "Kling is generating",
    TaskState.SUCCEED: "Finished — posting the result",
    TaskState.FAILED: "Failed",
    TaskState.DELIVERED: "Finished — the result is posted in the channel",
    TaskState.UNDELIVERABLE: "Finished — the result could not be posted here",
    TaskState.CANCELLED: "Cancelled",
}


def footer_ref(task_id: int) -> str:
    """The task reference put in every result footer; delivery searches for it after a crash."""
    return f"Task #{task_id}"


def state_words(state: TaskState) -> str:
    return _STATE_WORDS.get(state, str(state))


def kind_word(task: TaskRecord) -> str:
    return "Image" if task.kind == TaskKind.IMAGE else "Video"


def short(text: str | None, limit: int) -> str:
    if not text:
        return ""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def duration_words(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def model_of(task: TaskRecord) -> str:
    """The model the task's request used: stored with its parameters, else (tasks stored
    before the model was) the request's default for its kind."""
    return str(task.params.get("model_name") or request_default(task.kind, "model_name"))


def params_line(task: TaskRecord) -> str:
    """The generation parameters in one line: what a member would want to reproduce."""
    p = task.params
    if task.kind == TaskKind.IMAGE:
        parts = [
            f"model {model_of(task)}",
            t("count.image", count=p.get("n", 1)),
            f"aspect {p.get('aspect_ratio', '16:9')}",
        ]
    else:
        parts = [
            f"mode {p.get('mode', 'std')}",
            f"{p.get('duration', '5')} s",
            f"aspect {p.get('aspect_ratio', '16:9')}",
        ]
    parts.append("inputs " + ", ".join(task.input_labels) if task.input_labels else "no inputs")
    return " · ".join(parts)


def _timestamp(ts: float | None, style: str = "R") -> str:
    if ts is None:
        return "—"
    return discord.utils.format_dt(dt.datetime.fromtimestamp(ts, tz=dt.UTC), style)  # type: ignore[arg-type]


def _base(task: TaskRecord, title: str, colour: discord.Colour) -> discord.Embed:
    embed = discord.Embed(title=title, colour=colour)
    prompt = task.params.get("prompt")
    embed.description = short(prompt, 1000) if prompt else "*(no prompt)*"
    negative = task.params.get("negative_prompt")
    if negative:
        embed.add_field(name="Negative prompt", value=short(negative, 1000), inline=False)
    embed.add_field(name="Parameters", value=params_line(task), inline=False)
    footer = footer_ref(task.id)
    if task.simulated:
        footer += " · " + SIMULATED_NOTE
    embed.set_footer(text=footer)
    return embed


def status_embed(
    task: TaskRecord,
    *,
    position: Any = None,
    changes: Sequence[str] = (),
    now: float | None = None,
) -> discord.Embed:
    """The live status message edited while the interaction token is valid."""
    title = f"{kind_word(task)} task {task.short_ref} — {state_words(task.state)}"
    if task.simulated:
        title += " (simulated)"
    embed = _base(task, title, _COLOURS.get(task.state, discord.Colour.default()))
    state = state_words(task.state)
    if task.state == TaskState.QUEUED and position is not None:
        state += f" — position {position.position} in the queue"
        wait = getattr(position, "estimated_wait", None)
        if wait:
            state += f", about {duration_words(wait)}"
    embed.add_field(name="State", value=state, inline=False)
    if task.finished_at is None:
        # A Discord timestamp counts up in the client: no edits needed to keep it current.
        embed.add_field(name="Started", value=_timestamp(task.created_at), inline=True)
    else:
        embed.add_field(name="Time taken", value=duration_words(task.duration()), inline=True)
    if task.failure_reason:
        embed.add_field(name="Why", value=short(task.failure_reason, 1000), inline=False)
    if changes:
        embed.add_field(
            name="Input adjustments", value=short("\n".join(changes), 1000), inline=False
        )
    return embed


def result_embed(task: TaskRecord, *, links: Sequence[str] = ()) -> discord.Embed:
    """The channel post of a finished task."""
    title = f"{kind_word(task)} ready — {task.short_ref}"
    if task.simulated:
        title = f"{title} ({SIMULATED_NOTE})"
    embed = _base(task, short(title, 256), discord.Colour.green())
    embed.add_field(name="Model", value=model_of(task), inline=True)
    embed.add_field(name="Time taken", value=duration_words(task.duration()), inline=True)
    embed.add_field(
        name="Credits", value="none (simulated)" if task.simulated else (task.credits or "—")
    )
    if links:
        lines = [f"[file {i + 1}]({url})" for i, url in enumerate(links)]
        fields = link_fields(lines, note=f"Too large to upload here. {LINK_NOTE}.")
        for number, value in enumerate(fields):
            embed.add_field(name="Links" if number == 0 else "\u200b", value=value, inline=False)
    return embed


def link_fields(links: Sequence[str], *, note: str, limit: int = 1024) -> list[str]:
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


def failure_embed(task: TaskRecord) -> discord.Embed:
    title = f"{kind_word(task)} task {task.short_ref} failed"
    if task.simulated:
        title = f"{title} ({SIMULATED_NOTE})"
    embed = _base(task, short(title, 256), discord.Colour.red())
    embed.add_field(
        name="Why",
        value=short(task.failure_reason or "Kling did not say why.", 1000),
        inline=False,
    )
    embed.add_field(name="Credits", value="none (simulated)" if task.simulated else "—")
    return embed


def details_embed(task: TaskRecord) -> discord.Embed:
    """Everything known about a task (Details button, /kling status, /kling-mod status)."""
    embed = discord.Embed(
        title=f"{kind_word(task)} task {task.short_ref} — {task.state}",
        colour=_COLOURS.get(task.state, discord.Colour.default()),
    )
    params = "\n".join(f"`{k}`: {short(str(v), 300)}" for k, v in task.params.items() if v)
    embed.add_field(name="Parameters", value=short(params or "—", 1024), inline=False)
    embed.add_field(name="Inputs", value=", ".join(task.input_labels) or "—", inline=False)
    ids = (
        f"local `{task.short_ref}`\nKling `{task.kling_task_id or '—'}`\n"
        f"external `{task.external_task_id}`"
    )
    embed.add_field(name="Ids", value=ids, inline=False)
    times = (
        f"created {_timestamp(task.created_at, 'T')}\n"
        f"submitted {_timestamp(task.submitted_at, 'T')}\n"
        f"processing {_timestamp(task.processing_at, 'T')}\n"
        f"finished {_timestamp(task.finished_at, 'T')}\n"
        f"delivered {_timestamp(task.delivered_at, 'T')}"
    )
    embed.add_field(name="Timings", value=times, inline=True)
    embed.add_field(
        name="Run",
        value=(
            f"time taken {duration_words(task.duration())}\n"
            f"credits {'none (simulated)' if task.simulated else task.credits or '—'}\n"
            f"provider {task.provider}\n"
            f"Kling status {task.kling_status or '—'}\n"
            f"member <@{task.user_id}>"
        ),
        inline=True,
    )
    if task.failure_reason:
        embed.add_field(name="Failure", value=short(task.failure_reason, 1000), inline=False)
    if task.delivery_error:
        embed.add_field(name="Delivery", value=short(task.delivery_error, 1000), inline=False)
    if task.cancel_requested and task.is_active:
        embed.add_field(name="Cancel", value="requested: the result will not be posted")
    footer = footer_ref(task.id)
    if task.simulated:
        footer += " · " + SIMULATED_NOTE
    embed.set_footer(text=footer)
    return embed


def task_line(task: TaskRecord, *, now: float | None = None, position: Any = None) -> str:
    """One line per task in lists."""
    now = time.time() if now is None else now
    line = (
        f"**{task.short_ref}** {task.kind} · {task.state}"
        f" · {duration_words(task.elapsed(now))} · <@{task.user_id}>"
    )
    if position is not None and task.state == TaskState.QUEUED:
        line += f" · position {position.position}"
    prompt = task.params.get("prompt")
    if prompt:
        line += f"\n> {short(prompt.replace(chr(10), ' '), 80)}"
    return line


def help_embed() -> discord.Embed:
    embed = discord.Embed(title="Kling AI bot", colour=discord.Colour.blurple())
    embed.description = (
        "Generate images and videos from your own pictures with Kling AI. "
        "Results are posted in this channel and mention you."
    )
    embed.add_field(
        name="/kling image",
        value="1–4 subject images, optional scene and style images and prompt → 1–9 images.",
        inline=False,
    )
    embed.add_field(
        name="/kling video",
        value="1–4 images and a prompt → a 5 or 10 second video.",
        inline=False,
    )
    embed.add_field(
        name="/kling queue · /kling status",
        value="Your tasks, their place in the queue, and everything about one task.",
        inline=False,
    )
    embed.add_field(
        name="Buttons on results",
        value="**Again** runs the same request, **Animate** turns images into a video, "
        "**Details** shows every parameter.",
        inline=False,
    )
    embed.add_field(
        name="Images",
        value="JPEG, PNG or WebP, up to 25 MB; they are converted and resized for Kling when "
        "needed (at least 300 px a side, aspect ratio between 1:2.5 and 2.5:1).",
        inline=False,
    )
    return embed
