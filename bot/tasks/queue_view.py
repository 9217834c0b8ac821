"""What members and moderators see of the admission queue: positions, waits, totals.

The order and the slots are the store's (``queued_order``, ``slots_in_use``); this keeps a
snapshot of them per kind, refreshed by whoever changes the queue (intake, cancel, admission),
so that the Discord side reads a position without a query. The estimate: slots turn over once
per mean run time of the kind's recent tasks (``RunTimes``, a cache of this process).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from bot.kling.models import TaskKind
from bot.tasks.limits import Limits
from bot.tasks.models import TaskRecord, TaskState
from bot.tasks.store import TaskStore

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


@dataclass(slots=True)
class _Snapshot:
    line: list[TaskRecord] = field(default_factory=list)  # in admission order
    queued: list[TaskRecord] = field(default_factory=list)  # every queued task, any claim
    slots_used: int = 0


class QueueView:
    def __init__(
        self,
        store: TaskStore,
        limits: Limits,
        run_times: RunTimes,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._limits = limits
        self._run_times = run_times
        self._clock = clock
        self._snapshots = {kind: _Snapshot() for kind in TaskKind}

    async def refresh(self, kind: TaskKind | None = None) -> None:
        for each in [kind] if kind is not None else list(TaskKind):
            now = self._clock()
            queued = await self._store.in_states([TaskState.QUEUED], kind=each)
            by_id = {record.id: record for record in queued}
            order = await self._store.queued_order(each, now=now)
            self._snapshots[each] = _Snapshot(
                line=[by_id[task_id] for task_id in order if task_id in by_id],
                queued=queued,
                slots_used=await self._store.slots_in_use(each, now),
            )

    def position(self, task_id: int) -> QueuePosition | None:
        for kind, snapshot in self._snapshots.items():
            slots_ahead = 0
            for index, record in enumerate(snapshot.line):
                if record.id == task_id:
                    wait = self._estimate(kind, snapshot, slots_ahead, record)
                    return QueuePosition(position=index + 1, ahead=index, estimated_wait=wait)
                slots_ahead += record.slots
        return None

    def stats(self) -> dict[TaskKind, QueueStats]:
        now = self._clock()
        return {
            kind: QueueStats(
                queued=len(snapshot.queued),
                slots_used=snapshot.slots_used,
                limit=self._limits.get(kind),
                oldest_wait=max(
                    0.0, now - min((r.created_at for r in snapshot.queued), default=now)
                ),
            )
            for kind, snapshot in self._snapshots.items()
        }

    def _estimate(
        self, kind: TaskKind, snapshot: _Snapshot, slots_ahead: int, record: TaskRecord
    ) -> float:
        backoff = max(0.0, (record.not_before or 0.0) - self._clock())
        limit = self._limits.get(kind)
        if limit is None:
            return backoff
        # Slots turn over once per mean run time: count the full "waves" before ours starts.
        waves = math.floor((snapshot.slots_used + slots_ahead + record.slots - 1) / limit)
        return max(backoff, waves * self._run_times.mean(kind))
