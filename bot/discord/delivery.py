"""Posting finished tasks in their channel.

Results go out with the bot token (``get_partial_messageable(...).send``), never with the
interaction token: a video can take longer than the token's 15 minutes, and a restart loses
every interaction anyway. Each finished task is posted at most once: ``begin_delivery`` counts
attempts, and a repeated attempt first looks for its own earlier post. When the store refuses a
write (SQLite busy, a lost database connection), delivery is tried again with a backoff until it
answers: the result goes out then, not at the next restart. A task that cannot be posted is
recorded with a failure code (``bot.tasks.failures``), worded when shown.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp
import discord

from bot.discord import embeds
from bot.discord.context import PostingApp
from bot.discord.posts import OutgoingFile, Post, plan_files, post_message
from bot.tasks import failures
from bot.tasks.failures import Failure, FailureParams
from bot.tasks.models import EventType, TaskEvent, TaskRecord, TaskState
from bot.text import t

log = logging.getLogger(__name__)

DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024
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
PAYLOAD_TOO_LARGE = 40005


def _is_gone(exc: discord.HTTPException) -> bool:
    if isinstance(exc, discord.NotFound | discord.Forbidden):
        return True
    return exc.code in (UNKNOWN_CHANNEL, MISSING_ACCESS, MISSING_PERMISSIONS)


def _is_interaction_reply(message: Any) -> bool:
    """A reply to a command (the live status message), sent through the application's webhook:
    it is authored by the bot and carries the task's footer too, but it is not a result post."""
    return (
        getattr(message, "webhook_id", None) is not None
        or getattr(message, "interaction_metadata", None) is not None
    )


class Delivery:
    """Subscribed to the core: posts COMPLETED and FAILED tasks in their channel."""

    def __init__(self, app: PostingApp) -> None:
        self.app = app
        self._in_flight: dict[int, asyncio.Task[None]] = {}
        self.retry_base_delay = RETRY_BASE_DELAY
        self.retry_window = RETRY_WINDOW

    async def on_event(self, event: TaskEvent) -> None:
        if event.type not in (EventType.COMPLETED, EventType.FAILED):
            return
        task = event.task
        if task.id in self._in_flight:
            return
        # Posting (uploads, retries) must not hold up the core's other events.
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

    async def _deliver_guarded(self, task: TaskRecord) -> None:
        """Deliver, and when that fails outside Discord (the store refusing a write, mostly),
        again after a backoff until it works. Each retry re-reads the task, and is counted by
        ``begin_delivery``, so it looks for an earlier post first: never posted twice."""
        failed = 0
        while True:
            try:
                current = await self._still_to_deliver(task.id) if failed else task
                if current is not None:
                    await self.deliver(current)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failed += 1
                delay = min(self.retry_base_delay * 2.0 ** min(failed - 1, 16),
                            MAX_STORE_RETRY_DELAY)  # fmt: skip
                if failed == 1:
                    log.exception("delivery of task %s failed; trying again in %.1f s",
                                  task.id, delay)  # fmt: skip
                else:
                    log.warning("delivery of task %s failed again (%r); trying again in %.1f s",
                                task.id, exc, delay)  # fmt: skip
            await asyncio.sleep(delay)

    async def _still_to_deliver(self, task_id: int) -> TaskRecord | None:
        """The task as stored now, if it still waits for delivery."""
        record = await self.app.tracker.tasks.get(task_id)
        return record if record is not None and record.awaiting_delivery else None

    async def deliver(self, task: TaskRecord) -> None:
        core = self.app.tracker
        if task.cancel_requested:
            log.info("task %s was cancelled: not posting its result", task.id)
            await self._give_up(task, Failure(failures.DELIVERY_CANCELLED))
            return
        attempt = await core.begin_delivery(task.id)
        channel = self.app.get_partial_messageable(task.channel_id, guild_id=task.guild_id)
        if attempt > 1 and await self._already_posted(channel, task):
            log.info("task %s was already posted by an earlier attempt", task.id)
            await core.mark_delivered(task.id)
            return
        error = await self._post(channel, task)
        if error is not None:
            log.error("task %s is undeliverable: %s", task.id, error)
            await self._give_up(task, error)

    async def _post(self, channel: discord.PartialMessageable, task: TaskRecord) -> Failure | None:
        """Post the task, retrying what Discord may take later; None once it is posted (or
        handled as a channel that will never take it), else why it could not be."""
        post = await self._prepare(task, self._upload_limit(task.guild_id))
        started = time.monotonic()
        retries = 0
        unsure = False  # did a failed attempt maybe create the message anyway?
        error = ""
        while True:
            if unsure and await self._already_posted(channel, task):
                log.info("task %s: an attempt that seemed to fail had posted it", task.id)
                await self.app.tracker.mark_delivered(task.id)
                return None
            try:
                await channel.send(**post_message(task, post, locale=self._locale(task)))
            except discord.HTTPException as exc:
                too_large = exc.status == 413 or exc.code == PAYLOAD_TOO_LARGE
                if too_large and post.files:
                    # Our idea of the limit was too generous: fall back to links only, once.
                    log.warning("task %s: upload refused as too large, sending links", task.id)
                    post = await self._prepare(task, 0)
                    continue
                if not too_large and _is_gone(exc):
                    await self._undeliverable(task, exc)
                    return None
                error = str(exc)
                if too_large or (exc.status < 500 and exc.status != 429):
                    break  # a refusal that asking again will not change
                unsure = exc.status >= 500
            except (aiohttp.ClientError, TimeoutError) as exc:
                error = f"network error: {exc!r}"
                unsure = True
            else:
                await self.app.tracker.mark_delivered(task.id)
                log.info("task %s posted in channel %s", task.id, task.channel_id)
                return None
            # Discord's outages pass: a paid result is worth retrying for a while.
            retries += 1
            delay = min(self.retry_base_delay * 2 ** (retries - 1), MAX_RETRY_DELAY)
            if time.monotonic() - started + delay > self.retry_window:
                break
            log.warning("task %s: posting failed (%s), retrying in %.1f s", task.id, error, delay)
            await asyncio.sleep(delay)
        if error:
            return Failure(failures.DISCORD_REFUSED, {"error": error})
        return Failure(failures.DISCORD_REFUSED_SILENTLY)

    async def _give_up(self, task: TaskRecord, why: Failure) -> None:
        await self.app.tracker.mark_undeliverable(task.id, why.code, why.params)

    # --- pieces -----------------------------------------------------------------------------

    def _guild(self, guild_id: int | None) -> discord.Guild | None:
        return self.app.get_guild(guild_id) if guild_id is not None else None

    def _upload_limit(self, guild_id: int | None) -> int:
        guild = self._guild(guild_id)
        return guild.filesize_limit if guild is not None else DEFAULT_UPLOAD_LIMIT

    def _locale(self, task: TaskRecord) -> str | None:
        """A channel post is read by the whole server: in the server's language."""
        guild = self._guild(task.guild_id)
        return str(guild.preferred_locale) if guild is not None else None

    async def _prepare(self, task: TaskRecord, limit: int) -> Post:
        if task.state != TaskState.SUCCEED and not task.result_files:
            return Post()
        paths = self.app.tracker.result_paths(task)
        uploads, links = plan_files(task, paths, list(task.result_urls), limit)
        files = [
            OutgoingFile(name, await asyncio.to_thread(path.read_bytes)) for name, path in uploads
        ]
        return Post(files=files, links=links)

    async def _already_posted(self, channel: discord.PartialMessageable, task: TaskRecord) -> bool:
        me = self.app.user
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
        """The channel will never take the post: send it to the member by direct message."""
        gone = exc.code == UNKNOWN_CHANNEL or isinstance(exc, discord.NotFound)
        code, why = (
            (failures.CHANNEL_GONE, "post.why.channel_gone")
            if gone
            else (failures.CHANNEL_FORBIDDEN, "post.why.channel_forbidden")
        )
        params: FailureParams = {"channel_id": task.channel_id}
        params.update(await self._direct_message(task, why))
        failure = Failure(code, params)
        log.warning("task %s is undeliverable: %s", task.id, failure)
        await self._give_up(task, failure)

    async def _direct_message(self, task: TaskRecord, why_key: str) -> FailureParams:
        """What became of the direct message, as failure parameters."""
        try:
            # Opens (or reuses) the DM channel from the id alone: no user lookup needed.
            dm = await self.app.create_dm(discord.Object(id=task.user_id))
            post = await self._prepare(task, DEFAULT_UPLOAD_LIMIT)
            why = t(why_key)
            prefix = t("post.direct_message", None, channel_id=task.channel_id, why=why)
            await dm.send(**post_message(task, post, prefix=prefix, direct_message=True))
        except discord.Forbidden:
            return {"direct_message_key": failures.DIRECT_MESSAGE_REFUSED}
        except discord.HTTPException as exc:
            return {"direct_message_key": failures.DIRECT_MESSAGE_FAILED, "status": exc.status}
        return {"direct_message_key": failures.DIRECT_MESSAGE_SENT}
