"""Members' status messages: each deferred reply is edited as its task moves, while the
interaction token is valid.

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
from bot.discord.context import HasCore, locale_of
from bot.tasks.models import TaskEvent, TaskRecord

log = logging.getLogger(__name__)

# Interaction tokens live 15 minutes; stop editing a little before, never after.
STATUS_EDIT_WINDOW = 14 * 60.0
STATUS_EDIT_INTERVAL = 2.0  # per message
STATUS_EDITS_PER_SECOND = 20.0  # all messages together
STATUS_EDITS_AT_ONCE = 4


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
    interaction: discord.Interaction[Any]
    expires_at: float
    changes: tuple[str, ...]
    last_edit: float = 0.0
    latest: TaskRecord | None = None  # newer than the message, not yet shown


class StatusMessages:
    """Follows each submitted task in the reply to its command (``follow``), and edits that
    reply as the core's events (``on_event``) move the task on."""

    def __init__(self, app: HasCore) -> None:
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
        now = time.time()
        # Tokens past their window are never used again. Entries are in the order followed,
        # which is the order their windows close: drop from the front.
        while self._live and next(iter(self._live.values())).expires_at <= now:
            del self._live[next(iter(self._live))]
        expires = interaction.created_at.timestamp() + STATUS_EDIT_WINDOW
        entry = _Live(interaction, expires, changes)
        self._live[task.id] = entry
        # The task may have moved on between submit and now: show its current record.
        current = await self.app.tracker.tasks.get(task.id) or task
        await self._edit(task.id, entry, current)

    async def on_event(self, event: TaskEvent) -> None:
        entry = self._live.get(event.task.id)
        if entry is None:
            return
        entry.latest = event.task
        self._mark_behind(event.task.id)

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
                        await self._edit(task_id, entry, latest)
            except Exception:
                log.exception("task %s: status message edit failed", task_id)

    async def _edit(self, task_id: int, entry: _Live, task: TaskRecord) -> None:
        if time.time() >= entry.expires_at:
            self._live.pop(task_id, None)
            return
        entry.last_edit = time.monotonic()
        position = self.app.tracker.queue_position(task_id) if task.is_active else None
        locale = locale_of(entry.interaction)
        embed = embeds.status_embed(task, locale, position=position, changes=entry.changes)
        try:
            await entry.interaction.edit_original_response(content=None, embed=embed)
        except discord.HTTPException as exc:
            # An invalid token must not be used again (invalid requests count toward a ban).
            log.info("task %s: status message no longer editable (%s)", task_id, exc.status)
            self._live.pop(task_id, None)
            return
        if task.is_final:
            self._live.pop(task_id, None)

    async def close(self) -> None:
        self._live.clear()
        self._behind.clear()
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
