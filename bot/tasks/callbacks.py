"""Kling's callbacks, taken in: what the listener (``webhook``) hands over, answered at once.

The listener has already matched the body to the task its URL's token names. Here a callback is
judged news or not (the answer Kling gets: accepted or ignored), and the work it brings runs in
the background: a final status claims the task's completion before the answer goes out, so a
duplicate arriving a moment later is ignored; a progress status moves the task forward and
pushes its safety-net poll out to the longest interval (callbacks reach us for this task).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from bot.kling.models import KlingTask
from bot.tasks.events import Jobs
from bot.tasks.models import ClaimPurpose, TaskRecord, TaskState
from bot.tasks.schedule import PollSchedule
from bot.tasks.settle import RUNNING, Settler
from bot.tasks.statuses import EarlyStatuses, is_news
from bot.tasks.store import TaskStore


class Callbacks:
    def __init__(
        self,
        *,
        store: TaskStore,
        settler: Settler,
        early: EarlyStatuses,
        jobs: Jobs,
        schedule: PollSchedule,
        confirm: bool,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._settler = settler
        self._early = early
        self._jobs = jobs
        self._schedule = schedule
        self._confirm = confirm
        self._clock = clock

    async def task_for_token(self, token: str) -> TaskRecord | None:
        return await self._store.by_callback_token(token)

    async def accept(self, record: TaskRecord, task: KlingTask) -> bool:
        """True if the callback was news (its work then runs in the background)."""
        if record.state is TaskState.QUEUED:
            # The callback beat the create's answer: applied once the answer is recorded.
            return self._early.offer(record.id, task)
        if record.state not in RUNNING or self._completing(record):
            return False  # over, or its end is being handled: nothing newer can come
        if task.is_terminal:
            completion = await self._settler.claim(record)
            if completion is None:
                return False
            self._jobs.spawn(self._settler.finish(completion, task, confirm=self._confirm))
            return True
        if not is_news(task, record.kling_status):
            return False
        self._jobs.spawn(self._progress(record, task))
        return True

    def _completing(self, record: TaskRecord) -> bool:
        return (
            record.claim_purpose == ClaimPurpose.COMPLETE
            and record.claim_until is not None
            and record.claim_until > self._clock()
        )

    async def _progress(self, record: TaskRecord, task: KlingTask) -> None:
        # Callbacks reach us for this task: the safety-net poll can wait its longest interval.
        later = self._clock() + self._schedule.max_interval
        if record.next_check_at is None or record.next_check_at < later:
            await self._store.update_if_state(record.id, RUNNING, next_check_at=later)
        await self._settler.progress(record, task)
