"""Settling a task's status at Kling, whoever brought it: a callback, a poll, a create's answer
or a lookup.

A status that is not final moves the task forward (``submitted -> processing``) and never back.
A final one is acted on by one worker only: it claims the task for "complete" in the store
(``TaskStore.claim``), confirms the status with Kling if asked (a callback is only trusted as
far as its URL), and completes it: a failure is recorded; a success is recorded as Kling's word
(``kling_status``, ``result_urls``: its slots are free from then on), the files are downloaded,
and only then does the task become ``succeed``. A crash mid-download leaves it ``processing``
with its claim lapsing, and the next check fetches the files again. Every end is a conditional
``transition`` written before it is announced, so whoever loses a race does nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from bot.config import Settings
from bot.kling.client import KlingClient
from bot.kling.errors import KlingError
from bot.kling.models import KlingTask, TaskStatus
from bot.tasks import failures
from bot.tasks.claims import Claims
from bot.tasks.events import EventBus
from bot.tasks.failures import Failure
from bot.tasks.files import TaskFiles
from bot.tasks.metrics import Metrics
from bot.tasks.models import ClaimPurpose, EventType, TaskRecord, TaskState
from bot.tasks.queue_view import RunTimes
from bot.tasks.results import DownloadError, ResultDownloader
from bot.tasks.schedule import PollSchedule
from bot.tasks.statuses import EarlyStatuses, is_news, rank
from bot.tasks.store import TaskStore

log = logging.getLogger(__name__)

RUNNING = (TaskState.SUBMITTED, TaskState.PROCESSING)
# After Kling's success, failed downloads (other than "gone" or too big) are tried again until
# max(TASK_MAX_AGE, this) has passed: the task is paid for and its files live 30 days.
DOWNLOAD_GRACE_MIN = 3600.0


@dataclass(frozen=True, slots=True)
class Completion:
    """A held "complete" claim: the token it is held under and the task as claimed."""

    token: str
    record: TaskRecord


@dataclass(frozen=True, slots=True)
class Wakeups:
    """The loops to wake when a settlement changes what they wait for."""

    admission: asyncio.Event  # slots were freed
    poller: asyncio.Event  # a check became due sooner


def kling_failure(task: KlingTask) -> Failure:
    if task.task_status_msg:
        return Failure(failures.KLING_FAILED, {"message": task.task_status_msg})
    return Failure(failures.KLING_FAILED_SILENTLY)


class Settler:
    def __init__(
        self,
        *,
        store: TaskStore,
        client: KlingClient,
        claims: Claims,
        bus: EventBus,
        files: TaskFiles,
        downloader: ResultDownloader,
        metrics: Metrics,
        run_times: RunTimes,
        settings: Settings,
        schedule: PollSchedule,
        early: EarlyStatuses,
        wake: Wakeups,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._client = client
        self._claims = claims
        self._bus = bus
        self._files = files
        self.downloader = downloader
        self._metrics = metrics
        self._run_times = run_times
        self._settings = settings
        self._schedule = schedule
        self._early = early
        self._wake = wake
        self._clock = clock

    # --- entry points ------------------------------------------------------------------------

    async def created(self, record: TaskRecord, task: KlingTask) -> None:
        """Kling has the task (a create's answer, a lookup, a callback's proof): it runs."""
        at = self._clock() + self._schedule.first_delay
        won = await self._store.transition(
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
            return
        log.info("task %s: submitted to Kling as %s", record.id, task.task_id)
        self._wake.poller.set()
        fresh = await self._bus.emit_fresh(record.id, EventType.STATE)
        if fresh is None:
            return
        # Kling may be further along already: a lookup after a restart, or an early callback.
        early = self._early.take(record.id)
        latest = task
        if early is not None and is_news(early, task.task_status.value):
            latest = early
        if latest.task_status is not TaskStatus.SUBMITTED:
            confirm = latest is early and self._settings.callback_confirm
            await self.settle(fresh, latest, confirm=confirm)

    async def settle(self, record: TaskRecord, task: KlingTask, *, confirm: bool) -> None:
        """Act on a status for a running task, here and now."""
        if not task.is_terminal:
            await self.progress(record, task)
            return
        completion = await self.claim(record)
        if completion is not None:
            await self.finish(completion, task, confirm=confirm)

    async def progress(self, record: TaskRecord, task: KlingTask) -> None:
        """A status that is not final: forward only (a duplicate or a stale one is dropped)."""
        status = task.task_status.value
        if rank(status) <= rank(record.kling_status):
            return
        if task.task_status is TaskStatus.PROCESSING and record.state is TaskState.SUBMITTED:
            if await self._store.transition(
                record.id, [TaskState.SUBMITTED], TaskState.PROCESSING, kling_status=status
            ):
                await self._bus.emit_fresh(record.id, EventType.STATE)
            return
        await self._store.update_if_state(record.id, RUNNING, kling_status=status)

    async def claim(self, record: TaskRecord) -> Completion | None:
        """Claim the task's completion; None while another worker holds it (or it ended)."""
        token = self._claims.token()
        fresh = await self._claims.take(record.id, ClaimPurpose.COMPLETE, token, states=RUNNING)
        return None if fresh is None else Completion(token, fresh)

    async def finish(self, completion: Completion, task: KlingTask, *, confirm: bool) -> None:
        """A final status, claimed: confirm it if asked, then complete the task. The claim is
        given back at the end (a transition out of running ended it already)."""
        record = completion.record
        try:
            async with self._claims.kept(record.id, completion.token):
                if confirm:
                    confirmed = await self._confirm(record, task)
                    if confirmed is None:
                        return
                    task = confirmed
                await self._complete(record, task)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("task %s: completion failed; it will be checked again", record.id)
            await self._check_again(record, self._schedule.interval(record.check_count))
        finally:
            await self._claims.release(record.id, completion.token)
            self._wake.poller.set()  # a check it asked for may be due now that it let go

    async def expire(self, record: TaskRecord) -> bool:
        """Fail (or, after a cancel, end) a task Kling has not finished in time. False when
        another worker completes it (a callback's download, say): that one decides."""
        completion = await self.claim(record)
        if completion is None:
            return False
        fresh = completion.record  # the poll's copy may predate a cancel
        try:
            to = TaskState.CANCELLED if fresh.cancel_requested else TaskState.FAILED
            failure = Failure(failures.KLING_TIMEOUT, {"seconds": self._settings.task_max_age})
            if await self._store.transition(fresh.id, RUNNING, to, **failure.as_failure()):
                log.warning("task %s: %s", fresh.id, failure)
                self._wake.admission.set()
                if to is TaskState.FAILED:
                    await self._bus.emit_outcome(fresh.id)
                else:
                    await self._bus.emit_fresh(fresh.id, EventType.STATE)
        finally:
            await self._claims.release(fresh.id, completion.token)
        return True

    # --- completing --------------------------------------------------------------------------

    async def _confirm(self, record: TaskRecord, task: KlingTask) -> KlingTask | None:
        """Kling's own word on a callback's final status; None if it is not final after all."""
        try:
            confirmed = await self._client.get_task(
                record.kind, record.kling_task_id or task.task_id
            )
        except KlingError as exc:
            log.warning("task %s: could not confirm the callback (%s); polling", record.id, exc)
            await self._check_again(record, 0.0)
            return None
        if not confirmed.is_terminal:
            log.info("task %s: callback said done, Kling says %s",
                     record.id, confirmed.task_status)  # fmt: skip
            await self.progress(record, confirmed)
            return None
        return confirmed

    async def _complete(self, record: TaskRecord, task: KlingTask) -> None:
        fresh = await self._store.get(record.id)
        if fresh is None or fresh.state not in RUNNING:
            return
        outcome: dict[str, object] = {
            "kling_status": task.task_status.value,
            "credits": task.final_unit_deduction,
        }
        if fresh.cancel_requested:
            if await self._store.transition(record.id, RUNNING, TaskState.CANCELLED, **outcome):
                log.info("task %s: ended at Kling after a cancel; not posted", record.id)
                self._wake.admission.set()
                await self._bus.emit_fresh(record.id, EventType.STATE)
            return
        if task.task_status is TaskStatus.FAILED:
            failure = kling_failure(task)
            if await self._store.transition(
                record.id, RUNNING, TaskState.FAILED, **failure.as_failure(), **outcome
            ):
                log.info("task %s: failed at Kling: %s", record.id, task.task_status_msg)
                self._wake.admission.set()
                self._note_run_time(fresh)
                await self._bus.emit_outcome(record.id)
            return
        urls = task.result_urls()
        # Recorded before the download: after a crash the next check knows and fetches again.
        # finished_at marks when Kling's success was first seen: the download deadline's start.
        if fresh.finished_at is None:
            outcome["finished_at"] = fresh.finished_at = self._clock()
        await self._store.update(record.id, result_urls=urls, **outcome)
        self._wake.admission.set()  # Kling freed the slots when it ended
        await self._download(fresh, urls)

    async def _download(self, record: TaskRecord, urls: list[str]) -> None:
        started = time.monotonic()
        try:
            paths = await self.downloader.download_all(urls, self._files.result_dir(record.id))
        except DownloadError as exc:
            if not exc.final and not self._download_overdue(record):
                # The task stays running (kling_status succeed, result_urls recorded): the next
                # check gets the final status again and downloads again; a restart too.
                log.warning("task %s: results could not be fetched yet (%s); trying again",
                            record.id, exc)  # fmt: skip
                await self._check_again(record, self._schedule.interval(record.check_count))
                return
            log.warning("task %s: results could not be fetched: %s", record.id, exc)
            if await self._store.transition(
                record.id, RUNNING, TaskState.FAILED, **exc.failure.as_failure()
            ):
                await self._bus.emit_outcome(record.id)
            return
        self._metrics.download_seconds.observe(time.monotonic() - started)
        files = [self._files.relative(path) for path in paths]
        if await self._store.transition(record.id, RUNNING, TaskState.SUCCEED, result_files=files):
            log.info("task %s: succeeded, %d files downloaded", record.id, len(files))
            self._note_run_time(record)
            await self._bus.emit_outcome(record.id)

    def _download_overdue(self, record: TaskRecord) -> bool:
        grace = max(self._settings.task_max_age, DOWNLOAD_GRACE_MIN)
        return record.finished_at is not None and self._clock() - record.finished_at >= grace

    async def _check_again(self, record: TaskRecord, delay: float) -> None:
        """Have the poller ask Kling about the task again in ``delay`` seconds (woken when the
        claim is given back: the poller leaves a claimed task alone)."""
        try:
            await self._store.update_if_state(
                record.id,
                RUNNING,
                next_check_at=self._clock() + delay,
                check_count=record.check_count + (1 if delay else 0),
            )
        except Exception as exc:  # its next check stays where it was: it comes anyway
            log.warning("task %s: could not store its next check (%r)", record.id, exc)

    def _note_run_time(self, record: TaskRecord) -> None:
        if record.submitted_at is not None:
            self._run_times.record(record.kind, self._clock() - record.submitted_at)
