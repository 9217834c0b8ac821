"""One admission attempt: create a claimed task at Kling (or look it up first), and its outcome.

The task arrives claimed for "admit" (by ``admit_next``, or held for a lookup). Its create is
sent only after ``submit_attempts`` has been raised in the store, so a crash mid-create leaves a
task that the next try looks up instead of creating blind. The outcomes: Kling has it (settled
as created), Kling refused it or surely never got it (it ends, nothing charged), or it is tried
again later: back in its member's line with a backoff, or held (claim kept, slots counted) for a
lookup while a create may have reached Kling. What this process remembers of the tries is the
``AdmissionBook``, shared with the admission loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bot.config import Settings
from bot.kling.client import NOT_FOUND_CODES, KlingClient
from bot.kling.errors import KlingConcurrencyLimit, KlingError
from bot.kling.models import KlingTask, TaskKind
from bot.tasks import failures
from bot.tasks.cancel import cancel_queued
from bot.tasks.claims import Claims
from bot.tasks.events import EventBus
from bot.tasks.failures import Failure
from bot.tasks.inputs import TaskInputs
from bot.tasks.limits import Limits, SlotsExceedLimit, check_fits
from bot.tasks.models import ClaimPurpose, TaskRecord, TaskState
from bot.tasks.requests import stored_request
from bot.tasks.settle import Settler
from bot.tasks.statuses import EarlyStatuses
from bot.tasks.store import TaskStore

log = logging.getLogger(__name__)

MAX_CREATE_FAILURES = 4  # retryable create errors, after the client's own retries
MAX_BACKOFF = 60.0
STORING_RETRY = 0.2  # seconds before a task whose images are being stored is looked at again


@dataclass(slots=True)
class Attempts:
    """What this process knows of one task's tries (lost at a restart, like a backoff's
    count: the next process starts counting again)."""

    token: str  # the "admit" claim it is held under
    maybe_created: bool  # an earlier create may have reached Kling: look it up first
    busy_count: int = 0  # Kling said 1303 (no free slot) this many times
    failures: int = 0  # other retryable create failures
    lookup_failures: int = 0  # lookups in a row that got no answer from Kling
    again_at: float | None = None  # held (its claim kept) until its next try: a lookup, mostly


@dataclass(slots=True)
class AdmissionBook:
    """Admission's memory of its own work: a cache, never the truth (that is the store)."""

    attempts: dict[int, Attempts] = field(default_factory=dict)
    wakeups: list[float] = field(default_factory=list)  # backoffs ending: the loop wakes then
    # After a 1303 Kling's real limit is below ours (other keys share the account): admit no
    # more than the slots in use until one frees, or until the bounced task's backoff ends.
    caps: dict[TaskKind, tuple[int, float]] = field(default_factory=dict)


class Creator:
    def __init__(
        self,
        *,
        store: TaskStore,
        client: KlingClient,
        claims: Claims,
        settler: Settler,
        bus: EventBus,
        early: EarlyStatuses,
        inputs: TaskInputs,
        settings: Settings,
        limits: Limits,
        book: AdmissionBook,
        wake: asyncio.Event,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._client = client
        self._claims = claims
        self._settler = settler
        self._bus = bus
        self._early = early
        self._inputs = inputs
        self._settings = settings
        self._limits = limits
        self._book = book
        self._wake = wake
        self._clock = clock

    async def attempt(self, task_id: int, attempts: Attempts) -> None:
        """One try at creating (or looking up) a task held under ``attempts.token``."""
        try:
            async with self._claims.kept(task_id, attempts.token):
                await self._attempt_once(task_id, attempts)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._attempt_failed(task_id, attempts, exc)
        finally:
            self._wake.set()

    async def _attempt_once(self, task_id: int, attempts: Attempts) -> None:
        # Re-taking the claim renews it and reads the task fresh.
        record = await self._claims.take(
            task_id, ClaimPurpose.ADMIT, attempts.token, states=[TaskState.QUEUED]
        )
        if record is None:  # it ended, or another process took it over
            self._book.attempts.pop(task_id, None)
            return
        if attempts.maybe_created:
            # Kling may run it: look it up before anything else. Found, it is followed (a
            # cancelled one too: it holds its slots until it ends, cancelled). No answer
            # raises, and ``_attempt_failed`` asks again later.
            found = await self._look_up(record, attempts)
            if found is not None:
                await self._created(record, found)
                return
        # From here on Kling has no such task: ending it costs the member nothing.
        if record.cancel_requested:
            await self._end_unsent(record, None)
            return
        if not record.input_files and record.submit_attempts == 0:
            await self._not_stored_yet(record, attempts)
            return
        try:
            # Checked at submit; a task whose create may have reached Kling is resumed even
            # when the limit was lowered since, so it is checked again once Kling disowned it.
            check_fits(self._limits, record.kind, record.slots)
        except SlotsExceedLimit as exc:
            await self._end_unsent(record, exc.failure)
            return
        try:
            request = await stored_request(record, self._inputs, self._settings)
        except (OSError, ValueError) as exc:
            log.warning("task %s: cannot rebuild the request: %s", record.id, exc)
            code = failures.INPUTS_UNREADABLE if isinstance(exc, OSError) else None
            await self._end_unsent(record, Failure(code or failures.REQUEST_UNUSABLE))
            return
        # Written before the call: after a crash, submit_attempts > 0 means "look it up first".
        attempt_number = record.submit_attempts + 1
        if not await self._store.update_if_state(
            record.id, [TaskState.QUEUED], submit_attempts=attempt_number
        ):
            return
        attempts.maybe_created = True
        try:
            task = await self._client.create_task(request, retry_busy=False)
        except KlingConcurrencyLimit:
            # 1303 is a definite "not created": no lookup needed next time.
            attempts.maybe_created = False
            await self._bounced(record, attempts)
            return
        except KlingError as exc:
            # A refusal means Kling made nothing. Any other failure leaves it open, even a 1302:
            # the client's own retries may have sent the create before (answer lost).
            attempts.maybe_created = exc.retryable
            if exc.retryable and attempts.failures + 1 < MAX_CREATE_FAILURES:
                log.warning("task %s: create failed (%s); retrying later", record.id, exc)
                await self._retry_later(record, attempts)
                return
            await self._give_up(record, attempts, exc)
            return
        await self._created(record, task)

    async def _attempt_failed(self, task_id: int, attempts: Attempts, exc: Exception) -> None:
        """A lookup that could not answer, or the store hiccuping: never create blind."""
        try:
            await self._after_failure(task_id, attempts, exc)
        except Exception as again:  # the store refuses even this: try the whole step later
            log.warning("task %s: cannot record a failed step yet (%r)", task_id, again)
            attempts.again_at = self._clock() + backoff(2.0, attempts.failures)

    async def _after_failure(self, task_id: int, attempts: Attempts, exc: Exception) -> None:
        record = await self._store.get(task_id)
        if record is None or record.state is not TaskState.QUEUED:
            self._book.attempts.pop(task_id, None)
            return
        if attempts.maybe_created:
            # Kling may run (and bill) it: only Kling's answer may end it. Ask again later,
            # however long Kling or the store take to answer.
            log.warning("task %s: cannot tell yet whether Kling has it (%r); asking again",
                        task_id, exc)  # fmt: skip
            delay = backoff(2.0, attempts.lookup_failures)
            attempts.lookup_failures += 1
            await self._hold_for_lookup(record, attempts, delay)
        elif attempts.failures + 1 < MAX_CREATE_FAILURES:
            log.warning("task %s: admission step failed (%r); retrying later", task_id, exc)
            await self._retry_later(record, attempts)
        else:
            log.error("task %s: admission failed for good: %r", task_id, exc)
            failure = failures.kling_refused(exc) if isinstance(exc, KlingError) else None
            await self._end_unsent(record, failure or Failure(failures.NOT_SUBMITTED))

    async def _look_up(self, record: TaskRecord, attempts: Attempts) -> KlingTask | None:
        try:
            found = await self._client.get_task(record.kind, record.external_task_id)
        except KlingError as exc:
            if exc.code not in NOT_FOUND_CODES and exc.http_status != 404:
                raise  # unknown: never create blind, never fail; asked again later
            found = None
            attempts.maybe_created = False
        attempts.lookup_failures = 0
        return found

    async def _give_up(self, record: TaskRecord, attempts: Attempts, exc: KlingError) -> None:
        """The last create failed. If it may have reached Kling, one final lookup first: a
        task Kling runs is paid for and must be followed, not reported as failed."""
        if attempts.maybe_created:
            found = await self._look_up(record, attempts)  # unknown answers raise
            if found is not None:
                log.info("task %s: the last create failed (%s) but Kling runs it as %s",
                         record.id, exc, found.task_id)  # fmt: skip
                await self._created(record, found)
                return
        log.warning("task %s: create failed for good: %s", record.id, exc)
        await self._end_unsent(record, failures.kling_gave_up(exc, tries=attempts.failures + 1))

    # --- outcomes ----------------------------------------------------------------------------

    async def _created(self, record: TaskRecord, task: KlingTask) -> None:
        self._book.attempts.pop(record.id, None)
        await self._settler.created(record, task)

    async def _end_unsent(self, record: TaskRecord, failure: Failure | None) -> None:
        """End a queued task Kling has not got: cancelled if a cancel was asked for, else
        failed with ``failure``. A callback may prove Kling has it after all: then it runs."""
        early = self._early.peek(record.id)
        if early is not None:
            # The create's answer was lost, but Kling runs the task: it is followed.
            log.info("task %s: create failed here (%s) but Kling runs it as %s",
                     record.id, failure, early.task_id)  # fmt: skip
            await self._created(record, early)
            return
        self._book.attempts.pop(record.id, None)
        fresh = await self._store.get(record.id)
        if fresh is None:
            return
        if fresh.cancel_requested or failure is None:
            await cancel_queued(self._store, self._bus, fresh)
            return
        if await self._store.transition(
            record.id, [TaskState.QUEUED], TaskState.FAILED, **failure.as_failure()
        ):
            log.info("task %s: failed before reaching Kling: %s", record.id, failure)
            await self._bus.emit_outcome(record.id)

    async def _not_stored_yet(self, record: TaskRecord, attempts: Attempts) -> None:
        """A row without images: being stored right now, or left so by a crash."""
        if self._clock() - record.created_at >= self._claims.lease:
            await self._end_unsent(record, Failure(failures.INTERRUPTED_BEFORE_SUBMIT))
            return
        await self._back_off(record, attempts, self._clock() + STORING_RETRY)

    async def _bounced(self, record: TaskRecord, attempts: Attempts) -> None:
        """Kling said 1303: back to the front of its member's line, with a growing backoff,
        and no more admissions than the slots now in use until one frees."""
        delay = backoff(1.0, attempts.busy_count) * random.uniform(1.0, 1.25)
        attempts.busy_count += 1
        not_before = self._clock() + delay
        await self._back_off(record, attempts, not_before)
        held = await self._store.slots_in_use(record.kind, self._clock())
        log.info("task %s: Kling has no free %s slot (1303); %d held",
                 record.id, record.kind, held)  # fmt: skip
        self._book.caps[record.kind] = (held, not_before)

    async def _retry_later(self, record: TaskRecord, attempts: Attempts) -> None:
        """A retryable failure: try again after a growing backoff. A task whose create may
        have reached Kling stays held for its lookup; any other goes back to the front of its
        member's line, without its slots."""
        delay = backoff(2.0, attempts.failures)
        attempts.failures += 1
        if attempts.maybe_created:
            await self._hold_for_lookup(record, attempts, delay)
        else:
            await self._back_off(record, attempts, self._clock() + delay)

    async def _hold_for_lookup(self, record: TaskRecord, attempts: Attempts, delay: float) -> None:
        at = self._clock() + delay
        attempts.again_at = at
        await self._store_retry_time(record.id, at)  # read back by the next start
        # The claim (the slots) is kept until the lookup, and a lease beyond it.
        with contextlib.suppress(Exception):
            await self._store.renew_claim(record.id, attempts.token, until=at + self._claims.lease)

    async def _back_off(self, record: TaskRecord, attempts: Attempts, not_before: float) -> None:
        """Back in line at ``not_before``: stored first, then the claim given back (so that
        admission cannot take it sooner). If the store refuses, the task stays held instead."""
        if not await self._store_retry_time(record.id, not_before):
            attempts.again_at = not_before  # held: tried again at that time all the same
            return
        self._book.wakeups.append(not_before)
        await self._claims.release(record.id, attempts.token)

    async def _store_retry_time(self, task_id: int, not_before: float) -> bool:
        try:
            await self._store.update(task_id, not_before=not_before)
        except Exception as exc:
            log.warning("task %s: could not store its retry time (%r)", task_id, exc)
            return False
        return True


def backoff(base: float, failures: int) -> float:
    """``base * 2**failures`` seconds, capped at MAX_BACKOFF; the exponent is capped too, since
    a task may wait through thousands of failures and a float overflows past 2**1023."""
    return min(MAX_BACKOFF, base * 2.0 ** min(failures, 32))
