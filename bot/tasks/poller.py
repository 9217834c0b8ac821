"""The poller: the safety net that asks Kling about running tasks no callback has settled.

It keeps an in-memory schedule (a heap by ``next_check_at``) of the pending tasks, so a tick
touches only the tasks that are due, never the whole table; ``next_check_at`` is also written
to the store with the check count (which keeps the backoff across restarts). A restart does
not wait for the stored time: it checks every running task at once, since callbacks sent while
the bot was down are lost, and one list call covers 500 tasks.

One cycle asks about every due task of a kind at once: where the flavour can list tasks, ONE
list call (newest first) settles all due tasks found in it, and only the rest are fetched one by
one (bounded by ``poll_concurrency``). Checks back off (x2 with jitter) up to a maximum interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import math
import random
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from bot.kling.client import NOT_FOUND_CODES, KlingClient
from bot.kling.errors import KlingError
from bot.kling.models import KlingTask, TaskKind
from bot.tasks.metrics import Metrics
from bot.tasks.models import TaskRecord, TaskState
from bot.tasks.store import TaskStore

log = logging.getLogger(__name__)

LIST_PAGE_MAX = 500
LIST_PAGE_MIN = 30
MAX_TICK = 1.0
MIN_TICK = 0.02

# Returns True while the task is still pending at Kling (keep checking it).
Settle = Callable[[TaskRecord, KlingTask], Awaitable[bool]]
# Returns False when it did not expire the task (a completion of it runs): keep checking it.
Expire = Callable[[TaskRecord], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class PollSchedule:
    first_delay: float
    max_interval: float
    # Due checks this close to the earliest are pulled forward into the same cycle, so tasks
    # submitted moments apart share one list call.
    batch_window: float

    def interval(self, check_count: int) -> float:
        """Seconds until the next check after ``check_count`` checks: x2 each time, +-15%."""
        base = min(self.max_interval, self.first_delay * 2.0 ** min(check_count, 30))
        return min(self.max_interval, base * random.uniform(0.85, 1.15))


class Poller:
    def __init__(
        self,
        *,
        client: KlingClient,
        store: TaskStore,
        metrics: Metrics,
        schedule: PollSchedule,
        concurrency: int,
        max_age: float,
        settle: Settle,
        expire: Expire,
        clock: Callable[[], float],
    ) -> None:
        self._client = client
        self._store = store
        self._metrics = metrics
        self.schedule_policy = schedule
        self._semaphore = asyncio.Semaphore(concurrency)
        self._max_age = max_age
        self._settle = settle
        self._expire = expire
        self._clock = clock
        self._heap: list[tuple[float, int, TaskKind]] = []
        self._due_at: dict[int, float] = {}  # the live entry per task; heap entries may be stale
        self._wake = asyncio.Event()
        self.cycles = 0  # (cycle, kind) rounds that asked Kling about at least one task

    def __len__(self) -> int:
        return len(self._due_at)

    def schedule(self, task_id: int, kind: TaskKind, at: float) -> None:
        if len(self._due_at) > LIST_PAGE_MAX:
            # Thousands pending: every cycle reads many list pages, which settle every due task
            # they hold. Checks rounded up onto a shared grid make a few large cycles that read
            # the pages once for all of them, instead of many small ones that would each have to
            # read them all for a few tasks (or query those one by one).
            step = self.schedule_policy.max_interval / 2
            at = math.ceil(at / step) * step
        earlier = not self._heap or at < self._heap[0][0]
        self._due_at[task_id] = at
        heapq.heappush(self._heap, (at, task_id, kind))
        if earlier:
            self._wake.set()

    def postpone(self, task_id: int, kind: TaskKind, at: float) -> None:
        """Move a scheduled task's next check later, to ``at`` (never earlier)."""
        due = self._due_at.get(task_id)
        if due is not None and due < at:
            self.schedule(task_id, kind, at)

    def unschedule(self, task_id: int) -> None:
        self._due_at.pop(task_id, None)

    def first_check_at(self, now: float) -> float:
        return now + self.schedule_policy.first_delay

    def next_due(self) -> float | None:
        while self._heap and self._due_at.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)  # stale: rescheduled or unscheduled since
        return self._heap[0][0] if self._heap else None

    async def run(self) -> None:
        while True:
            self._wake.clear()
            due = self.next_due()
            now = self._clock()
            if due is not None and due <= now:
                try:
                    await self.run_cycle(now)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("poll cycle failed; trying again next cycle")
                    await asyncio.sleep(MAX_TICK)
                continue
            wait = MAX_TICK if due is None else min(MAX_TICK, max(MIN_TICK, due - now))
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that arrives as
            # the event is set, and the loop would then never stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    async def run_cycle(self, now: float) -> int:
        """Check every task due by ``now`` (plus the batch window); returns how many."""
        window = self.schedule_policy.batch_window
        if len(self) > LIST_PAGE_MAX:
            # A cycle reads several list pages anyway: take in the tasks due a little later too
            # (those scheduled before the grid above applied), not the next grid point's.
            window = max(window, self.schedule_policy.max_interval / 4)
        horizon = now + window
        due: dict[TaskKind, list[int]] = defaultdict(list)
        while (at := self.next_due()) is not None and at <= horizon:
            _, task_id, kind = heapq.heappop(self._heap)
            del self._due_at[task_id]
            due[kind].append(task_id)
        for kind, task_ids in due.items():
            try:
                await self._check_kind(kind, task_ids, now)
            except Exception:
                # The due tasks are off the heap already: never drop them on a hiccup (say
                # "database is locked"); whatever is not scheduled again is checked later.
                log.exception("poll of %s tasks failed; checking them again later", kind)
                self._keep(kind, task_ids)
        return sum(len(ids) for ids in due.values())

    def _keep(self, kind: TaskKind, task_ids: Sequence[int]) -> None:
        """After a failure: each of ``task_ids`` not scheduled again yet is checked later."""
        at = self._clock() + self.schedule_policy.max_interval
        for task_id in task_ids:
            if task_id not in self._due_at:
                self.schedule(task_id, kind, at)

    def _too_old(self, record: TaskRecord) -> bool:
        started = record.submitted_at or record.created_at
        return self._clock() - started > self._max_age

    async def _check_kind(self, kind: TaskKind, task_ids: Sequence[int], now: float) -> None:
        pending: dict[str, TaskRecord] = {}
        for task_id in task_ids:
            try:
                record = await self._store.get(task_id)
            except Exception:
                log.exception("task %s: could not be loaded for a poll; later", task_id)
                self._keep(kind, [task_id])
                continue
            if record is None or record.state not in (TaskState.SUBMITTED, TaskState.PROCESSING):
                continue  # settled meanwhile (callback, cancel)
            if record.kling_task_id is None:
                continue
            # No expiry by age here: only an answer from Kling in this cycle can tell that the
            # task is still not done (after downtime it may long have finished, and be paid).
            pending[record.kling_task_id] = record
        if not pending:
            return
        self.cycles += 1
        unresolved = dict(pending)
        if self._client.flavour.supports_list:
            # The list is newest first: it must reach back to the oldest due task, past our
            # newer tasks (finished or not), to find them all in one call.
            oldest = min(record.created_at for record in pending.values())
            span = await self._store.count_tasks(since=oldest)
            await self._check_by_list(kind, unresolved, max(len(pending), span))
        if unresolved:
            await asyncio.gather(*(self._check_one(kind, r) for r in unresolved.values()))

    async def _check_by_list(
        self, kind: TaskKind, unresolved: dict[str, TaskRecord], span: int
    ) -> None:
        """Settle what the list shows; ``span``: how far back (in tasks) the due ones go."""
        # Kling lists by its own create order, which differs from ours by the creates that were
        # in flight together: reach a little further back than the span so none is just missed.
        page_size = min(LIST_PAGE_MAX, span + LIST_PAGE_MIN)
        page = 1
        while unresolved:
            self._metrics.poll(kind, "list")
            try:
                tasks = await self._client.list_tasks(kind, page=page, page_size=page_size)
            except KlingError as exc:
                log.warning("list of %s tasks failed (%s); single queries instead", kind, exc)
                return
            found = [task for task in tasks if task.task_id in unresolved]
            for task in found:
                await self._apply(unresolved.pop(task.task_id), task)
            # Newest first: the due tasks can be on any page back to the span (page 1 may hold
            # none of them). Read on while the pages left to the span cost no more calls than
            # fetching the tasks still unresolved one by one, which is what happens to the rest.
            left = math.ceil((span + LIST_PAGE_MIN - page * page_size) / page_size)
            more = len(tasks) == page_size and 0 < left <= len(unresolved)
            if not more or page >= 1000:
                return
            page += 1

    async def _check_one(self, kind: TaskKind, record: TaskRecord) -> None:
        try:
            async with self._semaphore:
                self._metrics.poll(kind, "get")
                try:
                    task = await self._client.get_task(kind, record.kling_task_id or "")
                except KlingError as exc:
                    unknown = exc.code in NOT_FOUND_CODES or exc.http_status == 404
                    if unknown and self._too_old(record):
                        log.warning("task %s: unknown to Kling (%s)", record.id, exc)
                        if not await self._expire(record):
                            await self._reschedule(record)
                        return
                    log.warning("task %s: status query failed (%s); next cycle", record.id, exc)
                    await self._reschedule(record)
                    return
            await self._apply(record, task)
        except Exception:
            log.exception("task %s: poll failed; checking it again later", record.id)
            self._keep(kind, [record.id])

    async def _apply(self, record: TaskRecord, task: KlingTask) -> None:
        try:
            if not task.is_terminal and self._too_old(record):
                # Kling answered just now and the task is still not done: only now does its
                # age count. A terminal answer always completes it normally.
                still_pending = not await self._expire(record)
            else:
                still_pending = await self._settle(record, task)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("task %s: settling a polled status failed", record.id)
            still_pending = True
        if still_pending:
            await self._reschedule(record)

    async def _reschedule(self, record: TaskRecord) -> None:
        at = self._clock() + self.schedule_policy.interval(record.check_count)
        self.schedule(record.id, record.kind, at)
        # Persisted only so that a restart resumes the schedule; the heap is what runs it.
        await self._store.update(record.id, next_check_at=at, check_count=record.check_count + 1)
