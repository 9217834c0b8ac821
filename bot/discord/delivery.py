"""Posting finished tasks in their channel.

Results go out with the bot token (``get_partial_messageable(...).send``), never with the
interaction token: a video can take longer than the token's 15 minutes, and a restart loses
every interaction anyway. Each finished task is posted at most once: ``begin_delivery`` counts
attempts, and a repeated attempt first looks for its own earlier post. When the store refuses a
write (SQLite busy, a lost database connection), delivery is tried again with a backoff until it
answers: the result goes out then, not at the next restart.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import discord

from bot.discord import embeds
from bot.discord.views import result_view
from bot.kling.models import TaskKind
from bot.tasks.models import EventType, TaskEvent, TaskRecord, TaskState

if TYPE_CHECKING:
    from bot.discord.bot import KlingBot

log = logging.getLogger(__name__)

DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024
MAX_FILES = 10
RETRY_BASE_DELAY = 1.0
MAX_RETRY_DELAY = 300.0
# How long transient Discord failures (5xx, 429, network) are retried before giving up.
RETRY_WINDOW = 30 * 60.0
# A store that refuses writes is waited out without a deadline, asking at least this often.
MAX_STORE_RETRY_DELAY = 60.0
HISTORY_LIMIT = 50

# Discord error codes meaning "this channel will not take the post" (not worth retrying).
UNKNOWN_CHANNEL = 10003
MISSING_ACCESS = 50001
MISSING_PERMISSIONS = 50013
CANNOT_DM = 50007
PAYLOAD_TOO_LARGE = 40005


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


def _mentions(user_id: int) -> discord.AllowedMentions:
    return discord.AllowedMentions(
        everyone=False, roles=False, users=[discord.Object(user_id)], replied_user=False
    )


def _is_gone(exc: discord.HTTPException) -> bool:
    if isinstance(exc, discord.NotFound):
        return True
    return exc.code in (UNKNOWN_CHANNEL, MISSING_ACCESS, MISSING_PERMISSIONS) or isinstance(
        exc, discord.Forbidden
    )


def _is_interaction_reply(message: Any) -> bool:
    """A reply to a command (the live status message), sent through the application's webhook:
    it is authored by the bot and carries the task's footer too, but it is not a result post."""
    return (
        getattr(message, "webhook_id", None) is not None
        or getattr(message, "interaction_metadata", None) is not None
    )


class Delivery:
    """Subscribed to the tracker: posts COMPLETED and FAILED tasks in their channel."""

    def __init__(self, bot: KlingBot) -> None:
        self.bot = bot
        self._in_flight: dict[int, asyncio.Task[None]] = {}
        self.retry_base_delay = RETRY_BASE_DELAY
        self.retry_window = RETRY_WINDOW

    async def on_event(self, event: TaskEvent) -> None:
        if event.type not in (EventType.COMPLETED, EventType.FAILED):
            return
        task = event.task
        if task.id in self._in_flight:
            return
        # Posting (uploads, retries) must not hold up the tracker's other events.
        job = asyncio.create_task(self._deliver_guarded(task), name=f"deliver-{task.id}")
        self._in_flight[task.id] = job
        job.add_done_callback(lambda _: self._in_flight.pop(task.id, None))

    async def close(self, grace: float = 5.0) -> None:
        jobs = list(self._in_flight.values())
        if not jobs:
            return
        _, pending = await asyncio.wait(jobs, timeout=grace)
        for job in pending:
            job.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def wait_idle(self) -> None:
        while self._in_flight:
            await asyncio.gather(*list(self._in_flight.values()), return_exceptions=True)

    async def _deliver_guarded(self, task: TaskRecord) -> None:
        """Deliver, and when that fails outside Discord (the store refusing a write, mostly),
        again after a backoff until it works. Each retry re-reads the task, and is counted by
        ``begin_delivery``, so it looks for an earlier post first: never posted twice."""
        failures = 0
        while True:
            try:
                current = await self._still_to_deliver(task.id) if failures else task
                if current is not None:
                    await self.deliver(current)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                delay = min(self.retry_base_delay * 2.0 ** min(failures - 1, 16),
                            MAX_STORE_RETRY_DELAY)  # fmt: skip
                if failures == 1:
                    log.exception("delivery of task %s failed; trying again in %.1f s",
                                  task.id, delay)  # fmt: skip
                else:
                    log.warning("delivery of task %s failed again (%r); trying again in %.1f s",
                                task.id, exc, delay)  # fmt: skip
            await asyncio.sleep(delay)

    async def _still_to_deliver(self, task_id: int) -> TaskRecord | None:
        """The task as stored now, if it still waits for delivery."""
        record = await self.bot.tracker.store.get(task_id)
        return record if record is not None and record.awaiting_delivery else None

    async def deliver(self, task: TaskRecord) -> None:
        tracker = self.bot.tracker
        if task.cancel_requested:
            log.info("task %s was cancelled: not posting its result", task.id)
            await tracker.mark_undeliverable(task.id, "cancelled by a moderator")
            return
        attempt = await tracker.begin_delivery(task.id)
        channel = self.bot.get_partial_messageable(task.channel_id, guild_id=task.guild_id)
        if attempt > 1 and await self._already_posted(channel, task):
            log.info("task %s was already posted by an earlier attempt", task.id)
            await tracker.mark_delivered(task.id)
            return

        limit = self._upload_limit(task.guild_id)
        post = await self._prepare(task, limit)
        started = time.monotonic()
        failures = 0
        unsure = False  # did a failed attempt maybe create the message anyway?
        error = ""
        while True:
            if unsure and await self._already_posted(channel, task):
                log.info("task %s: an attempt that seemed to fail had posted it", task.id)
                await tracker.mark_delivered(task.id)
                return
            try:
                await self._send(channel, task, post)
            except discord.HTTPException as exc:
                too_large = exc.status == 413 or exc.code == PAYLOAD_TOO_LARGE
                if too_large and post.files:
                    # Our idea of the limit was too generous: fall back to links only, once.
                    log.warning("task %s: upload refused as too large, sending links", task.id)
                    post = await self._prepare(task, 0)
                    continue
                if too_large:
                    # Even without files: smaller it cannot get, so it is a refusal.
                    error = str(exc)
                    break
                if _is_gone(exc):
                    await self._undeliverable(task, exc)
                    return
                error = str(exc)
                if exc.status < 500 and exc.status != 429:
                    break  # a refusal that asking again will not change
                unsure = exc.status >= 500
            except (aiohttp.ClientError, TimeoutError) as exc:
                error = f"network error: {exc!r}"
                unsure = True
            else:
                await tracker.mark_delivered(task.id)
                log.info("task %s posted in channel %s", task.id, task.channel_id)
                return
            # Discord's outages pass: a paid result is worth retrying for a while.
            failures += 1
            delay = min(self.retry_base_delay * 2 ** (failures - 1), MAX_RETRY_DELAY)
            if time.monotonic() - started + delay > self.retry_window:
                break
            log.warning("task %s: posting failed (%s), retrying in %.1f s", task.id, error, delay)
            await asyncio.sleep(delay)
        reason = f"Discord refused the post: {error}" if error else "Discord refused the post"
        log.error("task %s is undeliverable: %s", task.id, reason)
        await tracker.mark_undeliverable(task.id, reason)

    # --- pieces -----------------------------------------------------------------------------

    def _upload_limit(self, guild_id: int | None) -> int:
        guild = self.bot.get_guild(guild_id) if guild_id is not None else None
        return guild.filesize_limit if guild is not None else DEFAULT_UPLOAD_LIMIT

    async def _prepare(self, task: TaskRecord, limit: int) -> Post:
        if task.state != TaskState.SUCCEED and not task.result_files:
            return Post()
        paths = self.bot.tracker.result_paths(task)
        uploads, links = plan_files(task, paths, list(task.result_urls), limit)
        files = [
            OutgoingFile(name, await asyncio.to_thread(path.read_bytes)) for name, path in uploads
        ]
        return Post(files=files, links=links)

    def _message(
        self, task: TaskRecord, post: Post, *, prefix: str = "", direct_message: bool = False
    ) -> dict[str, Any]:
        succeeded = task.state == TaskState.SUCCEED or (
            task.state not in (TaskState.FAILED,) and bool(task.result_files)
        )
        kind = "image" if task.kind == TaskKind.IMAGE else "video"
        if succeeded:
            many = task.kind == TaskKind.IMAGE and len(post.files) + len(post.links) > 1
            what = f"{kind}s are" if many else f"{kind} is"
            content = f"<@{task.user_id}> your {what} ready ({task.short_ref})."
            embed = embeds.result_embed(task, links=post.links)
        else:
            content = f"<@{task.user_id}> your {kind} task {task.short_ref} failed."
            embed = embeds.failure_embed(task)
        if prefix:
            content = f"{prefix}\n{content}"
        return {
            "content": content,
            "embed": embed,
            "files": post.discord_files(),
            "view": result_view(task, succeeded=succeeded, direct_message=direct_message),
            "allowed_mentions": _mentions(task.user_id),
        }

    async def _send(self, channel: discord.abc.Messageable, task: TaskRecord, post: Post) -> None:
        await channel.send(**self._message(task, post))

    async def _already_posted(self, channel: discord.PartialMessageable, task: TaskRecord) -> bool:
        me = self.bot.user
        ref = embeds.footer_ref(task.id)
        try:
            async for message in channel.history(limit=HISTORY_LIMIT):
                if me is not None and message.author.id != me.id:
                    continue
                if _is_interaction_reply(message):
                    continue  # the member's live status message: same footer, not the post
                for embed in message.embeds:
                    footer = embed.footer.text or ""
                    if footer == ref or footer.startswith(ref + " "):
                        return True
        except discord.HTTPException:
            # Cannot read the history: posting again risks a duplicate, not posting risks a
            # lost result; a duplicate is the smaller harm.
            log.warning("task %s: could not read channel history to check for a post", task.id)
        return False

    async def _undeliverable(self, task: TaskRecord, exc: discord.HTTPException) -> None:
        if exc.code == UNKNOWN_CHANNEL or isinstance(exc, discord.NotFound):
            why = "the channel no longer exists"
        else:
            why = "I am not allowed to post there (missing permissions)"
        dm_note = await self._direct_message(task, why)
        reason = f"channel {task.channel_id}: {why}; {dm_note}"
        log.warning("task %s is undeliverable: %s", task.id, reason)
        await self.bot.tracker.mark_undeliverable(task.id, reason)

    async def _direct_message(self, task: TaskRecord, why: str) -> str:
        try:
            # Opens (or reuses) the DM channel from the id alone: no user lookup needed.
            dm = await self.bot.create_dm(discord.Object(id=task.user_id))
            post = await self._prepare(task, DEFAULT_UPLOAD_LIMIT)
            prefix = f"I could not post in <#{task.channel_id}> ({why}), so here it is."
            await dm.send(**self._message(task, post, prefix=prefix, direct_message=True))
        except discord.Forbidden:
            return "the member does not accept direct messages"
        except discord.HTTPException as exc:
            return f"the direct message failed too ({exc.status})"
        return "sent to the member by direct message"
