"""The task core: takes tasks in and sees each through to exactly one result.

``TaskCore`` is the only object the Discord side talks to. It builds the parts, starts and stops
their loops, and is their public face; each part does one job over the store and the client,
and none calls back up into another. A task's way through them::

    intake (validate, store, save images) -> admission (store.admit_next) -> creates (Kling)
      -> settle (callbacks / poller / the create's answer: progress, claim, download, end)
      -> events (subscribers: status messages, delivery) -> delivery_book (delivered)

The store is the single source of truth and the place of every piece of coordination: the
admission order and slots, each task's next poll, and the claims on a create, a completion and
a delivery (``claims``), so several processes can share the work. What is kept in memory is a
cache rebuilt from the store (``resume``): queue positions, run times, early callbacks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from aiohttp import web

from bot.config import Settings
from bot.kling.client import KlingClient
from bot.kling.images import PreparedImage
from bot.kling.models import KlingTask, TaskKind
from bot.kling.params import TaskParams
from bot.tasks.admission import Admission
from bot.tasks.callbacks import Callbacks
from bot.tasks.cancel import Cancel
from bot.tasks.claims import Claims, new_process_id
from bot.tasks.creates import AdmissionBook, Creator
from bot.tasks.delivery_book import DeliveryBook
from bot.tasks.events import EventBus, Jobs, Subscriber
from bot.tasks.files import TaskFiles
from bot.tasks.inputs import TaskInputs
from bot.tasks.intake import Intake
from bot.tasks.limits import limits_from
from bot.tasks.metrics import Metrics
from bot.tasks.models import Origin, TaskRecord
from bot.tasks.poller import Poller
from bot.tasks.queue_view import QueuePosition, QueueStats, QueueView, RunTimes
from bot.tasks.results import ResultDownloader, kling_origin
from bot.tasks.resume import resume
from bot.tasks.retention import Retention
from bot.tasks.schedule import poll_schedule
from bot.tasks.settle import Settler, Wakeups
from bot.tasks.statuses import EarlyStatuses
from bot.tasks.store import (
    GuildSettingsStore,
    InputStore,
    Signals,
    TaskReader,
    TaskStore,
    input_store_for,
)
from bot.tasks.store.signals import QUEUE, RESYNC, LocalSignals
from bot.tasks.webhook import create_webhook_app

log = logging.getLogger(__name__)


class TaskCore:
    def __init__(
        self,
        *,
        settings: Settings,
        store: TaskStore,
        client: KlingClient,
        guild_settings: GuildSettingsStore | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
        claim_lease: float | None = None,
        role: str = "run",
        signals: Signals | None = None,
        inputs: InputStore | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.tasks: TaskReader = store  # what the Discord side reads
        # Without its own: the task store keeps server settings too (SQLite's does, for now).
        self.guild_settings: GuildSettingsStore = guild_settings or store  # type: ignore[assignment]
        self.client = client
        # The composition root has the client report its calls here (KlingClient on_call).
        self.metrics = metrics or Metrics()
        self.files = TaskFiles(settings.data_dir)
        # Input images: in the database (the task store's input store unless given) or files.
        self.inputs = TaskInputs(
            files=self.files,
            store=inputs or input_store_for(store),
            storage=settings.input_storage,
        )
        self.health_checks: list[Callable[[], tuple[str, bool]]] = []
        self._clock = clock
        self._loops: list[asyncio.Task[None]] = []
        self.jobs = Jobs()
        self.bus = EventBus(store, self.jobs)
        # Claims last LEASE_TIMEOUT past this process's last heartbeat (claim_lease: tests).
        self.claims = Claims(
            store,
            process_id=new_process_id(),
            lease=settings.lease_timeout if claim_lease is None else claim_lease,
            role=role,
            clock=clock,
        )
        self._limits = limits = limits_from(settings)
        self.run_times = RunTimes()
        # What other processes on the database tell this one (nothing, on SQLite).
        self.signals: Signals = signals or LocalSignals()
        self.signals.subscribe(self._heard)
        self.queue = QueueView(store, limits, self.run_times, self.signals, clock)
        self.early = EarlyStatuses()
        early = self.early
        wake = Wakeups(admission=asyncio.Event(), poller=asyncio.Event())
        schedule = poll_schedule(settings)
        self.settler = Settler(
            store=store,
            client=client,
            claims=self.claims,
            bus=self.bus,
            files=self.files,
            downloader=ResultDownloader(
                max_bytes=settings.download_max_bytes,
                timeout=settings.download_timeout,
                trusted_origin=kling_origin(settings),
            ),
            metrics=self.metrics,
            run_times=self.run_times,
            settings=settings,
            schedule=schedule,
            early=early,
            wake=wake,
            clock=clock,
        )
        book = AdmissionBook()
        self.creator = creator = Creator(
            store=store,
            client=client,
            claims=self.claims,
            settler=self.settler,
            bus=self.bus,
            early=early,
            inputs=self.inputs,
            settings=settings,
            limits=limits,
            book=book,
            wake=wake.admission,
            clock=clock,
        )
        self.admission = Admission(
            store=store,
            claims=self.claims,
            creator=creator,
            book=book,
            limits=limits,
            queue=self.queue,
            wake=wake.admission,
            clock=clock,
        )
        self.poller = Poller(
            store=store,
            client=client,
            settler=self.settler,
            claims=self.claims,
            jobs=self.jobs,
            metrics=self.metrics,
            schedule=schedule,
            concurrency=settings.poll_concurrency,
            max_age=settings.task_max_age,
            wake=wake.poller,
            clock=clock,
        )
        self.callbacks = Callbacks(
            store=store,
            settler=self.settler,
            early=early,
            jobs=self.jobs,
            schedule=schedule,
            confirm=settings.callback_confirm,
            clock=clock,
        )
        self.intake = Intake(
            store=store,
            inputs=self.inputs,
            settings=settings,
            flavour=client.flavour,
            limits=limits,
            bus=self.bus,
        )
        self._cancel = Cancel(store=store, bus=self.bus, claims=self.claims)
        self.deliveries = DeliveryBook(
            store=store, bus=self.bus, claims=self.claims, metrics=self.metrics
        )
        self.retention = Retention(
            store=store,
            files=self.files,
            inputs=self.inputs,
            days=settings.retention_days,
            clock=clock,
        )
        self._wake_admission = wake.admission

    # --- lifecycle ---------------------------------------------------------------------------

    def subscribe(self, handler: Subscriber) -> None:
        self.bus.subscribe(handler)

    def _heard(self, topic: str, key: str) -> None:
        """Another process changed the queue: positions move, and it may be this one's turn."""
        if topic in (QUEUE, RESYNC):
            self.queue.mark_stale()
            self._wake_admission.set()

    async def start(self) -> None:
        """Register this process and start its heartbeat (which keeps its claims alive),
        resume every unfinished task, then start the admission, poll and cleanup loops."""
        await self.claims.start_heartbeat()
        await resume(
            store=self.store,
            bus=self.bus,
            admission=self.admission,
            limits=self._limits,
            now=self._clock(),
        )
        await self.queue.refresh()
        self._loops = [
            asyncio.create_task(self.admission.run(), name="kling-admission"),
            asyncio.create_task(self.poller.run(), name="kling-poller"),
            asyncio.create_task(self.retention.run(), name="kling-cleanup"),
        ]

    async def close(self) -> None:
        """Stop the loops, then the heartbeat, giving this process's claims back. Nothing is
        lost: unfinished work resumes at the next start, here or in another process."""
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self._loops = []
        await self.admission.close()
        await self.deliveries.close()
        await self.jobs.close()
        await self.claims.stop_heartbeat()

    # --- members and moderators --------------------------------------------------------------

    async def submit(
        self,
        kind: TaskKind,
        params: TaskParams,
        images: Sequence[PreparedImage],
        origin: Origin,
    ) -> TaskRecord:
        """Validate, store and queue a task. Invalid input raises (pydantic ValidationError or
        KlingInvalidRequest, e.g. ``SlotsExceedLimit``) before anything is stored or sent;
        images that cannot be written raise ``InputsNotStored`` (the task has ended failed)."""
        return await self._queued(await self.intake.submit(kind, params, images, origin))

    async def resubmit(self, task_id: int, origin: Origin) -> TaskRecord:
        """ "Again": a new task with the same parameters and stored input images."""
        return await self._queued(await self.intake.resubmit(task_id, origin))

    async def _queued(self, record: TaskRecord) -> TaskRecord:
        await self._refresh_queue(record.kind)
        self._wake_admission.set()
        return record

    async def _refresh_queue(self, kind: TaskKind) -> None:
        """The positions members are shown; a failure only leaves them stale until admission's
        next step refreshes them (the task itself is stored)."""
        try:
            await self.queue.changed(kind)
        except Exception as exc:
            log.warning("queue positions not refreshed (%r); admission refreshes them", exc)

    async def cancel(self, task_id: int) -> TaskRecord | None:
        """A queued task that never reached Kling ends at once. One that runs at Kling, or
        whose create may have reached it, is marked ``cancel_requested``: it ends
        ``cancelled`` when Kling finishes it (its slots stay held until then), unposted."""
        record, look_up = await self._cancel.cancel(task_id)
        if look_up:
            self.admission.expedite(task_id)
        if record is not None:
            await self._refresh_queue(record.kind)
        return record

    def queue_position(self, task_id: int) -> QueuePosition | None:
        return self.queue.position(task_id)

    def queue_stats(self) -> dict[TaskKind, QueueStats]:
        return self.queue.stats()

    async def set_status_message(self, task_id: int, message_id: int) -> None:
        """The member's live status message: any process may edit it from now on."""
        await self.store.update(task_id, message_id=message_id)

    async def begin_delivery(self, task_id: int) -> int:
        return await self.deliveries.begin_delivery(task_id)

    async def set_posted_message(self, task_id: int, message_id: int) -> None:
        await self.deliveries.set_posted_message(task_id, message_id)

    async def mark_delivered(self, task_id: int) -> bool:
        return await self.deliveries.mark_delivered(task_id)

    async def mark_undeliverable(
        self, task_id: int, code: str, params: Mapping[str, str | int | float] | None = None
    ) -> bool:
        return await self.deliveries.mark_undeliverable(task_id, code, params)

    async def input_bytes(self, task: TaskRecord) -> list[tuple[str, bytes]]:
        """The task's stored input images; FileNotFoundError once retention removed them."""
        return await self.inputs.read(task)

    def result_paths(self, task: TaskRecord) -> list[Path]:
        return [self.files.absolute(path) for path in task.result_files]

    # --- the listener's backend (bot.tasks.webhook.WebhookBackend) ----------------------------

    def webhook_app(self) -> web.Application:
        return create_webhook_app(self)

    @property
    def max_body(self) -> int:
        return self.settings.webhook_max_body

    async def task_for_token(self, token: str) -> TaskRecord | None:
        return await self.callbacks.task_for_token(token)

    async def accept_callback(self, record: TaskRecord, task: KlingTask) -> bool:
        return await self.callbacks.accept(record, task)

    async def health(self) -> dict[str, bool]:
        try:
            checks = {"store": await self.store.ping()}
        except Exception:
            log.exception("store ping failed")
            checks = {"store": False}
        for index, check in enumerate(self.health_checks):
            try:
                name, ok = check()
            except Exception:
                log.exception("health check %d failed", index)
                name, ok = f"check{index}", False
            checks[name] = bool(ok)
        return checks

    async def metrics_text(self) -> str:
        counts = await self.store.counts_by_state()
        return self.metrics.render(
            {state.value: count for state, count in counts.items()},
            {kind.value: stats.queued for kind, stats in self.queue.stats().items()},
        )
