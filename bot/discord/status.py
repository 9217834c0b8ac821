"""Members' status messages: each deferred reply is edited as its task moves.

The process that answered the command edits it through the interaction while its token is
valid. When the store names the status message (``TaskRecord.message_id``), it is also edited
with the bot token, by its channel and message id: by any other process that moves the task
(a ``worker`` too), and after the token's 15 minutes; without it, editing stops with the token.

These edits are the least urgent requests the bot makes. A poll cycle can move thousands of
tasks at once, and thousands of simultaneous edits would delay the replies to new commands
(due within 3 seconds) and the result posts. So a task whose message is behind waits in one
queue, oldest first, and a few workers edit at a paced rate, each message once with its newest
record, and no message more often than every ``interval`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import discord

from bot.discord import embeds
from bot.discord.context import PostingApp, locale_of
from bot.tasks.models import TaskEvent, TaskRecord

log = logging.getLogger(__name__)

# Interaction tokens live 15 minutes; stop editing a little before, never after.
STATUS_EDIT_WINDOW = 14 * 60.0
STATUS_EDIT_INTERVAL = 2.0  # per message
STATUS_EDITS_PER_SECOND = 20.0  # all messages together
STATUS_EDITS_AT_ONCE = 4
# How long a status message is followed at most: well past TASK_MAX_AGE's default 3 hours, by
# then its task has ended. Bounds the memory of tasks whose final event another process saw.
FOLLOW_LIMIT = 6 * 3600.0


class Pacer:
    """At most ``rate`` starts per second and ``at_once`` in flight, first come first served."""

    def __init__(self, rate: float, at_once: int) -> None:
        self._spacing = 1.0 / rate
        self._slots = asyncio.Semaphore(at_once)
        self._next_start = 0.0

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        async with self._slots:
            now = time.monotonic()
            start = max(now, self._next_start)
            self._next_start = start + self._spacing
            if start > now:
                await asyncio.sleep(start - now)
            yield


@dataclass(slots=True)
class _Live:
    """One status message followed here: through the interaction while its token is valid
    (this process answered the command), else through the bot token, by its ids."""

    channel_id: int
    guild_id: int | None
    locale: str | None
    changes: tuple[str, ...]
    until: float  # unix time: followed no longer than this
    interaction: discord.Interaction[Any] | None = None
    token_until: float = 0.0
    message_id: int | None = None  # the status message, when the store knows it
    last_edit: float = 0.0
    latest: TaskRecord | None = None  # newer than the message, not yet shown

    def token_valid(self, now: float) -> bool:
        return self.interaction is not None and now < self.token_until


class StatusMessages:
    """Follows each submitted task in the reply to its command (``follow``), and edits that
    reply as the core's events (``on_event``) move the task on.

    A task whose record names its status message (``message_id``) is edited with the bot
    token by any process that moves it, a worker too, and after the token's window."""

    def __init__(self, app: PostingApp) -> None:
        self.app = app
        self._live: dict[int, _Live] = {}
        self._behind: dict[int, None] = {}  # tasks whose message is behind, oldest first
        self._work = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []
        self.interval = STATUS_EDIT_INTERVAL
        self.pacer = Pacer(STATUS_EDITS_PER_SECOND, STATUS_EDITS_AT_ONCE)

    async def follow(
        self,
        task: TaskRecord,
        interaction: discord.Interaction[Any],
        changes: tuple[str, ...] = (),
    ) -> None:
        """Start following ``task`` in the reply to ``interaction``. Its first edit is not
        queued: there is one per command, and the member is waiting for it."""
        self._forget_expired(time.time())
        created = interaction.created_at.timestamp()
        by_ids = task.message_id is not None  # editable after the token's window
        entry = _Live(
            task.channel_id,
            task.guild_id,
            locale_of(interaction),
            changes,
            until=created + (FOLLOW_LIMIT if by_ids else STATUS_EDIT_WINDOW),
            interaction=interaction,
            token_until=created + STATUS_EDIT_WINDOW,
            message_id=task.message_id,
        )
        self._live[task.id] = entry
        # The task may have moved on between submit and now: show its current record.
        current = await self.app.tracker.tasks.get(task.id) or task
        await self._edit(task.id, entry, current)

    async def on_event(self, event: TaskEvent) -> None:
        task = event.task
        entry = self._live.get(task.id) or self._from_record(task)
        if entry is None:
            return
        entry.latest = task
        self._mark_behind(task.id)

    def _from_record(self, task: TaskRecord) -> _Live | None:
        """Follow a task another process (or an earlier run) took the command of, if the
        store names its status message. In the server's language when known here (a worker
        has no guild cache: the default one); the input adjustments stay the first reply's."""
        now = time.time()
        if task.message_id is None or now >= task.created_at + FOLLOW_LIMIT:
            return None
        self._forget_expired(now)
        guild = self.app.get_guild(task.guild_id) if task.guild_id is not None else None
        locale = str(guild.preferred_locale) if guild is not None else None
        entry = _Live(
            task.channel_id,
            task.guild_id,
            locale,
            (),
            until=task.created_at + FOLLOW_LIMIT,
            message_id=task.message_id,
        )
        self._live[task.id] = entry
        return entry

    def _forget_expired(self, now: float) -> None:
        # Entries are (about) in the order their time runs out: drop from the front.
        while self._live and next(iter(self._live.values())).until <= now:
            del self._live[next(iter(self._live))]

    def _mark_behind(self, task_id: int) -> None:
        if task_id not in self._live:
            return
        self._behind.setdefault(task_id)  # a task already waiting keeps its place
        self._work.set()
        if not self._workers:
            self._workers = [
                asyncio.create_task(self._edit_behind(), name="kling-status-edits")
                for _ in range(STATUS_EDITS_AT_ONCE)
            ]

    async def _edit_behind(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._behind:
                self._work.clear()
                await self._work.wait()
                continue
            task_id = next(iter(self._behind))
            del self._behind[task_id]
            entry = self._live.get(task_id)
            if entry is None or entry.latest is None:
                continue
            wait = entry.last_edit + self.interval - time.monotonic()
            if wait > 0:  # edited moments ago: back in the queue once its interval has passed
                loop.call_later(wait, self._mark_behind, task_id)
                continue
            try:
                async with self.pacer.slot():
                    latest, entry.latest = entry.latest, None
                    if latest is not None and self._live.get(task_id) is entry:
                        await self._edit(task_id, entry, await self._newest(latest))
            except Exception:
                log.exception("task %s: status message edit failed", task_id)

    async def _newest(self, latest: TaskRecord) -> TaskRecord:
        """The stored record if it is newer: another process may have moved the task on since
        this event, and an older state must not overwrite what it showed."""
        try:
            stored = await self.app.tracker.tasks.get(latest.id)
        except Exception as exc:  # the store refusing a read: the event's record will do
            log.debug("task %s: status edit shows the event's record (%r)", latest.id, exc)
            return latest
        return stored if stored is not None and stored.updated_at > latest.updated_at else latest

    async def _edit(self, task_id: int, entry: _Live, task: TaskRecord) -> None:
        interaction = entry.interaction if entry.token_valid(time.time()) else None
        message_id = entry.message_id
        if interaction is None and message_id is None:
            self._live.pop(task_id, None)  # past the token's window, and no ids to edit by
            return
        entry.last_edit = time.monotonic()
        position = self.app.tracker.queue_position(task_id) if task.is_active else None
        embed = embeds.status_embed(task, entry.locale, position=position, changes=entry.changes)
        try:
            if interaction is not None:
                message = await interaction.edit_original_response(content=None, embed=embed)
                if message_id is None:
                    await self._remember(task, entry, message.id)
            elif message_id is not None:
                channel = self.app.get_partial_messageable(
                    entry.channel_id, guild_id=entry.guild_id
                )
                await channel.get_partial_message(message_id).edit(content=None, embed=embed)
        except discord.HTTPException as exc:
            # Not editable any more (an invalid token or a deleted message): never asked
            # again, since invalid requests count toward a ban.
            log.info("task %s: status message no longer editable (%s)", task_id, exc.status)
            self._live.pop(task_id, None)
            return
        if task.is_final:
            self._live.pop(task_id, None)

    async def _remember(self, task: TaskRecord, entry: _Live, message_id: int) -> None:
        """Store the status message's id: any process can then edit it with the bot token
        (the one that finishes the task may not be this one), and after the token's window."""
        entry.message_id = message_id
        entry.until = max(entry.until, task.created_at + FOLLOW_LIMIT)
        try:
            await self.app.tracker.set_status_message(task.id, message_id)
        except Exception as exc:  # only this process can edit it then, while the token lasts
            log.warning("task %s: status message id not stored (%r)", task.id, exc)

    async def close(self) -> None:
        self._live.clear()
        self._behind.clear()
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
