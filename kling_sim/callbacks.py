"""The simulator's callbacks: a POST of the task to its ``callback_url`` at each status.

Only tasks with a ``callback_url`` get timers (``loop.call_later``, one per callback). Faults
drop, duplicate or reorder them (newest first, all at the end). A callback is a hint: one that
cannot be delivered is forgotten.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import logging
import time

from aiohttp import ClientSession, ClientTimeout, TCPConnector

from bot.kling.models import TaskStatus
from kling_sim.config import SimulatorConfig
from kling_sim.faults import Roll
from kling_sim.tasks import SimTask

log = logging.getLogger(__name__)


class CallbackSender:
    def __init__(
        self, config: SimulatorConfig, roll: Roll, calls: collections.Counter[str]
    ) -> None:
        self._config = config
        self._roll = roll
        self._calls = calls
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._timer_ids = itertools.count()
        self._sending: set[asyncio.Task[None]] = set()
        self._session: ClientSession | None = None

    def open(self) -> None:
        self._session = ClientSession(
            timeout=ClientTimeout(total=5, connect=2), connector=TCPConnector(limit=200)
        )

    async def close(self) -> None:
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        for task in list(self._sending):
            task.cancel()
        await asyncio.gather(*self._sending, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def schedule(self, task: SimTask) -> None:
        """Timers for every callback ``task`` will send."""
        final = task.final_status
        plan: list[tuple[float, tuple[TaskStatus, ...]]]
        if self._config.faults.callback_reorder:
            plan = [(task.done_at, (final, TaskStatus.PROCESSING, TaskStatus.SUBMITTED))]
        else:
            plan = [
                (task.created_at, (TaskStatus.SUBMITTED,)),
                (task.processing_at, (TaskStatus.PROCESSING,)),
                (task.done_at, (final,)),
            ]
        loop, now = asyncio.get_running_loop(), time.time()
        for at, statuses in plan:
            timer = next(self._timer_ids)
            self._timers[timer] = loop.call_later(
                max(0.0, at - now), self._fire, timer, task, statuses
            )

    def _fire(self, timer: int, task: SimTask, statuses: tuple[TaskStatus, ...]) -> None:
        self._timers.pop(timer, None)
        sending = asyncio.create_task(self._deliver(task, statuses))
        self._sending.add(sending)
        sending.add_done_callback(self._sending.discard)

    async def _deliver(self, task: SimTask, statuses: tuple[TaskStatus, ...]) -> None:
        faults = self._config.faults
        for status in statuses:  # in order: a reordered plan arrives in that order
            if self._roll(faults.callback_drop_rate):
                continue
            body = json.dumps(task.to_json(status)).encode()
            for _ in range(2 if self._roll(faults.callback_duplicate_rate) else 1):
                await self._post(task.callback_url or "", body)

    async def _post(self, url: str, body: bytes) -> None:
        if self._session is None or self._session.closed:
            return
        self._calls["callback_sent"] += 1
        try:
            headers = {"Content-Type": "application/json"}
            async with self._session.post(url, data=body, headers=headers) as response:
                await response.read()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a callback is a hint: its failure must not hurt anything
            log.debug("callback to %s failed: %r", url, exc)
