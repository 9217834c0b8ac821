"""Cancelling a task: at once if Kling never got it, else when Kling finishes it.

A queued task nobody is creating, whose earlier creates (if any) surely did not reach Kling,
ends ``cancelled`` at once. To know that nobody is creating it, the cancel claims it for "admit"
itself: the claim fails while admission holds one (a create or a lookup under way). Any other
active task is marked ``cancel_requested``: one running at Kling ends ``cancelled`` when Kling
finishes it (its slots stay held until then), one whose create may have reached Kling is looked
up first. Neither is ever posted.
"""

from __future__ import annotations

import logging

from bot.tasks.claims import Claims
from bot.tasks.events import EventBus
from bot.tasks.models import ACTIVE_STATES, ClaimPurpose, EventType, TaskRecord, TaskState
from bot.tasks.store import TaskStore

log = logging.getLogger(__name__)


async def cancel_queued(store: TaskStore, bus: EventBus, record: TaskRecord) -> bool:
    """End a queued task that Kling does not have (the caller knows it does not)."""
    if not await store.transition(record.id, [TaskState.QUEUED], TaskState.CANCELLED):
        return False
    log.info("task %s: cancelled before it was submitted", record.id)
    await bus.emit_fresh(record.id, EventType.STATE)
    return True


class Cancel:
    def __init__(self, *, store: TaskStore, bus: EventBus, claims: Claims) -> None:
        self._store = store
        self._bus = bus
        self._claims = claims

    async def cancel(self, task_id: int) -> tuple[TaskRecord | None, bool]:
        """Cancel the task; returns it as stored now, and whether admission should look it up
        at Kling now (a queued task whose create may have reached Kling)."""
        record = await self._store.get(task_id)
        if record is None:
            return None, False
        look_up = False
        if record.state is TaskState.QUEUED and await self._cancel_unsent(record):
            pass
        elif record.is_active and not record.cancel_requested:
            look_up = await self._request(record)
        return await self._store.get(task_id), look_up

    async def _cancel_unsent(self, record: TaskRecord) -> bool:
        """True if the task ended here: nobody was creating it and no create was ever sent."""
        token = self._claims.token()
        claimed = await self._claims.take(
            record.id, ClaimPurpose.ADMIT, token, states=[TaskState.QUEUED]
        )
        if claimed is None:
            return False  # admission creates or looks it up right now
        if claimed.submit_attempts == 0:
            return await cancel_queued(self._store, self._bus, claimed)
        await self._claims.release(record.id, token)
        return False

    async def _request(self, record: TaskRecord) -> bool:
        # Conditional: a task that ended since it was read is not marked cancelled.
        if not await self._store.update_if_state(record.id, ACTIVE_STATES, cancel_requested=True):
            return False
        queued = record.state is TaskState.QUEUED
        if queued:
            log.info("task %s: cancel requested; looking it up at Kling", record.id)
        else:
            log.info("task %s: cancel requested while it runs at Kling", record.id)
        await self._bus.emit_fresh(record.id, EventType.STATE)
        return queued
