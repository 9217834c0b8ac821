"""Starting a task from Discord: the one use-case behind the slash commands, Again and Animate.

Cheapest first, so a request that is refused costs no download and no decoding: the channel,
blocked words and member limits (``checks.check_request``); then what Discord reports about
each attachment; then the download; then the images are decoded and prepared; then the core
stores the task. One member's requests go through this one at a time (a lock per member), so
two sent together cannot both pass a limit only one of them fits in. Every refusal raises
``Refused`` before anything reached Kling; the error reporter words it for the member.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import discord
from pydantic import ValidationError

from bot.discord import checks
from bot.discord.checks import Refused, RefusedFailure
from bot.discord.context import DiscordApp, MemberLocks
from bot.discord.guild_config import load_guild_config
from bot.discord.replies import mark_status_shown
from bot.kling.errors import KlingInvalidRequest
from bot.kling.images import ImageRejected, PreparedImage, prepare_images
from bot.kling.models import TaskKind
from bot.kling.params import TaskParams, params_for
from bot.tasks.failures import Failure
from bot.tasks.intake import InputsNotStored
from bot.tasks.models import Origin, TaskRecord

log = logging.getLogger(__name__)

# An input image: a member's attachment (read only once the request passed the checks) or
# bytes the bot already holds (a result being animated).
ImageSource = bytes | discord.Attachment
# Stores the task once the checks passed: the new record and the adjustments made to its inputs.
Store = Callable[[], Awaitable[tuple[TaskRecord, tuple[str, ...]]]]


def build_params(kind: TaskKind, **values: Any) -> TaskParams:
    """The member's choices, typed; a value the request models refuse is a refusal."""
    try:
        return params_for(
            kind, {name: value for name, value in values.items() if value is not None}
        )
    except ValidationError as exc:
        raise _would_refuse(exc) from None


async def image_params(
    app: DiscordApp,
    guild_id: int | None,
    *,
    prompt: str | None,
    negative_prompt: str | None,
    count: int | None,
    aspect_ratio: str | None,
    model: str | None,
) -> TaskParams:
    """An image request: the member's options, else the server's defaults (resolved and
    stored, so Again repeats them)."""
    defaults = (await load_guild_config(app, guild_id)).defaults
    options = defaults.image_options(
        count=count,
        aspect_ratio=aspect_ratio,
        model=model,
        server_model=app.settings.kling_image_model,
    )
    return build_params(TaskKind.IMAGE, prompt=prompt, negative_prompt=negative_prompt, **options)


async def video_params(
    app: DiscordApp,
    guild_id: int | None,
    *,
    prompt: str,
    negative_prompt: str | None,
    mode: str | None,
    duration: str | None,
    aspect_ratio: str | None,
) -> TaskParams:
    """A video request, resolved like ``image_params``."""
    defaults = (await load_guild_config(app, guild_id)).defaults
    options = defaults.video_options(mode=mode, duration=duration, aspect_ratio=aspect_ratio)
    return build_params(TaskKind.VIDEO, prompt=prompt, negative_prompt=negative_prompt, **options)


def origin_of(interaction: discord.Interaction[Any]) -> Origin:
    return Origin(
        channel_id=interaction.channel_id or 0,
        user_id=interaction.user.id,
        guild_id=interaction.guild_id,
    )


def member_lock(locks: MemberLocks, guild_id: int | None, user_id: int) -> asyncio.Lock:
    """Held while one of the member's requests is checked against the limits, has its images
    read and prepared, and is stored."""
    lock = locks.get((guild_id, user_id))
    if lock is None:
        lock = locks[(guild_id, user_id)] = asyncio.Lock()
    return lock


async def submit(
    app: DiscordApp,
    interaction: discord.Interaction[Any],
    params: TaskParams,
    items: Sequence[tuple[str, ImageSource]],
) -> TaskRecord:
    """A new task from the member's choices and images (a slash command, Animate).

    The interaction must already be deferred; its reply follows the task.
    """

    async def store() -> tuple[TaskRecord, tuple[str, ...]]:
        prepared = await _prepared_images(app, items)
        task = await _submit_to_core(app, params, prepared, origin_of(interaction))
        return task, tuple(f"{p.label}: {change}" for p in prepared for change in p.changes)

    return await _checked(app, interaction, params.prompt, params.negative_prompt, store)


async def submit_again(
    app: DiscordApp, interaction: discord.Interaction[Any], task: TaskRecord
) -> TaskRecord:
    """Again: a new task with ``task``'s parameters and stored images, under today's rules."""

    async def store() -> tuple[TaskRecord, tuple[str, ...]]:
        try:
            return await app.tracker.resubmit(task.id, origin_of(interaction)), ()
        except InputsNotStored as exc:
            raise RefusedFailure(exc.failure) from None
        except (LookupError, FileNotFoundError, KlingInvalidRequest) as exc:
            raise Refused("refused.cannot_repeat", task=task.short_ref, reason=str(exc)) from None

    prompt, negative = task.params.get("prompt"), task.params.get("negative_prompt")
    return await _checked(app, interaction, prompt, negative, store)


async def _checked(
    app: DiscordApp,
    interaction: discord.Interaction[Any],
    prompt: str | None,
    negative_prompt: str | None,
    store: Store,
) -> TaskRecord:
    async with member_lock(app.member_locks, interaction.guild_id, interaction.user.id):
        await checks.check_request(app, interaction, prompt=prompt, negative_prompt=negative_prompt)
        task, changes = await store()
    mark_status_shown(interaction)
    await app.status_messages.follow(task, interaction, changes)
    log.info(
        "task %s (%s) submitted by user %s in channel %s",
        task.id,
        task.kind,
        interaction.user.id,
        interaction.channel_id,
    )
    return task


async def _prepared_images(
    app: DiscordApp, items: Sequence[tuple[str, ImageSource]]
) -> list[PreparedImage]:
    attachments = [(label, s) for label, s in items if isinstance(s, discord.Attachment)]
    checks.check_attachments(attachments)
    names = {label: checks.attachment_name(label, a) for label, a in attachments}
    inputs = [(label, await _read(names.get(label, label), source)) for label, source in items]
    try:
        return await prepare_images(inputs, fit=app.settings.image_fit)
    except ImageRejected as exc:
        name = names.get(exc.label, exc.label)
        raise Refused(
            "refused.image_rejected", name=name, reason=exc.reason, hint=exc.hint
        ) from None


async def _read(name: str, source: ImageSource) -> bytes:
    if isinstance(source, bytes):
        return source
    try:
        return await source.read()
    except discord.HTTPException:
        raise Refused("refused.download_failed", name=name) from None


async def _submit_to_core(
    app: DiscordApp, params: TaskParams, prepared: Sequence[PreparedImage], origin: Origin
) -> TaskRecord:
    try:
        return await app.tracker.submit(params.kind, params, prepared, origin)
    except ValidationError as exc:
        raise _would_refuse(exc) from None
    except InputsNotStored as exc:
        raise RefusedFailure(exc.failure) from None
    except KlingInvalidRequest as exc:
        failure = getattr(exc, "failure", None)  # the core's own reason (too many images)
        if isinstance(failure, Failure):
            raise RefusedFailure(failure) from None
        raise Refused("refused.kling_refused", reason=str(exc)) from None


def _would_refuse(exc: ValidationError) -> Refused:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    return Refused("refused.kling_would_refuse", field=where, reason=error["msg"])
