"""What a finished task's post is made of: which files to upload, which to link, the words.

Pure pieces of delivery (``bot.discord.delivery``), so they can be tested without Discord.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import discord

from bot.discord import embeds
from bot.discord.buttons import result_view
from bot.kling.models import TaskKind
from bot.tasks.models import TaskRecord, TaskState
from bot.text import t

log = logging.getLogger(__name__)

MAX_FILES = 10


@dataclass(slots=True)
class OutgoingFile:
    filename: str
    data: bytes


@dataclass(slots=True)
class Post:
    """One message's worth of result: what to upload and what to link instead."""

    files: list[OutgoingFile] = field(default_factory=list)
    links: list[str] = field(default_factory=list)

    def discord_files(self) -> list[discord.File]:
        # Fresh File objects per attempt: discord.py consumes them when sending.
        return [discord.File(io.BytesIO(f.data), filename=f.filename) for f in self.files]


def plan_files(
    task: TaskRecord, paths: list[Path], urls: list[str], limit: int
) -> tuple[list[tuple[str, Path]], list[str]]:
    """Choose which result files to upload within ``limit`` (per file and in total).

    Returns (filename, path) pairs to upload and the Kling links of the rest, in result order.
    """
    uploads: list[tuple[str, Path]] = []
    links: list[str] = []
    total = 0
    count = max(len(paths), len(urls))
    for i in range(count):
        path = paths[i] if i < len(paths) else None
        url = urls[i] if i < len(urls) else None
        size = path.stat().st_size if path is not None and path.exists() else None
        fits = size is not None and total + size <= limit and len(uploads) < MAX_FILES
        if fits and path is not None and size is not None:
            suffix = path.suffix or (".mp4" if task.kind == TaskKind.VIDEO else ".png")
            name = f"kling-{task.id}" + (f"-{i + 1}" if count > 1 else "") + suffix
            uploads.append((name, path))
            total += size
        elif url:
            links.append(url)
        else:
            log.warning("task %s: result %d has neither a file that fits nor a link", task.id, i)
    return uploads, links


def succeeded(task: TaskRecord) -> bool:
    """A result to show: Kling succeeded (or, later, the files of a success are on disk)."""
    return task.state == TaskState.SUCCEED or (
        task.state != TaskState.FAILED and bool(task.result_files)
    )


def post_message(
    task: TaskRecord,
    post: Post,
    *,
    locale: str | None = None,
    prefix: str = "",
    direct_message: bool = False,
) -> dict[str, Any]:
    """The keyword arguments of ``send`` for the task's post: mention, embed, files, buttons."""
    ok = succeeded(task)
    if ok:
        shown = len(post.files) + len(post.links) if task.kind == TaskKind.IMAGE else 1
        content = t(
            f"post.ready.{task.kind.value}",
            locale,
            count=max(shown, 1),
            user_id=task.user_id,
            task=task.short_ref,
        )
        embed = embeds.result_embed(task, locale, links=post.links)
    else:
        key = f"post.failed.{task.kind.value}"
        content = t(key, locale, user_id=task.user_id, task=task.short_ref)
        embed = embeds.failure_embed(task, locale)
    if prefix:
        content = f"{prefix}\n{content}"
    return {
        "content": content,
        "embed": embed,
        "files": post.discord_files(),
        "view": result_view(task, succeeded=ok, direct_message=direct_message, locale=locale),
        "allowed_mentions": only_mentioning(task.user_id),
    }


def only_mentioning(user_id: int) -> discord.AllowedMentions:
    """The post pings its member, and nobody a prompt names."""
    return discord.AllowedMentions(
        everyone=False, roles=False, users=[discord.Object(user_id)], replied_user=False
    )
