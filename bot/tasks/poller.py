"""The poller: the safety net that asks Kling about running tasks no callback has settled.

Each running task's next check is its ``next_check_at`` in the store; a cycle takes the due ones
of a kind with ``claim_due_polls``, which moves their next check out to a lease (a poller that
dies leaves them due again then, for whichever process polls next). A task whose completion
another worker holds is left alone. A restart does not wait for the stored time: it checks every
running task at once (``resume``), since callbacks sent while the bot was down are lost, and one
list call covers 500 tasks.

One cycle asks about every due task of a kind at once: where the flavour can list tasks, ONE
list call (newest first) settles all due tasks found in it, and only the rest are fetched one by
one (bounded by ``poll_concurrency``). Checks back off (``schedule.PollSchedule``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence

from bot.kling.client import NOT_FOUND_CODES, KlingClient
from bot.kling.errors import KlingError
from bot.kling.models import KlingTask, TaskKind
from bot.tasks.claims import Claims
from bot.tasks.events import Jobs
from bot.tasks.metrics import Metrics
from bot.tasks.models import TaskRecord, TaskState
from bot.tasks.schedule import PollSchedule
from bot.tasks.settle import Settler
from bot.tasks.store import TaskStore

log = logging.getLogger(__name__)

LIST_PAGE_MAX = 500
LIST_PAGE_MIN = 30
MAX_TICK = 1.0
MIN_TICK = 0.02
MAX_DUE_PER_CYCLE = 5000  # tasks taken per kind and cycle; the rest are due in the next one
RUNNING = (TaskState.SUBMITTED, TaskState.PROCESSING)


def spread(at: float, pending: int, schedule: PollSchedule) -> float:
    """When a check asked for ``at`` runs, ``pending`` tasks running. Past one list page every
    cycle reads many pages, which settle every due task they hold: checks rounded up onto a
    shared grid make a few large cycles that read the pages once for all of them, instead of
    many small ones that would each have to read them all for a few tasks."""
    if pending <= LIST_PAGE_MAX:
        return at
    step = schedule.max_interval / 2
    return math.ceil(at / step) * step


class Poller:
    def __init__(
        self,
        *,
        store: TaskStore,
        client: KlingClient,
        settler: Settler,
        claims: Claims,
        jobs: Jobs,
        metrics: Metrics,
        schedule: PollSchedule,
        concurrency: int,
        max_age: float,
        wake: asyncio.Event,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._client = client
        self._settler = settler
        self._claims = claims
        self._jobs = jobs
        self._metrics = metrics
        self.schedule = schedule
        self._semaphore = asyncio.Semaphore(concurrency)
        self._max_age = max_age
        self._wake = wake
        self._clock = clock
        self._pending = 0  # tasks running at Kling, as of the last cycle
        self.cycles = 0  # (cycle, kind) rounds that asked Kling about at least one task

    async def run(self) -> None:
        failing = False
        while True:
            self._wake.clear()
            checked = 0
            try:
                due = await self._store.next_poll_at()
                now = self._clock()
                if due is not None and due <= now:
                    checked = await self.run_cycle(now)
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if failing:  # the traceback once, not every second the store stays locked
                    log.warning("poll cycle failed again (%r); trying again next cycle", exc)
                else:
                    log.exception("poll cycle failed; trying again next cycle")
                failing = True
                due = None
            if checked:
                continue
            # Nothing due, or only tasks another worker holds: sleep until the next due time.
            now = self._clock()
            wait = (
                MAX_TICK if due is None or due <= now else min(MAX_TICK, max(MIN_TICK, due - now))
            )
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that arrives
            # as the event is set, and the loop would then never stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    async def run_cycle(self, now: float) -> int:
        """Check every task due by ``now`` (plus the batch window); returns how many."""
        counts = await self._store.counts_by_state()
        self._pending = sum(counts.get(state, 0) for state in RUNNING)
        window = self.schedule.batch_window
        if self._pending > LIST_PAGE_MAX:
            # A cycle reads several list pages anyway: take in the tasks due a little later too
            # (those scheduled before the grid applied), not the next grid point's.
            window = max(window, self.schedule.max_interval / 4)
        checked = 0
        for kind in TaskKind:
            due = await self._store.claim_due_polls(
                kind,
                now=now + window,
                # Not checked by then (this process died, or a hiccup below): due again.
                until=self._clock() + self.schedule.max_interval,
                owner=self._claims.process_id,
                limit=MAX_DUE_PER_CYCLE,
            )
            if not due:
                continue
            checked += len(due)
            try:
                await self._check_kind(kind, due)
            except Exception:
                # Never lost on a hiccup (say "database is locked"): claim_due_polls moved
                # their next check out by the longest interval, so they come round again.
                log.exception("poll of %s tasks failed; checking them again later", kind)
        return checked

    def _too_old(self, record: TaskRecord) -> bool:
        started = record.submitted_at or record.created_at
        return self._clock() - started > self._max_age

    async def _check_kind(self, kind: TaskKind, due: Sequence[TaskRecord]) -> None:
        # No expiry by age here: only an answer from Kling in this cycle can tell that the
        # task is still not done (after downtime it may long have finished, and be paid).
        pending = {record.kling_task_id: record for record in due if record.kling_task_id}
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
                        if not await self._settler.expire(record):
                            await self._reschedule(record)
                        return
                    log.warning("task %s: status query failed (%s); next cycle", record.id, exc)
                    await self._reschedule(record)
                    return
            await self._apply(record, task)
        except Exception:
            # Its next check stays where claim_due_polls moved it: it comes round again.
            log.exception("task %s: poll failed; checking it again later", record.id)

    async def _apply(self, record: TaskRecord, task: KlingTask) -> None:
        try:
            if not task.is_terminal and self._too_old(record):
                # Kling answered just now and the task is still not done: only now does its
                # age count. A terminal answer always completes it normally.
                if await self._settler.expire(record):
                    return
            elif not task.is_terminal:
                await self._settler.progress(record, task)
            else:
                completion = await self._settler.claim(record)
                if completion is not None:
                    # Downloads run beside the poll loop, not in it.
                    self._jobs.spawn(self._settler.finish(completion, task, confirm=False))
                    return
                # Another completion (a callback's) runs: keep checking, in case it is not final.
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("task %s: settling a polled status failed", record.id)
        await self._reschedule(record)

    async def _reschedule(self, record: TaskRecord) -> None:
        at = spread(
            self._clock() + self.schedule.interval(record.check_count), self._pending, self.schedule
        )
        await self._store.update_if_state(
            record.id, RUNNING, next_check_at=at, check_count=record.check_count + 1
        )
