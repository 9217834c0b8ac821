"""The task core over loopback against the real simulator, with its own stores, session and
client, recording every event: the harness of the task-core tests.

``Harness`` (open/close/kill/submit/wait helpers), ``harness`` (an async context manager),
``callback_settings`` (settings with a public URL and a webhook secret, so callbacks arrive),
``subject`` / ``origin`` (a prepared input image and a request origin), ``SECRET``, ``WAIT``.
The core's claims last ``CLAIM_LEASE`` past its last heartbeat here (LEASE_TIMEOUT, 30 s, in the
bot): a restart after ``kill`` takes over the killed core's claims that soon after the kill.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import unused_port

from bot.config import Settings
from bot.kling.client import KlingClient
from bot.kling.images import PreparedImage
from bot.kling.models import TaskKind
from bot.kling.params import ImageParams
from bot.tasks.core import TaskCore
from bot.tasks.metrics import Metrics
from bot.tasks.models import EventType, Origin, TaskEvent, TaskRecord, TaskState
from bot.tasks.store import Stores, TaskStore, open_store
from bot.tasks.webhook import start_listener
from kling_sim.simulator import KlingSimulator
from testing.images import make_png
from testing.settings import settings_for

WAIT = 10.0  # generous upper bound; every wait returns as soon as its condition holds
SECRET = "test-webhook-secret-0123456789abcdef"
CLAIM_LEASE = 1.5  # seconds


def subject(label: str = "subject1") -> PreparedImage:
    return PreparedImage(
        label=label, data=make_png(), format="png", width=400, height=400, changes=()
    )


def origin(user_id: int = 1) -> Origin:
    return Origin(channel_id=10, user_id=user_id, guild_id=100)


class Harness:
    """A task core with its own stores, session and client, recording every event."""

    def __init__(
        self, settings: Settings, *, deliver: bool = True, claim_lease: float = CLAIM_LEASE
    ) -> None:
        self.settings = settings
        self.deliver = deliver
        self.claim_lease = claim_lease
        self.events: list[TaskEvent] = []
        self._changed = asyncio.Event()
        self.runner: web.AppRunner | None = None

    async def open(self, *, start: bool = True) -> Harness:
        self.session = aiohttp.ClientSession()
        self.stores: Stores = open_store(self.settings.database_url)
        await self.stores.open()
        self.store: TaskStore = self.stores.tasks
        metrics = Metrics()
        self.client = KlingClient.from_settings(
            self.settings, self.session, base_delay=0.05, on_call=metrics.kling_call
        )
        self.core = TaskCore(
            settings=self.settings,
            store=self.store,
            guild_settings=self.stores.guild_settings,
            client=self.client,
            metrics=metrics,
            claim_lease=self.claim_lease,
        )
        self.core.subscribe(self.on_event)
        if self.settings.public_base_url:
            port = int(self.settings.public_base_url.rsplit(":", 1)[1])
            self.runner = await start_listener(self.core.webhook_app(), "127.0.0.1", port)
        if start:
            await self.core.start()
        return self

    async def on_event(self, event: TaskEvent) -> None:
        self.events.append(event)
        self._changed.set()
        if self.deliver and event.type in (EventType.COMPLETED, EventType.FAILED):
            await self.core.mark_delivered(event.task.id)

    def outcomes(self, event_type: EventType) -> list[int]:
        return [e.task.id for e in self.events if e.type is event_type]

    async def wait_until(self, condition: Callable[[], Any], limit: float = WAIT) -> None:
        async def loop() -> None:
            while not condition():
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), 0.05)

        await asyncio.wait_for(loop(), limit)

    async def wait_for_state(
        self, task_id: int, states: set[TaskState], limit: float = WAIT
    ) -> TaskRecord:
        deadline = time.monotonic() + limit
        while True:
            record = await self.store.get(task_id)
            if record is not None and record.state in states:
                return record
            if time.monotonic() > deadline:
                raise AssertionError(f"task {task_id} stuck in {record and record.state}")
            await asyncio.sleep(0.02)

    async def slots_used(self, kind: TaskKind = TaskKind.IMAGE) -> int:
        """Kling slots the store counts as held now (running tasks, creates under way)."""
        return await self.store.slots_in_use(kind, time.time())

    async def submit(self, user_id: int = 1, **params: Any) -> TaskRecord:
        params.setdefault("prompt", "a cat")
        return await self.core.submit(
            TaskKind.IMAGE, ImageParams(**params), [subject()], origin(user_id)
        )

    async def close(self) -> None:
        await self.core.close()
        if self.runner is not None:
            await self.runner.cleanup()
        await self.stores.close()
        await self.session.close()

    async def kill(self) -> None:
        """Stop as a SIGKILL would: no clean shutdown, just every piece of work gone (the
        store stays open for the test to read; its claims lapse after the lease)."""
        core = self.core
        loops = [*core._loops, *core.jobs.running, *core.admission.creates.running]
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        await core.deliveries.close()
        await core.claims.stop_heartbeat(give_back=False)  # its claims lapse, as after SIGKILL
        if self.runner is not None:
            await self.runner.cleanup()
        await self.session.close()


@contextlib.asynccontextmanager
async def harness(settings: Settings, **kw: Any) -> AsyncIterator[Harness]:
    h = await Harness(settings, **kw).open()
    try:
        yield h
    finally:
        await h.close()


def callback_settings(sim: KlingSimulator, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "public_base_url": f"http://127.0.0.1:{unused_port()}",
        "webhook_secret": SECRET,
        # The poller still runs, but its first check is 30 s away: only callbacks act here.
        "poll_interval_with_callbacks": 60.0,
    }
    values.update(overrides)
    return settings_for(sim, **values)
