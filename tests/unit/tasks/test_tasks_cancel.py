"""Cancelling a task, against the simulator: never lose sight of one that may run (and charge)
at Kling, and never mark cancelled a task that finished meanwhile."""

from __future__ import annotations

import asyncio
import time

import pytest

from bot.tasks.models import ClaimPurpose, EventType, TaskRecord, TaskState
from bot.tasks.store import TaskStore
from kling_sim.simulator import KlingSimulator
from testing.settings import settings_for
from testing.tracker_harness import WAIT, Harness

RUNNING = {TaskState.SUBMITTED, TaskState.PROCESSING}


async def _backing_off(h: Harness, record: TaskRecord) -> TaskRecord:
    """Wait until the task's first create has failed and it waits out its backoff, queued and
    held by admission (its "admit" claim kept: its create may have reached Kling)."""
    deadline = time.monotonic() + WAIT
    while True:
        row = await h.store.get(record.id)
        assert row is not None
        held = row.claim_purpose == ClaimPurpose.ADMIT and (row.claim_until or 0) > time.time()
        if row.not_before is not None and held:
            break
        assert time.monotonic() < deadline, "the create never failed"
        await asyncio.sleep(0.02)
    assert row.state is TaskState.QUEUED and row.submit_attempts == 1
    return row


async def test_cancel_during_backoff_after_a_lost_create_follows_the_task_found_at_kling(
    simulator: KlingSimulator,
) -> None:
    """The create reached Kling but its answer was lost: the cancel looks the task up (at once,
    not after the backoff), holds its slot while Kling runs it, and ends it cancelled, unposted,
    without a second create."""
    simulator.config.processing_seconds = 1.0
    simulator.config.faults.lost_create_response_rate = 1.0
    settings = settings_for(simulator, kling_request_timeout=0.3, kling_max_attempts=1)
    h = await Harness(settings).open()
    try:
        record = await h.submit()
        waiting = await _backing_off(h, record)
        assert len(simulator.tasks) == 1  # it does exist at Kling, and will be charged
        simulator.config.faults.lost_create_response_rate = 0.0

        asked = await h.core.cancel(record.id)
        assert asked is not None and asked.state is TaskState.QUEUED and asked.cancel_requested

        running = await h.wait_for_state(record.id, RUNNING)
        assert running.kling_task_id in simulator.tasks
        assert waiting.not_before is not None and running.submitted_at is not None
        assert running.submitted_at < waiting.not_before  # looked up before the backoff ended
        assert await h.slots_used() == 1  # its slot is counted

        done = await h.wait_for_state(record.id, {TaskState.CANCELLED})
        assert done.kling_status == "succeed" and done.credits == "1"  # Kling ran and charged it
        assert simulator.calls["get_image"] == 1  # the lookup by external id
        assert simulator.calls["create_image"] == 1  # never created a second time
        assert h.outcomes(EventType.COMPLETED) == [] and h.outcomes(EventType.FAILED) == []
        assert await h.slots_used() == 0
    finally:
        await h.close()


async def test_cancel_during_backoff_of_a_create_that_never_reached_kling_ends_it(
    simulator: KlingSimulator,
) -> None:
    """No answer, and nothing was created (a gateway timeout): the lookup finds nothing, so
    the task ends cancelled at once, still without a second create."""
    simulator.config.faults.timeout_rate = 1.0  # applies to create and query alike
    settings = settings_for(simulator, kling_request_timeout=0.3, kling_max_attempts=1)
    h = await Harness(settings).open()
    try:
        record = await h.submit()
        await _backing_off(h, record)
        simulator.config.faults.timeout_rate = 0.0
        assert simulator.tasks == {}

        asked = await h.core.cancel(record.id)
        assert asked is not None and asked.cancel_requested

        done = await h.wait_for_state(record.id, {TaskState.CANCELLED}, limit=1.5)
        assert done.kling_task_id is None
        assert simulator.calls["get_image"] == 1
        assert simulator.calls["create_image"] == 1
        assert await h.slots_used() == 0
    finally:
        await h.close()


class _CompletesAfterRead:
    """The real store's ``get``; the armed task completes (a real transition) just after
    cancel() has read it, the race a poll or callback can win at any moment."""

    def __init__(self, store: TaskStore) -> None:
        self._store = store
        self._get = store.get
        self.armed: int | None = None

    async def get(self, task_id: int) -> TaskRecord | None:
        record = await self._get(task_id)
        if task_id == self.armed:
            self.armed = None
            await self._store.transition(task_id, RUNNING, TaskState.SUCCEED)
        return record


async def test_cancel_leaves_alone_a_task_that_finished_after_it_was_read(
    simulator: KlingSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = await Harness(settings_for(simulator)).open(start=False)
    try:
        record = await h.submit()
        await h.store.transition(
            record.id, [TaskState.QUEUED], TaskState.PROCESSING, kling_task_id="k-race"
        )
        racing = _CompletesAfterRead(h.store)
        monkeypatch.setattr(h.store, "get", racing.get)
        racing.armed = record.id
        after = await h.core.cancel(record.id)
        assert racing.armed is None  # the race happened
        assert after is not None and after.state is TaskState.SUCCEED
        assert not after.cancel_requested  # finished, not cancelled: it will be posted
        await h.wait_until(lambda: len(h.events) >= 1)
        assert all(not e.task.cancel_requested for e in h.events)
    finally:
        await h.close()
