"""The task tracker: one object that takes tasks in and sees each through to exactly one result.

Data flows one way::

    submit -> admission (queue, create at Kling) -> status events (callback or poll)
           -> one completion -> download -> event to subscribers -> mark delivered

The store is the single source of truth: every state change is a conditional
``store.transition`` written before it is acted on. Completion is the transition
``submitted|processing -> succeed|failed``; whoever wins it (callback, poll, another process)
emits the event, everyone else does nothing. Results are downloaded between "Kling said succeed"
(recorded as ``kling_status``/``result_urls``) and that transition, so a crash mid-download
leaves the task ``processing`` and the next start fetches the files again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from base64 import b64encode
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bot.config import Settings
from bot.kling.client import NOT_FOUND_CODES, KlingClient, new_external_task_id
from bot.kling.errors import KlingError, KlingInvalidRequest
from bot.kling.images import PreparedImage
from bot.kling.models import (
    ImageTaskRequest,
    KlingTask,
    TaskKind,
    TaskRequest,
    TaskStatus,
    VideoTaskRequest,
)
from bot.tasks.admission import Admission, QueuePosition, QueueStats, SlotsExceedLimit
from bot.tasks.files import TaskFiles
from bot.tasks.metrics import Metrics
from bot.tasks.models import (
    ACTIVE_STATES,
    AWAITING_DELIVERY,
    EventType,
    Origin,
    TaskEvent,
    TaskRecord,
    TaskState,
)
from bot.tasks.poller import Poller, PollSchedule
from bot.tasks.results import DownloadError, ResultDownloader, kling_origin
from bot.tasks.store import TaskStore
from bot.tasks.webhook import callback_token, callback_url, create_webhook_app

log = logging.getLogger(__name__)

__all__ = [
    "InputsNotStored",
    "QueuePosition",
    "QueueStats",
    "SlotsExceedLimit",
    "Tracker",
    "build_request",
]

RUNNING = (TaskState.SUBMITTED, TaskState.PROCESSING)
CLEANUP_INTERVAL = 3600.0
# After Kling's success, failed downloads (other than "gone" or too big) are tried again until
# max(TASK_MAX_AGE, this) has passed: the task is paid for and its files live 30 days.
DOWNLOAD_GRACE_MIN = 3600.0
_KLING_ENDED = frozenset({TaskStatus.SUCCEED.value, TaskStatus.FAILED.value})
_STATUS_RANK = {"submitted": 0, "processing": 1, "succeed": 2, "failed": 2}

Subscriber = Callable[[TaskEvent], Awaitable[None]]

INTERRUPTED_BEFORE_SUBMIT = (
    "The bot restarted while it was storing this request, before anything reached Kling: "
    "no credits were used. Please run the command again."
)
INPUTS_NOT_STORED = (
    "The bot could not store your images (its disk may be full), so nothing was sent to Kling "
    "and no credits were used. Please try again later, and tell a moderator if it keeps "
    "happening."
)


class InputsNotStored(OSError):
    """``submit`` could not write the task's input images: the task has ended (failed, with
    this message as its reason) and nothing was sent to Kling. str() is for the member."""

    def __init__(self, task_id: int) -> None:
        super().__init__(INPUTS_NOT_STORED)
        self.task_id = task_id
        self.user_message = INPUTS_NOT_STORED


class Tracker:
    def __init__(
        self,
        *,
        settings: Settings,
        store: TaskStore,
        client: KlingClient,
        session: aiohttp.ClientSession,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.client = client
        self.metrics = Metrics()
        self.files = TaskFiles(settings.data_dir)
        self.health_checks: list[Callable[[], tuple[str, bool]]] = []
        self._clock = clock
        self._hook_call_metrics(client)
        self.downloader = ResultDownloader(
            max_bytes=settings.download_max_bytes,
            timeout=settings.download_timeout,
            trusted_origin=kling_origin(settings),
        )
        self.admission = Admission(
            client=client,
            store=store,
            limits={
                TaskKind.IMAGE: settings.kling_image_concurrency,
                TaskKind.VIDEO: settings.kling_video_concurrency,
            },
            request_for=self._request_for,
            submitted=self._on_submitted,
            create_failed=self._on_create_failed,
            clock=clock,
        )
        self.poller = Poller(
            client=client,
            store=store,
            metrics=self.metrics,
            schedule=_poll_schedule(settings),
            concurrency=settings.poll_concurrency,
            max_age=settings.task_max_age,
            settle=self._settle_polled,
            expire=self._expire,
            clock=clock,
        )
        self._subscribers: list[Subscriber] = []
        self._loops: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self._completing: set[int] = set()  # task ids whose completion runs in this process
        self._early: dict[int, KlingTask] = {}  # callbacks that beat the create answer
        self._last_event: dict[int, asyncio.Task[None]] = {}  # keeps each task's events in order

    # --- lifecycle ---------------------------------------------------------------------------

    def subscribe(self, handler: Subscriber) -> None:
        self._subscribers.append(handler)

    async def start(self) -> None:
        """Resume every unfinished task, then start the admission, poll and cleanup loops."""
        now = self._clock()
        for record in await self.store.in_states(RUNNING):
            if record.kling_status not in _KLING_ENDED:  # ended there, results still to fetch
                self.admission.hold(record)
            # It may have ended while we were down, its callback gone unanswered: check at
            # once, not at the stored schedule (one list call covers up to 500 such tasks).
            self.poller.schedule(record.id, record.kind, now)
        # Before the queued ones: a queued task failed below announces itself, only once.
        for record in await self.store.in_states(AWAITING_DELIVERY):
            self._emit(_outcome_event(record), record)
        for record in await self.store.in_states([TaskState.QUEUED]):
            await self._resume_queued(record)
        self._loops = [
            asyncio.create_task(self.admission.run(), name="kling-admission"),
            asyncio.create_task(self.poller.run(), name="kling-poller"),
            asyncio.create_task(self._cleanup_loop(), name="kling-cleanup"),
        ]
        log.info("tracker started: %d waiting, %d running at Kling",
                 sum(len(q) for q in self.admission.queues.values()), len(self.poller))  # fmt: skip

    async def _resume_queued(self, record: TaskRecord) -> None:
        if record.cancel_requested:
            if record.submit_attempts == 0 or not await self._resume_maybe_created(record):
                await self._cancel_queued(record)
            return
        if not record.input_files and record.submit_attempts == 0:
            # Stopped between storing the row and its images (never sent to Kling).
            await self._on_create_failed(record, INTERRUPTED_BEFORE_SUBMIT)
            return
        try:
            self.admission.check_fits(record.kind, record.slots)
        except SlotsExceedLimit as exc:
            # The limit was lowered while it waited: it would head its member's line forever.
            # One whose create may have reached Kling is looked up first (admission refuses it
            # once Kling says it has no such task).
            if record.submit_attempts == 0:
                await self._on_create_failed(record, exc.user_message)
                return
        self.admission.enqueue(record)

    async def _resume_maybe_created(self, record: TaskRecord) -> bool:
        """A cancelled queued task whose create may have reached Kling: look it up. False if
        Kling does not know it (cancel it now); else it runs on, holding its slots, and ends
        ``cancelled`` when Kling finishes it."""
        try:
            found = await self.client.get_task(record.kind, record.external_task_id)
        except KlingError as exc:
            if exc.code in NOT_FOUND_CODES or exc.http_status == 404:
                return False
            log.warning("task %s: cannot tell whether its create reached Kling (%s)",
                        record.id, exc)  # fmt: skip
            self.admission.enqueue(record)  # admission looks it up again before cancelling
            return True
        log.info("task %s: cancelled, but its create reached Kling as %s",
                 record.id, found.task_id)  # fmt: skip
        self.admission.hold(record)
        await self._on_submitted(record, found)
        return True

    async def close(self) -> None:
        """Stop the loops. Nothing is lost: unfinished work resumes at the next start."""
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self._loops = []
        await self.admission.close()
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    # --- taking tasks in ---------------------------------------------------------------------

    async def submit(
        self,
        kind: TaskKind,
        params: dict[str, Any],
        images: Sequence[PreparedImage],
        origin: Origin,
    ) -> TaskRecord:
        """Validate, store and queue a task. Invalid input raises (pydantic ValidationError or
        KlingInvalidRequest, e.g. ``SlotsExceedLimit``) before anything is stored or sent;
        images that cannot be written raise ``InputsNotStored`` (the task has ended failed)."""
        inputs = [(image.label, image.data, image.extension) for image in images]
        return await self._submit(kind, params, inputs, origin)

    async def resubmit(self, task_id: int, origin: Origin) -> TaskRecord:
        """ "Again": a new task with the same parameters and stored input images."""
        record = await self.store.get(task_id)
        if record is None:
            raise LookupError(f"task #{task_id} does not exist")
        try:
            stored = await asyncio.to_thread(self.input_bytes, record)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"the input images of #{task_id} were deleted after "
                f"{self.settings.retention_days:g} days"
            ) from None
        inputs = [
            (label, data, Path(path).suffix.lstrip("."))
            for (label, data), path in zip(stored, record.input_files, strict=True)
        ]
        return await self._submit(record.kind, dict(record.params), inputs, origin)

    async def _submit(
        self,
        kind: TaskKind,
        params: dict[str, Any],
        inputs: Sequence[tuple[str, bytes, str]],
        origin: Origin,
    ) -> TaskRecord:
        params = {name: value for name, value in params.items() if value is not None}
        images = [(label, data) for label, data, _ in inputs]
        request = build_request(kind, params, await asyncio.to_thread(_encode_all, images))
        self.client.flavour.check(request)
        self.admission.check_fits(kind, request.slots)
        external_task_id = new_external_task_id()
        secret = self.settings.webhook_secret
        record = await self.store.create(
            kind=kind,
            provider=self.settings.kling_provider,
            simulated=self.settings.simulated,
            external_task_id=external_task_id,  # in the row before any create: see admission
            params=params,
            input_labels=[label for label, _, _ in inputs],
            slots=request.slots,
            origin=origin,
            callback_token=(
                callback_token(secret.get_secret_value(), external_task_id) if secret else None
            ),
        )
        try:
            input_files = await self.files.save_inputs(record.id, inputs)
        except OSError as exc:
            await self._fail_unstored(record, exc)
            raise InputsNotStored(record.id) from exc
        await self.store.set_inputs(record.id, input_files)
        record.input_files = input_files
        log.info("task %s: queued %s task for user %s (%d slots)",
                 record.id, kind, origin.user_id, request.slots)  # fmt: skip
        self._emit(EventType.STATE, record)
        self.admission.enqueue(record)
        return record

    async def _fail_unstored(self, record: TaskRecord, exc: OSError) -> None:
        """The images could not be written (disk full, say): the task ends now, so it does not
        count against the member's limit, and is announced like any failure."""
        log.error("task %s: its input images could not be stored (%s); failing it", record.id, exc)
        try:
            if await self.store.transition(
                record.id, [TaskState.QUEUED], TaskState.FAILED, failure_reason=INPUTS_NOT_STORED
            ):
                await self._emit_outcome(record.id)
        except Exception:
            # The row stays queued without images: the next start fails it the same way.
            log.exception("task %s: could not record that its images were not stored", record.id)

    async def _request_for(self, record: TaskRecord) -> TaskRequest:
        encoded = await asyncio.to_thread(lambda: _encode_all(self.input_bytes(record)))
        url = None
        if self.settings.public_base_url and record.callback_token:
            url = callback_url(self.settings.public_base_url, record.callback_token)
        return build_request(
            record.kind,
            record.params,
            encoded,
            external_task_id=record.external_task_id,
            callback_url=url,
        )

    def input_bytes(self, task: TaskRecord) -> list[tuple[str, bytes]]:
        return self.files.read_inputs(task.input_files, task.input_labels)

    def result_paths(self, task: TaskRecord) -> list[Path]:
        return [self.files.absolute(path) for path in task.result_files]

    # --- admission's outcomes ----------------------------------------------------------------

    async def _on_submitted(self, record: TaskRecord, task: KlingTask) -> None:
        at = self.poller.first_check_at(self._clock())
        won = await self.store.transition(
            record.id,
            [TaskState.QUEUED],
            TaskState.SUBMITTED,
            kling_task_id=task.task_id,
            kling_status=TaskStatus.SUBMITTED.value,
            next_check_at=at,
            check_count=0,
            not_before=None,
        )
        if not won:
            log.warning("task %s: created at Kling as %s but no longer queued here",
                        record.id, task.task_id)  # fmt: skip
            self.admission.release(record.kind, record.id)
            return
        log.info("task %s: submitted to Kling as %s", record.id, task.task_id)
        self.poller.schedule(record.id, record.kind, at)
        fresh = await self._emit_fresh(record.id, EventType.STATE)
        if fresh is None:
            return
        # Kling may be further along already: a lookup after a restart, or an early callback.
        early = self._early.pop(record.id, None)
        latest = task
        if early is not None and _rank(early.task_status.value) > _rank(task.task_status.value):
            latest = early
        if latest.task_status is not TaskStatus.SUBMITTED:
            confirm = latest is early and self.settings.callback_confirm
            await self._take_status(fresh, latest, confirm=confirm)

    async def _on_create_failed(self, record: TaskRecord, reason: str) -> None:
        early = self._early.get(record.id)
        if early is not None:
            # A callback proved the task exists at Kling (the create's answer was lost): it
            # runs there, so it holds its slots and is followed like any submitted task.
            log.info("task %s: create failed here (%s) but Kling runs it as %s",
                     record.id, reason, early.task_id)  # fmt: skip
            self.admission.hold(record)
            await self._on_submitted(record, early)
            return
        fresh = await self.store.get(record.id)
        if fresh is None:
            return
        if fresh.cancel_requested:
            await self._cancel_queued(fresh)
            return
        if await self.store.transition(
            record.id, [TaskState.QUEUED], TaskState.FAILED, failure_reason=reason
        ):
            log.info("task %s: failed before reaching Kling: %s", record.id, reason)
            await self._emit_outcome(record.id)

    # --- status events: callbacks and polls --------------------------------------------------

    async def _take_status(self, record: TaskRecord, task: KlingTask, *, confirm: bool) -> None:
        """Act on a status from any source for a task that has been submitted."""
        if not task.is_terminal:
            await self._note_progress(record, task)
        elif self._claim(record.id):
            await self._finish(record, task, confirm=confirm)

    async def _settle_polled(self, record: TaskRecord, task: KlingTask) -> bool:
        """The poller's answer for one task; True while it is still pending."""
        if not task.is_terminal:
            await self._note_progress(record, task)
            return True
        if self._claim(record.id):
            # Downloads run beside the poll loop, not in it.
            self._spawn(self._finish(record, task, confirm=False))
            return False
        # Another completion (a callback's) runs: keep checking, in case it is not final.
        return True

    def _claim(self, task_id: int) -> bool:
        """Only one completion per task runs in this process (the store decides across them)."""
        if task_id in self._completing:
            return False
        self._completing.add(task_id)
        return True

    async def _note_progress(self, record: TaskRecord, task: KlingTask) -> None:
        status = task.task_status.value
        if _rank(status) <= _rank(record.kling_status):
            return  # a duplicate, or a stale status arriving late: never move backwards
        if task.task_status is TaskStatus.PROCESSING and record.state is TaskState.SUBMITTED:
            if await self.store.transition(
                record.id, [TaskState.SUBMITTED], TaskState.PROCESSING, kling_status=status
            ):
                await self._emit_fresh(record.id, EventType.STATE)
            return
        await self.store.update(record.id, kling_status=status)

    async def _finish(self, record: TaskRecord, task: KlingTask, *, confirm: bool) -> None:
        """A terminal status (claimed): confirm it if asked, then complete the task."""
        try:
            if confirm:
                try:
                    kling_id = record.kling_task_id or task.task_id
                    task = await self.client.get_task(record.kind, kling_id)
                except KlingError as exc:
                    log.warning("task %s: could not confirm the callback (%s); polling",
                                record.id, exc)  # fmt: skip
                    self.poller.schedule(record.id, record.kind, self._clock())
                    return
                if not task.is_terminal:
                    log.info("task %s: callback said done, Kling says %s",
                             record.id, task.task_status)  # fmt: skip
                    await self._note_progress(record, task)
                    return
            await self._complete(record, task)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("task %s: completion failed; it will be checked again", record.id)
            at = self._clock() + self.poller.schedule_policy.interval(record.check_count)
            self.poller.schedule(record.id, record.kind, at)
        finally:
            self._completing.discard(record.id)

    async def _complete(self, record: TaskRecord, task: KlingTask) -> None:
        self.poller.unschedule(record.id)
        self.admission.release(record.kind, record.id)  # Kling frees the slots when it ends
        fresh = await self.store.get(record.id)
        if fresh is None or fresh.state not in RUNNING:
            return
        outcome = {
            "kling_status": task.task_status.value,
            "credits": task.final_unit_deduction,
        }
        if fresh.cancel_requested:
            if await self.store.transition(record.id, RUNNING, TaskState.CANCELLED, **outcome):
                log.info("task %s: ended at Kling after a cancel; not posted", record.id)
                await self._emit_fresh(record.id, EventType.STATE)
            return
        if task.task_status is TaskStatus.FAILED:
            reason = kling_failure_reason(task)
            if await self.store.transition(
                record.id, RUNNING, TaskState.FAILED, failure_reason=reason, **outcome
            ):
                log.info("task %s: failed at Kling: %s", record.id, task.task_status_msg)
                self._note_run_time(fresh)
                await self._emit_outcome(record.id)
            return
        urls = task.result_urls()
        # Recorded before the download: after a crash the next start knows and fetches again.
        # finished_at marks when Kling's success was first seen: the download deadline's start.
        if fresh.finished_at is None:
            outcome["finished_at"] = fresh.finished_at = self._clock()
        await self.store.update(record.id, result_urls=urls, **outcome)
        started = time.monotonic()
        try:
            paths = await self.downloader.download_all(urls, self.files.result_dir(record.id))
        except DownloadError as exc:
            if not exc.final and not self._download_overdue(fresh):
                await self._retry_download_later(fresh, exc)
                return
            log.warning("task %s: results could not be fetched: %s", record.id, exc)
            if await self.store.transition(
                record.id, RUNNING, TaskState.FAILED, failure_reason=str(exc)
            ):
                await self._emit_outcome(record.id)
            return
        self.metrics.download_seconds.observe(time.monotonic() - started)
        files = [self.files.relative(path) for path in paths]
        if await self.store.transition(record.id, RUNNING, TaskState.SUCCEED, result_files=files):
            log.info("task %s: succeeded, %d files downloaded", record.id, len(files))
            self._note_run_time(fresh)
            await self._emit_outcome(record.id)

    def _download_overdue(self, record: TaskRecord) -> bool:
        grace = max(self.settings.task_max_age, DOWNLOAD_GRACE_MIN)
        return record.finished_at is not None and self._clock() - record.finished_at >= grace

    async def _retry_download_later(self, record: TaskRecord, exc: DownloadError) -> None:
        """Kling succeeded but the files did not come: the task stays running (kling_status
        succeed, result_urls recorded) and the poller's next check, which gets the terminal
        status again, downloads again. A restart resumes it the same way."""
        at = self._clock() + self.poller.schedule_policy.interval(record.check_count)
        self.poller.schedule(record.id, record.kind, at)
        log.warning("task %s: results could not be fetched yet (%s); trying again in %.0f s",
                    record.id, exc, at - self._clock())  # fmt: skip
        await self.store.update(record.id, next_check_at=at, check_count=record.check_count + 1)

    async def _expire(self, record: TaskRecord) -> bool:
        """Fail (or, after a cancel, end) a task Kling has not finished in time. False when a
        completion of it runs here (a callback's download, say): that one decides, and the
        poller keeps checking the task in case it does not end it."""
        if not self._claim(record.id):
            return False
        try:
            await self._expire_claimed(record.id, record.kind)
        finally:
            self._completing.discard(record.id)
        return True

    async def _expire_claimed(self, task_id: int, kind: TaskKind) -> None:
        reason = f"Kling did not finish within {_duration_words(self.settings.task_max_age)}."
        fresh = await self.store.get(task_id)  # the poll's copy may predate a cancel
        if fresh is None or fresh.state not in RUNNING:
            return
        self.poller.unschedule(task_id)
        self.admission.release(kind, task_id)
        to = TaskState.CANCELLED if fresh.cancel_requested else TaskState.FAILED
        if await self.store.transition(task_id, RUNNING, to, failure_reason=reason):
            log.warning("task %s: %s", task_id, reason)
            if to is TaskState.FAILED:
                await self._emit_outcome(task_id)
            else:
                await self._emit_fresh(task_id, EventType.STATE)

    def _note_run_time(self, record: TaskRecord) -> None:
        if record.submitted_at is not None:
            self.admission.record_run_time(record.kind, self._clock() - record.submitted_at)

    # --- the webhook backend -----------------------------------------------------------------

    def webhook_app(self) -> web.Application:
        return create_webhook_app(self)

    @property
    def max_body(self) -> int:
        return self.settings.webhook_max_body

    async def task_for_token(self, token: str) -> TaskRecord | None:
        return await self.store.by_callback_token(token)

    async def accept_callback(self, record: TaskRecord, task: KlingTask) -> bool:
        if record.state is TaskState.QUEUED:
            # The callback beat the create answer: applied once the answer is recorded.
            known = self._early.get(record.id)
            if known is None or _rank(task.task_status.value) > _rank(known.task_status.value):
                self._early[record.id] = task
                return True
            return False
        if record.state not in RUNNING or record.id in self._completing:
            return False  # over, or its end is being handled: nothing newer can come
        if task.is_terminal:
            self._claim(record.id)
            self._spawn(self._finish(record, task, confirm=self.settings.callback_confirm))
            return True
        if _rank(task.task_status.value) <= _rank(record.kling_status):
            return False
        # Callbacks reach us for this task: the safety-net poll can wait its longest interval.
        self.poller.postpone(
            record.id, record.kind, self._clock() + self.poller.schedule_policy.max_interval
        )
        self._spawn(self._note_progress(record, task))
        return True

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
            {kind.value: len(queue) for kind, queue in self.admission.queues.items()},
        )

    # --- members and moderators --------------------------------------------------------------

    async def cancel(self, task_id: int) -> TaskRecord | None:
        """A queued task that never reached Kling ends at once. One that runs at Kling, or
        whose create may have reached it, is marked ``cancel_requested``: it ends
        ``cancelled`` when Kling finishes it (its slots stay held until then), unposted."""
        record = await self.store.get(task_id)
        if record is None:
            return None
        if record.state is TaskState.QUEUED and not self.admission.may_be_at_kling(record):
            await self._cancel_queued(record)
        elif record.is_active and not record.cancel_requested:
            await self._request_cancel(record)
        return await self.store.get(task_id)

    async def _request_cancel(self, record: TaskRecord) -> None:
        # Conditional: a task that ended since it was read is not marked cancelled.
        if not await self.store.update_if_state(record.id, ACTIVE_STATES, cancel_requested=True):
            return
        if record.state is TaskState.QUEUED:
            # Its create may have reached Kling: admission looks it up by external id (and
            # follows it, or cancels it) now, not after the create's backoff.
            log.info("task %s: cancel requested; looking it up at Kling", record.id)
            self.admission.expedite(record.kind, record.id)
        else:
            log.info("task %s: cancel requested while it runs at Kling", record.id)
        await self._emit_fresh(record.id, EventType.STATE)

    async def _cancel_queued(self, record: TaskRecord) -> None:
        # Out of the queue first: admission must not pick it up while the store is written.
        self.admission.remove(record.kind, record.id)
        if await self.store.transition(record.id, [TaskState.QUEUED], TaskState.CANCELLED):
            log.info("task %s: cancelled before it was submitted", record.id)
            await self._emit_fresh(record.id, EventType.STATE)

    async def begin_delivery(self, task_id: int) -> int:
        record = await self.store.get(task_id)
        if record is None:
            raise LookupError(f"task #{task_id} does not exist")
        attempts = record.delivery_attempts + 1
        await self.store.update(task_id, delivery_attempts=attempts)
        return attempts

    async def mark_delivered(self, task_id: int) -> bool:
        won = await self.store.transition(task_id, AWAITING_DELIVERY, TaskState.DELIVERED)
        if won:
            record = await self._emit_fresh(task_id, EventType.STATE)
            if record is not None and record.finished_at and record.delivered_at:
                self.metrics.delivery_seconds.observe(record.delivered_at - record.finished_at)
        return won

    async def mark_undeliverable(self, task_id: int, reason: str) -> bool:
        won = await self.store.transition(
            task_id, AWAITING_DELIVERY, TaskState.UNDELIVERABLE, delivery_error=reason
        )
        if won:
            await self._emit_fresh(task_id, EventType.STATE)
        return won

    def queue_position(self, task_id: int) -> QueuePosition | None:
        for kind in TaskKind:
            position = self.admission.position(kind, task_id)
            if position is not None:
                return position
        return None

    def queue_stats(self) -> dict[TaskKind, QueueStats]:
        now = self._clock()
        return {kind: queue.stats(now) for kind, queue in self.admission.queues.items()}

    # --- files -------------------------------------------------------------------------------

    async def cleanup_files(self) -> int:
        """Delete inputs and results of final tasks older than the retention period; returns
        how many directories went. Each task is handled once: it is marked afterwards."""
        cutoff = self._clock() - self.settings.retention_days * 86400
        old = await self.store.files_due_for_removal(cutoff)
        if not old:
            return 0
        removed = await self.files.cleanup(old)
        await self.store.mark_files_removed(old)
        if removed:
            log.info("retention: removed the files of %d old tasks", removed)
        return removed

    async def _cleanup_loop(self) -> None:
        while True:
            try:
                await self.cleanup_files()
            except Exception:
                log.exception("file cleanup failed; trying again in an hour")
            await asyncio.sleep(CLEANUP_INTERVAL)

    # --- events ------------------------------------------------------------------------------

    async def _emit_fresh(self, task_id: int, event_type: EventType) -> TaskRecord | None:
        record = await self.store.get(task_id)
        if record is not None:
            self._emit(event_type, record)
        return record

    async def _emit_outcome(self, task_id: int) -> None:
        record = await self._emit_fresh(task_id, EventType.STATE)
        if record is not None:
            self._emit(_outcome_event(record), record)

    def _emit(self, event_type: EventType, record: TaskRecord) -> None:
        """Hand an event to every subscriber, in the background, in order per task."""
        previous = self._last_event.get(record.id)
        dispatch = self._spawn(self._dispatch(TaskEvent(event_type, record), previous))
        self._last_event[record.id] = dispatch

        def forget(done: asyncio.Task[Any], task_id: int = record.id) -> None:
            if self._last_event.get(task_id) is done:
                del self._last_event[task_id]

        dispatch.add_done_callback(forget)

    async def _dispatch(self, event: TaskEvent, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            with contextlib.suppress(BaseException):
                await asyncio.shield(previous)
        for handler in list(self._subscribers):
            try:
                await handler(event)
            except Exception:
                log.exception("subscriber failed on %s of task %s", event.type, event.task.id)

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def _hook_call_metrics(self, client: KlingClient) -> None:
        # The client is built before the tracker (and its metrics): chain onto its hook.
        previous = client.on_call
        record = self.metrics.kling_call

        def on_call(label: str, code: int | None) -> None:
            record(label, code)
            if previous is not None:
                previous(label, code)

        client.on_call = on_call


def build_request(
    kind: TaskKind,
    params: dict[str, Any],
    images: Sequence[tuple[str, str]],
    *,
    external_task_id: str | None = None,
    callback_url: str | None = None,
) -> TaskRequest:
    """The request model from stored params and ``(label, base64)`` images; validates both."""
    extra: dict[str, Any] = {"external_task_id": external_task_id, "callback_url": callback_url}
    if kind is TaskKind.IMAGE:
        by_label = dict(images)
        unknown = set(by_label) - {"scene", "style"} - {f"subject{i}" for i in range(1, 5)}
        if unknown:
            raise KlingInvalidRequest(f"unknown image labels for an image task: {sorted(unknown)}")
        subjects = [data for label, data in images if label.startswith("subject")]
        return ImageTaskRequest(
            subject_images=subjects,
            scene_image=by_label.get("scene"),
            style_image=by_label.get("style"),
            **params,
            **extra,
        )
    return VideoTaskRequest(images=[data for _, data in images], **params, **extra)


def kling_failure_reason(task: KlingTask) -> str:
    if task.task_status_msg:
        return f"Kling could not make it: {task.task_status_msg}"
    return "Kling reported the task as failed without a reason."


def _poll_schedule(settings: Settings) -> PollSchedule:
    if settings.public_base_url:
        # Callbacks do the work; polls are only the safety net, so they start late and stay rare.
        ceiling = settings.poll_interval_with_callbacks
        first = min(ceiling, max(settings.poll_first_delay, ceiling / 2))
    else:
        ceiling, first = settings.poll_max_interval, settings.poll_first_delay
    return PollSchedule(first_delay=first, max_interval=ceiling, batch_window=min(1.0, first))


def _outcome_event(record: TaskRecord) -> EventType:
    return EventType.COMPLETED if record.state is TaskState.SUCCEED else EventType.FAILED


def _duration_words(seconds: float) -> str:
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:g} hours"
    if seconds >= 120:
        return f"{round(seconds / 60)} minutes"
    return f"{seconds:g} seconds"


def _rank(status: str | None) -> int:
    return _STATUS_RANK.get(status or "", -1)


def _b64(data: bytes) -> str:
    return b64encode(data).decode("ascii")


def _encode_all(images: Sequence[tuple[str, bytes]]) -> list[tuple[str, str]]:
    """``(label, base64)`` for every image: CPU work for a thread, not the event loop."""
    return [(label, _b64(data)) for label, data in images]
