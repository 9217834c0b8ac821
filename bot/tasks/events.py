"""The event bus: hands every state change of a task to the subscribers, in order per task.

Subscribers (the Discord side's status messages and delivery) run in the background, so a slow
one never holds up the task core; events of one task reach them in the order they were emitted,
and a subscriber that raises is logged and does not stop the others. ``Jobs`` is the set of
background work the core runs beside its loops (event dispatch, completions), cancelled at close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from bot.tasks.models import EventType, TaskEvent, TaskRecord, TaskState
from bot.tasks.store import TaskReader

log = logging.getLogger(__name__)

Subscriber = Callable[[TaskEvent], Awaitable[None]]


class Jobs:
    """Background asyncio tasks, kept referenced until they end; all cancelled by ``close``."""

    def __init__(self) -> None:
        self.running: set[asyncio.Task[Any]] = set()

    def spawn(
        self, work: Coroutine[Any, Any, Any], *, name: str | None = None
    ) -> asyncio.Task[Any]:
        task = asyncio.create_task(work, name=name)
        self.running.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.running.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background work %s failed", task.get_name(), exc_info=task.exception())

    async def close(self) -> None:
        for task in list(self.running):
            task.cancel()
        await asyncio.gather(*self.running, return_exceptions=True)


class EventBus:
    def __init__(self, tasks: TaskReader, jobs: Jobs) -> None:
        self._tasks = tasks
        self._jobs = jobs
        self.subscribers: list[Subscriber] = []
        self._last: dict[int, asyncio.Task[None]] = {}  # each task's latest dispatch

    def subscribe(self, handler: Subscriber) -> None:
        self.subscribers.append(handler)

    def emit(self, event_type: EventType, record: TaskRecord) -> None:
        """Hand an event to every subscriber, in the background, after the task's earlier ones."""
        previous = self._last.get(record.id)
        dispatch = self._jobs.spawn(self._dispatch(TaskEvent(event_type, record), previous))
        self._last[record.id] = dispatch

        def forget(done: asyncio.Task[Any], task_id: int = record.id) -> None:
            if self._last.get(task_id) is done:
                del self._last[task_id]

        dispatch.add_done_callback(forget)

    async def emit_fresh(self, task_id: int, event_type: EventType) -> TaskRecord | None:
        """Emit the task as stored now (after the change that caused the event)."""
        record = await self._tasks.get(task_id)
        if record is not None:
            self.emit(event_type, record)
        return record

    async def emit_outcome(self, task_id: int) -> None:
        """A task ended at Kling: its state change, then COMPLETED or FAILED."""
        record = await self.emit_fresh(task_id, EventType.STATE)
        if record is not None:
            self.emit(outcome_event(record), record)

    async def _dispatch(self, event: TaskEvent, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            with contextlib.suppress(BaseException):
                await asyncio.shield(previous)
        for handler in list(self.subscribers):
            try:
                await handler(event)
            except Exception:
                log.exception("subscriber failed on %s of task %s", event.type, event.task.id)


def outcome_event(record: TaskRecord) -> EventType:
    return EventType.COMPLETED if record.state is TaskState.SUCCEED else EventType.FAILED
