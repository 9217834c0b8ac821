"""The delivery bookkeeping: who posts a finished task, how often it tried, how it ended.

Posting itself is the Discord side's; it tells the core here. ``begin_delivery`` claims the task
for "deliver" (waiting while another holder's claim is live: a process that died mid-post, whose
lease runs out, or one posting it right now) and counts the attempt, so that a repeated attempt
first looks for a post an earlier one made. The process's heartbeat keeps the claim while the
post runs (a delivery's lease is the shorter one, ``claims.PURPOSE_LEASES``); it ends with
``mark_delivered`` / ``mark_undeliverable``. ``set_posted_message`` records the post the
moment it exists, before "delivered".
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from bot.tasks.claims import Claims
from bot.tasks.events import EventBus
from bot.tasks.failures import Failure, FailureParams
from bot.tasks.metrics import Metrics
from bot.tasks.models import AWAITING_DELIVERY, ClaimPurpose, EventType, TaskState
from bot.tasks.store import TaskStore
from bot.text import catalogue_keys

log = logging.getLogger(__name__)

CLAIM_WAIT_STEP = 1.0  # seconds between tries at a delivery claim another holder has


class DeliveryNotNeeded(LookupError):
    """The task no longer waits for delivery (another process delivered it)."""


class DeliveryBook:
    def __init__(
        self, *, store: TaskStore, bus: EventBus, claims: Claims, metrics: Metrics
    ) -> None:
        self._store = store
        self._bus = bus
        self._claims = claims
        self._metrics = metrics
        self._held: dict[int, str] = {}  # task id -> the token its delivery claim is held by

    async def begin_delivery(self, task_id: int) -> int:
        """Claim the task's delivery and count the attempt; returns the attempt's number."""
        token = self._held.get(task_id) or self._claims.token()
        while True:
            record = await self._claims.take(
                task_id, ClaimPurpose.DELIVER, token, states=AWAITING_DELIVERY
            )
            if record is not None:
                break
            current = await self._store.get(task_id)
            if current is None:
                raise LookupError(f"task #{task_id} does not exist")
            if not current.awaiting_delivery:
                raise DeliveryNotNeeded(f"task #{task_id} is {current.state} already")
            log.info("task %s: another delivery holds it; waiting", task_id)
            await asyncio.sleep(CLAIM_WAIT_STEP)
        attempts = record.delivery_attempts + 1
        await self._store.update(task_id, delivery_attempts=attempts)
        self._held[task_id] = token
        return attempts

    async def set_posted_message(self, task_id: int, message_id: int) -> None:
        await self._store.set_posted_message(task_id, message_id)

    async def mark_delivered(self, task_id: int) -> bool:
        won = await self._store.transition(task_id, AWAITING_DELIVERY, TaskState.DELIVERED)
        self._held.pop(task_id, None)
        if won:
            record = await self._bus.emit_fresh(task_id, EventType.STATE)
            if record is not None and record.finished_at and record.delivered_at:
                self._metrics.delivery_seconds.observe(record.delivered_at - record.finished_at)
        return won

    async def mark_undeliverable(
        self, task_id: int, code: str, params: Mapping[str, str | int | float] | None = None
    ) -> bool:
        """End the task undelivered, for the reason ``code`` (``bot.tasks.failures``)."""
        won = await self._store.transition(
            task_id, AWAITING_DELIVERY, TaskState.UNDELIVERABLE, **_reason(code, params)
        )
        self._held.pop(task_id, None)
        if won:
            await self._bus.emit_fresh(task_id, EventType.STATE)
        return won

    async def close(self) -> None:
        """Forget the claims held: the heartbeat's stop gives them back (or, killed, they
        lapse)."""
        self._held.clear()


def _reason(code: str, params: Mapping[str, str | int | float] | None) -> dict[str, object]:
    if f"failure.{code}" not in catalogue_keys("en"):
        # A sentence from a caller that does not give codes yet: kept as prose.
        return {"delivery_error": code}
    values: FailureParams = dict(params or {})
    return Failure(code, values).as_delivery_error()
