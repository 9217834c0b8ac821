"""Confirmation of the callbacks that say a task ended, shared by many tasks when they end together.

A terminal callback is checked with Kling before the task completes (a forged or mistaken one
must post nothing). Alone, that check is one GET. When tasks end by the dozen, a few list pages
(up to 500 tasks each) confirm them all: a confirmation then waits a moment for the others, at
most a small share of the time its task has run (a member whose video took ten minutes does not
notice six more seconds), and only while enough are expected in that time for the list calls to
cost at most half a call per task. Otherwise, and where the flavour cannot list, it goes at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass

from bot.kling.client import KlingClient
from bot.kling.models import KlingTask, TaskKind
from bot.tasks.models import TaskRecord
from bot.tasks.poller import list_pages, list_span, read_list
from bot.tasks.store import TaskStore

log = logging.getLogger(__name__)

# A confirmation waits for others at most this share of the time its task ran at Kling, and
# never longer than MAX_WAIT seconds (a task resumed after downtime may have "run" for hours).
WAIT_SHARE = 0.01
MAX_WAIT = 10.0
# A confirmation waits (see above) until each list call would confirm this many tasks.
TASKS_PER_CALL = 2
# How many recent confirmations estimate the rate at which they come.
RATE_SAMPLES = 32


@dataclass(slots=True)
class _Waiting:
    record: TaskRecord
    kling_id: str
    asked_at: float
    answer: asyncio.Future[KlingTask]


class Confirmer:
    def __init__(
        self,
        *,
        client: KlingClient,
        store: TaskStore,
        clock: Callable[[], float],
    ) -> None:
        self._client = client
        self._store = store
        self._clock = clock
        self._waiting: dict[TaskKind, list[_Waiting]] = defaultdict(list)
        self._asked: dict[TaskKind, deque[float]] = defaultdict(lambda: deque(maxlen=RATE_SAMPLES))
        self._wake: dict[TaskKind, asyncio.Event] = defaultdict(asyncio.Event)
        self._loops: dict[TaskKind, asyncio.Task[None]] = {}
        self._answering: set[asyncio.Task[None]] = set()
        self.shared = 0  # confirmations answered by a list call

    async def confirm(self, record: TaskRecord, kling_id: str) -> KlingTask:
        """Kling's current view of the task; raises ``KlingError`` when Kling cannot tell."""
        now = self._clock()
        waiting = _Waiting(record, kling_id, now, asyncio.get_running_loop().create_future())
        self._waiting[record.kind].append(waiting)
        self._asked[record.kind].append(now)
        loop = self._loops.get(record.kind)
        if loop is None or loop.done():
            self._loops[record.kind] = asyncio.create_task(
                self._run(record.kind), name=f"kling-confirm-{record.kind}"
            )
        else:
            self._wake[record.kind].set()
        return await waiting.answer

    async def close(self) -> None:
        running = [*self._loops.values(), *self._answering]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        self._loops.clear()
        for batch in self._waiting.values():
            for waiting in batch:
                waiting.answer.cancel()
        self._waiting.clear()

    async def _run(self, kind: TaskKind) -> None:
        while self._waiting[kind]:
            span = 0
            try:
                if self._client.flavour.supports_list:
                    span = await self._gather(kind)
            except Exception:
                log.exception("gathering %s confirmations failed; asking one by one", kind)
                span = 0
            batch = [w for w in self._waiting.pop(kind) if not w.answer.done()]
            if batch:
                # Answered beside this loop: a slow call must not hold up the next batch.
                answering = asyncio.create_task(self._answer(kind, batch, span))
                self._answering.add(answering)
                answering.add_done_callback(self._answering.discard)

    async def _gather(self, kind: TaskKind) -> int:
        """Wait while the confirmations still to come would make list calls pay off in time.
        Returns how far back (in tasks) the list must reach for the ones waiting."""
        waiting = self._waiting[kind]  # confirm() appends to this same list
        first = waiting[0]
        ran = first.asked_at - (first.record.submitted_at or first.record.created_at)
        deadline = first.asked_at + min(MAX_WAIT, WAIT_SHARE * max(0.0, ran))
        oldest, span = math.inf, 0
        while True:
            earliest = min(w.record.created_at for w in waiting)
            if earliest < oldest:  # a newer arrival can be an older task: reach back to it
                oldest, span = earliest, await list_span(self._store, (w.record for w in waiting))
            span = max(span, len(waiting))
            missing = TASKS_PER_CALL * list_pages(span) - len(waiting)
            now = self._clock()
            if missing <= 0 or now >= deadline or self._rate(kind) * (deadline - now) < missing:
                return span
            self._wake[kind].clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(deadline - now):
                    await self._wake[kind].wait()

    def _rate(self, kind: TaskKind) -> float:
        """Confirmations per second lately (0 when too few to tell)."""
        asked = self._asked[kind]
        elapsed = self._clock() - asked[0]
        return (len(asked) - 1) / elapsed if len(asked) > 1 and elapsed > 0 else 0.0

    async def _answer(self, kind: TaskKind, batch: list[_Waiting], span: int) -> None:
        by_id = {w.kling_id: w for w in batch}
        unresolved = {w.kling_id: w.record for w in batch}
        if span and list_pages(span) < len(batch):  # fewer calls than one GET each

            async def found(record: TaskRecord, task: KlingTask) -> None:
                _settle(by_id[task.task_id].answer, task)
                self.shared += 1

            try:
                await read_list(self._client, kind, unresolved, span, found, on_call=_nothing)
            except Exception:
                log.exception("confirming %s tasks by list failed; one by one", kind)
        await asyncio.gather(*(self._get(kind, by_id[kling_id]) for kling_id in unresolved))

    async def _get(self, kind: TaskKind, waiting: _Waiting) -> None:
        try:
            task = await self._client.get_task(kind, waiting.kling_id)
        except Exception as exc:  # KlingError above all: the caller decides what follows
            if not waiting.answer.done():
                waiting.answer.set_exception(exc)
            return
        _settle(waiting.answer, task)


def _settle(answer: asyncio.Future[KlingTask], task: KlingTask) -> None:
    if not answer.done():  # its caller may have been cancelled meanwhile
        answer.set_result(task)


def _nothing() -> None:
    pass
