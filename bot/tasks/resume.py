"""What a start picks up from the store: every unfinished task goes on where it stopped.

Nothing to rebuild but caches: the queue order, the slots and the poll schedule are the
store's. A start only makes three things happen sooner than they would on their own:

* running tasks are checked at once, not at their stored time: callbacks sent while the bot was
  down are lost, and a task may long have ended (one list call covers 500 of them);
* finished tasks not yet posted are announced again (delivery looks for an earlier post first);
* queued tasks whose create may have reached Kling are held for a lookup; cancelled ones that
  surely never reached it end now, and so do those needing more slots than a lowered limit
  (they would head their member's line forever).
"""

from __future__ import annotations

import logging

from bot.tasks.admission import Admission
from bot.tasks.cancel import cancel_queued
from bot.tasks.events import EventBus, outcome_event
from bot.tasks.limits import Limits, SlotsExceedLimit, check_fits
from bot.tasks.models import AWAITING_DELIVERY, TaskRecord, TaskState
from bot.tasks.settle import RUNNING
from bot.tasks.store import TaskStore

log = logging.getLogger(__name__)


async def resume(
    *, store: TaskStore, bus: EventBus, admission: Admission, limits: Limits, now: float
) -> None:
    running = await store.in_states(RUNNING)
    for record in running:
        await store.update_if_state(record.id, RUNNING, next_check_at=now)
    # Before the queued ones: a queued task failed below announces itself, only once.
    for record in await store.in_states(AWAITING_DELIVERY):
        bus.emit(outcome_event(record), record)
    queued = await store.in_states([TaskState.QUEUED])
    for record in queued:
        if record.submit_attempts > 0:
            await admission.look_up_soon(record, now=record.cancel_requested)
        elif record.cancel_requested:
            await cancel_queued(store, bus, record)
        else:
            await _fail_if_too_big(store, bus, limits, record)
    log.info("task core started: %d queued, %d running at Kling", len(queued), len(running))


async def _fail_if_too_big(
    store: TaskStore, bus: EventBus, limits: Limits, record: TaskRecord
) -> None:
    """The limit was lowered while it waited (one whose create may have reached Kling is
    looked up first; admission fails it once Kling says it has no such task)."""
    try:
        check_fits(limits, record.kind, record.slots)
    except SlotsExceedLimit as exc:
        failed = exc.failure.as_failure()
        if await store.transition(record.id, [TaskState.QUEUED], TaskState.FAILED, **failed):
            log.info("task %s: failed at start: %s", record.id, exc.failure)
            await bus.emit_outcome(record.id)
