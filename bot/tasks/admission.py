"""Admission: queued tasks are created at Kling as its slots allow.

The order and the slot accounting are the store's: each step is one ``admit_next`` per kind
(members take turns, each member's tasks in order, nobody overtakes a head that does not fit;
see ``TaskStore.admit_next``), which claims the task for "admit". The claim counts the task's
slots while its create runs, and lapses if this process dies. ``creates.Creator`` makes each
create and handles its outcome; this loop only decides when to step: when woken (a task queued,
slots freed), when a backoff ends, and every ``IDLE_TICK`` for what other processes changed.

1303 (Kling has no free slot: other keys share the account) sends the task back with a backoff
and caps admission at the slots in use until one frees or the backoff ends.

Money: a task whose create may have reached Kling is only ever ended on Kling's word (see
``creates``); after a restart such tasks are held for a lookup at once (``look_up_soon``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from bot.kling.models import TaskKind
from bot.tasks.claims import Claims
from bot.tasks.creates import AdmissionBook, Attempts, Creator
from bot.tasks.events import Jobs
from bot.tasks.limits import Limits
from bot.tasks.models import ClaimPurpose, TaskRecord, TaskState
from bot.tasks.queue_view import QueueView
from bot.tasks.store import TaskStore

log = logging.getLogger(__name__)

IDLE_TICK = 1.0  # seconds between admission steps when nothing wakes it (other processes)


class Admission:
    def __init__(
        self,
        *,
        store: TaskStore,
        claims: Claims,
        creator: Creator,
        book: AdmissionBook,
        limits: Limits,
        queue: QueueView,
        wake: asyncio.Event,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._claims = claims
        self._creator = creator
        self.book = book
        self._limits = limits
        self._queue = queue
        self._wake = wake
        self._clock = clock
        self.creates = Jobs()

    async def look_up_soon(self, record: TaskRecord, *, now: bool = False) -> None:
        """Hold a queued task whose create may have reached Kling, for a lookup at its stored
        backoff (``now``: at once). One another process holds comes through ``admit_next``."""
        due = 0.0 if now else (record.not_before or 0.0)
        token = self._claims.token()
        until = max(due, self._clock()) + self._claims.lease
        held = await self._claims.take(
            record.id, ClaimPurpose.ADMIT, token, states=[TaskState.QUEUED], until=until
        )
        if held is not None:
            self.book.attempts[record.id] = Attempts(token, maybe_created=True, again_at=due)
            self._wake.set()

    def expedite(self, task_id: int) -> None:
        """End a held task's backoff (a cancel only needs a lookup, which costs no slot)."""
        attempts = self.book.attempts.get(task_id)
        if attempts is not None and attempts.again_at is not None:
            attempts.again_at = 0.0
            self._wake.set()

    async def close(self) -> None:
        await self.creates.close()

    async def run(self) -> None:
        failing = False
        while True:
            self._wake.clear()
            try:
                await self._step()
                failing = False
            except Exception as exc:  # a bug or a store hiccup must not stop admission for good
                if failing:  # the traceback once, not every second the store stays locked
                    log.warning("admission step failed again (%r); trying again shortly", exc)
                else:
                    log.exception("admission step failed; trying again shortly")
                failing = True
                await asyncio.sleep(1.0)
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that arrives
            # as the event is set, and the loop would then never stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._sleep_time()):
                    await self._wake.wait()

    async def _step(self) -> None:
        now = self._clock()
        for task_id, attempts in list(self.book.attempts.items()):
            if attempts.again_at is not None and attempts.again_at <= now:
                attempts.again_at = None
                self._start(task_id, attempts)
        for kind in TaskKind:
            if not self._queue.may_hold_work(kind, now, IDLE_TICK):
                continue  # nothing queued a moment ago, and intake refreshes before it wakes us
            cap = await self._cap(kind, now)
            admitted = False
            while True:
                token = self._claims.token()
                record = await self._store.admit_next(
                    kind,
                    limit=self._limits.get(kind),
                    cap=cap,
                    owner=token,
                    now=now,
                    until=self._claims.until(),
                )
                if record is None:
                    break
                admitted = True
                self._start(record.id, self._attempts_for(record, token))
            if admitted:
                await self._queue.changed(kind)
            elif self._queue.may_have_changed(kind, now, IDLE_TICK):
                await self._queue.refresh(kind)

    def _attempts_for(self, record: TaskRecord, token: str) -> Attempts:
        """The task's counters, kept from its earlier tries in this process (a task backing
        off comes back through ``admit_next``), now under the new claim's ``token``."""
        attempts = self.book.attempts.get(record.id)
        if attempts is None:
            # A create may have reached Kling before a crash: look it up before creating again.
            attempts = Attempts(token, maybe_created=record.submit_attempts > 0)
            self.book.attempts[record.id] = attempts
        attempts.token = token
        attempts.again_at = None
        return attempts

    def _start(self, task_id: int, attempts: Attempts) -> None:
        self.creates.spawn(self._creator.attempt(task_id, attempts), name=f"create-{task_id}")

    async def _cap(self, kind: TaskKind, now: float) -> int | None:
        """The cap after a 1303, until a slot frees or the bounced task's backoff ends."""
        if kind not in self.book.caps:
            return None
        slots, until = self.book.caps[kind]
        if now >= until or await self._store.slots_in_use(kind, now) < slots:
            del self.book.caps[kind]
            return None
        return slots

    def _sleep_time(self) -> float:
        now = self._clock()
        book = self.book
        book.wakeups = [at for at in book.wakeups if at > now]
        times = [*book.wakeups, *(until for _, until in book.caps.values() if until > now)]
        times += [a.again_at for a in book.attempts.values() if a.again_at is not None]
        return max(0.01, min([now + IDLE_TICK, *times]) - now)
