"""What members and moderators see of the admission queue: positions, waits, totals.

The order and the slots are the store's (``queue_snapshot``: ids, slots and backoffs, no whole
rows); this keeps the last snapshot per kind, refreshed by whoever changes the queue (intake,
cancel, admission), so that the Discord side reads a position without a query. The estimate:
slots turn over once per mean run time of the kind's recent tasks (``RunTimes``, a cache of
this process).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bot.kling.models import TaskKind
from bot.tasks.limits import Limits
from bot.tasks.models import QueuedTask, QueueSnapshot
from bot.tasks.store import Signals, TaskStore
from bot.tasks.store.signals import QUEUE

log = logging.getLogger(__name__)

DEFAULT_RUN_SECONDS = {TaskKind.IMAGE: 60.0, TaskKind.VIDEO: 300.0}
RUN_TIMES_KEPT = 20


@dataclass(frozen=True, slots=True)
class QueuePosition:
    position: int  # 1-based
    ahead: int  # tasks that go first
    estimated_wait: float  # seconds


@dataclass(frozen=True, slots=True)
class QueueStats:
    queued: int
    slots_used: int
    limit: int | None  # None: unlimited
    oldest_wait: float  # seconds the oldest queued task has waited


class RunTimes:
    """How long the last tasks of each kind ran at Kling (from submit to their end)."""

    def __init__(self) -> None:
        self._seconds = {kind: deque[float](maxlen=RUN_TIMES_KEPT) for kind in TaskKind}

    def record(self, kind: TaskKind, seconds: float) -> None:
        self._seconds[kind].append(seconds)

    def mean(self, kind: TaskKind) -> float:
        seconds = self._seconds[kind]
        return sum(seconds) / len(seconds) if seconds else DEFAULT_RUN_SECONDS[kind]


_EMPTY = QueueSnapshot(line=(), queued=0, oldest_created_at=None, slots_in_use=0)


class QueueView:
    def __init__(
        self,
        store: TaskStore,
        limits: Limits,
        run_times: RunTimes,
        signals: Signals,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._signals = signals
        self._limits = limits
        self._run_times = run_times
        self._clock = clock
        self._snapshots = {kind: _EMPTY for kind in TaskKind}
        self._refreshes: dict[TaskKind, _Refresh] = {kind: _Refresh() for kind in TaskKind}
        self._refreshed_at = {kind: 0.0 for kind in TaskKind}

    async def refresh(self, kind: TaskKind | None = None) -> None:
        """Read the queue again; returns once a read that began after this call has ended.

        Callers that arrive while a read runs share the next one: 60 submissions at once make
        two reads, not 60, and each still sees its own task."""
        for each in [kind] if kind is not None else list(TaskKind):
            await self._refreshes[each].run(functools.partial(self._read, each))

    async def changed(self, kind: TaskKind) -> None:
        """This process changed ``kind``'s queue: tell the others, and read it again."""
        try:
            await self._signals.publish(QUEUE, kind.value)
        except Exception as exc:  # they see it at their next look anyway
            log.warning("could not tell other processes about the queue (%r)", exc)
        await self.refresh(kind)

    def mark_stale(self) -> None:
        """Another process changed the queue: the next look reads it again."""
        self._refreshed_at = {kind: 0.0 for kind in TaskKind}

    async def _read(self, kind: TaskKind) -> None:
        now = self._clock()
        self._snapshots[kind] = await self._store.queue_snapshot(kind, now=now)
        self._refreshed_at[kind] = now

    def may_have_changed(self, kind: TaskKind, now: float, max_age: float) -> bool:
        """Whether the last snapshot may be out of date without anyone here having changed
        the queue: tasks were being created (they leave it when Kling answers), or another
        process may have changed it since ``max_age`` ago."""
        snapshot = self._snapshots[kind]
        return snapshot.queued > len(snapshot.line) or now - self._refreshed_at[kind] >= max_age

    def may_hold_work(self, kind: TaskKind, now: float, max_age: float) -> bool:
        """False when the last snapshot, taken less than ``max_age`` ago, had no queued task."""
        return self._snapshots[kind].queued > 0 or now - self._refreshed_at[kind] >= max_age

    def position(self, task_id: int) -> QueuePosition | None:
        for kind, snapshot in self._snapshots.items():
            slots_ahead = 0
            for index, queued in enumerate(snapshot.line):
                if queued.id == task_id:
                    wait = self._estimate(kind, snapshot, slots_ahead, queued)
                    return QueuePosition(position=index + 1, ahead=index, estimated_wait=wait)
                slots_ahead += queued.slots
        return None

    def stats(self) -> dict[TaskKind, QueueStats]:
        now = self._clock()
        return {
            kind: QueueStats(
                queued=snapshot.queued,
                slots_used=snapshot.slots_in_use,
                limit=self._limits.get(kind),
                oldest_wait=max(0.0, now - (snapshot.oldest_created_at or now)),
            )
            for kind, snapshot in self._snapshots.items()
        }

    def _estimate(
        self, kind: TaskKind, snapshot: QueueSnapshot, slots_ahead: int, queued: QueuedTask
    ) -> float:
        backoff = max(0.0, (queued.not_before or 0.0) - self._clock())
        limit = self._limits.get(kind)
        if limit is None:
            return backoff
        # Slots turn over once per mean run time: count the full "waves" before ours starts.
        waves = math.floor((snapshot.slots_in_use + slots_ahead + queued.slots - 1) / limit)
        return max(backoff, waves * self._run_times.mean(kind))


class _Refresh:
    """One read at a time; whoever asked while a read ran shares the next one."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._started = 0  # reads begun
        self._done = 0  # the last read finished

    async def run(self, read: Callable[[], Awaitable[None]]) -> None:
        wanted = self._started + 1  # a read that begins after this call
        async with self._lock:
            if self._done >= wanted:
                return  # it ran while this call waited its turn
            self._started += 1
            await read()
            self._done = self._started
