"""The admission queue: tasks wait here until Kling has a free slot for them, then are created.

Kling counts concurrency per account and per kind; an image task holds ``n`` slots, a video 1,
from creation until it ends. ``KindQueue`` is the pure bookkeeping (fair order, slots, backoff)
with an injected clock, so it is unit-tested without Kling; ``Admission`` drives it: it creates
tasks at Kling and reports the outcome to the tracker, which records the state change.

Fairness: members take turns (round-robin by user id), and each member's tasks go in the order
they were asked for. When the member whose turn it is needs more slots than are free, nobody
overtakes them (a big task is never starved by a stream of small ones).

Money: a create whose answer was lost may have reached Kling, which then runs and bills it.
Such a task is only ever ended on Kling's word: it is looked up by ``external_task_id``, with a
capped backoff for as long as Kling cannot answer, and fails only when Kling says it has no such
task. While it waits for that answer it is off its member's line and holds its slots.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

from bot.kling.client import NOT_FOUND_CODES, KlingClient
from bot.kling.errors import KlingConcurrencyLimit, KlingError, KlingInvalidRequest
from bot.kling.models import KlingTask, TaskKind, TaskRequest
from bot.tasks.models import TaskRecord, TaskState
from bot.tasks.store import TaskStore

log = logging.getLogger(__name__)

INPUTS_UNREADABLE = (
    "The bot could not read this task's stored images, and Kling never received the task: "
    "no credits were used. Please run the command again."
)
NOT_SUBMITTED = (
    "The bot could not submit the task to Kling, so no credits were used. Please try again later."
)
REQUEST_UNUSABLE = (
    "The bot could not rebuild this request from what it stored, and Kling never received "
    "the task: no credits were used. Please run the command again."
)

DEFAULT_RUN_SECONDS = {TaskKind.IMAGE: 60.0, TaskKind.VIDEO: 300.0}
MAX_CREATE_FAILURES = 4  # retryable create errors, after the client's own retries
MAX_BACKOFF = 60.0


class SlotsExceedLimit(KlingInvalidRequest):
    """The task needs more slots than the account has: it would wait forever, so refuse it."""

    def __init__(self, kind: TaskKind, slots: int, limit: int) -> None:
        super().__init__(f"{kind} task needs {slots} slots, the limit is {limit}")
        if kind is TaskKind.IMAGE:
            self.user_message = (
                f"This asks for {slots} images at once, but the bot's Kling account can only "
                f"make {limit} at a time: ask for at most {limit}."
            )
        else:
            self.user_message = f"The bot's Kling account cannot run a {kind} task right now."


@dataclass(frozen=True, slots=True)
class QueuePosition:
    position: int  # 1-based
    ahead: int  # tasks that go first
    estimated_wait: float  # seconds


@dataclass(frozen=True, slots=True)
class QueueStats:
    queued: int
    slots_used: int
    limit: int | None  # None: unlimited
    oldest_wait: float  # seconds the oldest queued task has waited


@dataclass(slots=True)
class Entry:
    task_id: int
    user_id: int
    slots: int
    queued_at: float
    not_before: float = 0.0
    busy_count: int = 0  # Kling said 1303 (no free slot) this many times
    failures: int = 0  # other retryable create failures
    maybe_created: bool = False  # an earlier create may have reached Kling: look it up first
    lookup_failures: int = 0  # lookups in a row that got no answer from Kling


@dataclass(slots=True)
class KindQueue:
    """Fair order and slot accounting for one kind. Pure: ``now`` is always passed in."""

    kind: TaskKind
    limit: int | None
    users: OrderedDict[int, deque[Entry]] = field(default_factory=OrderedDict)  # next turn first
    held: dict[int, int] = field(default_factory=dict)  # task id -> slots held at Kling
    # After a 1303 Kling's real limit is below ours (other keys share the account): admit no
    # more than the slots in use until one frees, or until the bounced task's backoff ends.
    cap: int | None = None
    cap_until: float = 0.0
    run_times: deque[float] = field(default_factory=lambda: deque(maxlen=20))
    # Tasks whose create may have reached Kling, waiting for a lookup to tell: off their
    # member's line (a lookup needs no turn, and the member's other tasks must not wait on
    # Kling's query endpoint) and holding their slots. Holding is the safe side of 1303: if
    # the task runs at Kling it counts against the account, and counting it here keeps us from
    # sending creates Kling would refuse; if it does not, the answer that says so frees them.
    lookups: dict[int, Entry] = field(default_factory=dict)

    def __len__(self) -> int:
        return sum(len(entries) for entries in self.users.values()) + len(self.lookups)

    @property
    def slots_used(self) -> int:
        return sum(self.held.values())

    def add(self, entry: Entry, *, front: bool = False) -> None:
        entries = self.users.setdefault(entry.user_id, deque())
        if front:
            entries.appendleft(entry)
        else:
            entries.append(entry)

    def find(self, task_id: int) -> Entry | None:
        if task_id in self.lookups:
            return self.lookups[task_id]
        for entries in self.users.values():
            for entry in entries:
                if entry.task_id == task_id:
                    return entry
        return None

    def remove(self, task_id: int) -> Entry | None:
        waiting = self.lookups.pop(task_id, None)
        if waiting is not None:
            self.release(task_id)
            return waiting
        for user_id, entries in self.users.items():
            for entry in entries:
                if entry.task_id == task_id:
                    entries.remove(entry)
                    if not entries:
                        del self.users[user_id]
                    return entry
        return None

    def hold(self, task_id: int, slots: int) -> None:
        self.held[task_id] = slots

    def release(self, task_id: int) -> bool:
        if self.held.pop(task_id, None) is None:
            return False
        self.cap = None
        return True

    def effective_limit(self, now: float) -> int | None:
        if self.cap is not None and now < self.cap_until:
            return self.cap if self.limit is None else min(self.cap, self.limit)
        return self.limit

    def next_ready(self, now: float) -> Entry | None:
        """Take the next task to create and hold its slots, or None if none may go now."""
        limit = self.effective_limit(now)
        for user_id, entries in self.users.items():
            head = entries[0]
            if head.not_before > now:
                continue  # backing off; the turn passes on without being used up
            if limit is not None and self.slots_used + head.slots > limit:
                return None
            entries.popleft()
            if entries:
                self.users.move_to_end(user_id)
            else:
                del self.users[user_id]
            self.hold(head.task_id, head.slots)
            return head
        return None

    def next_wakeup(self, now: float | None = None) -> float | None:
        """The earliest FUTURE time a backing-off head becomes ready or the cap lifts (None:
        nothing waits on time; a head already past its backoff waits for a free slot, which
        a release announces). Without ``now``, every pending time counts."""
        floor = 0.0 if now is None else now
        if self.cap is not None and now is not None and now >= self.cap_until:
            self.cap = None  # the bounced task's backoff is over: the cap has done its job
        times = [e[0].not_before for e in self.users.values() if e[0].not_before > floor]
        times += [e.not_before for e in self.lookups.values() if e.not_before > floor]
        if self.cap is not None and self.cap_until > floor:
            times.append(self.cap_until)
        return min(times, default=None)

    def bounced(self, entry: Entry, now: float) -> float:
        """Kling said 1303: back to the front of its member's line, with a growing backoff."""
        self.held.pop(entry.task_id, None)
        delay = backoff(1.0, entry.busy_count) * random.uniform(1.0, 1.25)
        entry.busy_count += 1
        entry.not_before = now + delay
        self.cap = self.slots_used
        self.cap_until = entry.not_before
        self.add(entry, front=True)
        return entry.not_before

    def retry_later(self, entry: Entry, now: float) -> float:
        """A retryable failure: try again after a growing backoff. A task whose create may
        have reached Kling waits for its lookup (``lookups``); any other goes back to the front
        of its member's line, without its slots."""
        not_before = now + backoff(2.0, entry.failures)
        entry.failures += 1
        if entry.maybe_created:
            self.look_up_later(entry, not_before)
        else:
            self.held.pop(entry.task_id, None)
            entry.not_before = not_before
            self.add(entry, front=True)
        return not_before

    def lookup_failed(self, entry: Entry, now: float) -> float:
        """Kling could not say whether it has the task: ask again after a growing backoff,
        for as long as it takes (the task may be running, and billed, there)."""
        not_before = now + backoff(2.0, entry.lookup_failures)
        entry.lookup_failures += 1
        self.look_up_later(entry, not_before)
        return not_before

    def look_up_later(self, entry: Entry, not_before: float) -> None:
        """Wait off the member's line for a lookup at ``not_before``, holding the slots."""
        entry.not_before = not_before
        self.hold(entry.task_id, entry.slots)
        self.lookups[entry.task_id] = entry

    def due_lookups(self, now: float) -> list[Entry]:
        """Take the tasks whose lookup is due; they keep holding their slots."""
        due = [entry for entry in self.lookups.values() if entry.not_before <= now]
        for entry in due:
            del self.lookups[entry.task_id]
        return due

    def order(self) -> Iterator[Entry]:
        """The queued tasks in the order they would be created if nothing else arrived."""
        lines = [list(entries) for entries in self.users.values()]
        depth = 0
        while lines:
            lines = [line for line in lines if depth < len(line)]
            for line in lines:
                yield line[depth]
            depth += 1

    def mean_run_time(self) -> float:
        if not self.run_times:
            return DEFAULT_RUN_SECONDS[self.kind]
        return sum(self.run_times) / len(self.run_times)

    def position(self, task_id: int, now: float) -> QueuePosition | None:
        slots_ahead = 0
        for index, entry in enumerate(self.order()):
            if entry.task_id == task_id:
                return QueuePosition(
                    position=index + 1,
                    ahead=index,
                    estimated_wait=self._estimate(slots_ahead, entry, now),
                )
            slots_ahead += entry.slots
        return None

    def _estimate(self, slots_ahead: int, entry: Entry, now: float) -> float:
        backoff = max(0.0, entry.not_before - now)
        if self.limit is None:
            return backoff
        # Slots turn over once per mean run time: count the full "waves" before ours starts.
        waves = math.floor((self.slots_used + slots_ahead + entry.slots - 1) / self.limit)
        return max(backoff, waves * self.mean_run_time())

    def stats(self, now: float) -> QueueStats:
        waiting = [e for entries in self.users.values() for e in entries]
        oldest = min((e.queued_at for e in [*waiting, *self.lookups.values()]), default=now)
        return QueueStats(
            queued=len(self),
            slots_used=self.slots_used,
            limit=self.limit,
            oldest_wait=max(0.0, now - oldest),
        )


Submitted = Callable[[TaskRecord, KlingTask], Awaitable[None]]
CreateFailed = Callable[[TaskRecord, str], Awaitable[None]]
RequestFor = Callable[[TaskRecord], Awaitable[TaskRequest]]


class Admission:
    """Creates queued tasks at Kling as slots allow; one asyncio task for every kind."""

    def __init__(
        self,
        *,
        client: KlingClient,
        store: TaskStore,
        limits: dict[TaskKind, int | None],
        request_for: RequestFor,
        submitted: Submitted,
        create_failed: CreateFailed,
        clock: Callable[[], float],
    ) -> None:
        self._client = client
        self._store = store
        self._request_for = request_for
        self._submitted = submitted
        self._create_failed = create_failed
        self._clock = clock
        self.queues = {kind: KindQueue(kind, limits.get(kind)) for kind in TaskKind}
        self.in_flight: set[int] = set()  # being created right now
        self._wake = asyncio.Event()
        self._creates: set[asyncio.Task[None]] = set()

    def check_fits(self, kind: TaskKind, slots: int) -> None:
        limit = self.queues[kind].limit
        if limit is not None and slots > limit:
            raise SlotsExceedLimit(kind, slots, limit)

    def enqueue(self, record: TaskRecord) -> None:
        entry = Entry(
            task_id=record.id,
            user_id=record.user_id,
            slots=record.slots,
            queued_at=record.created_at,
            not_before=record.not_before or 0.0,
            # A create may have reached Kling before a crash: look it up before creating again.
            maybe_created=record.submit_attempts > 0,
        )
        queue = self.queues[record.kind]
        if entry.maybe_created:
            queue.look_up_later(entry, entry.not_before)
        else:
            queue.add(entry)
        self._wake.set()

    def hold(self, record: TaskRecord) -> None:
        """A task already running at Kling (after a restart) holds its slots."""
        self.queues[record.kind].hold(record.id, record.slots)

    def release(self, kind: TaskKind, task_id: int) -> None:
        if self.queues[kind].release(task_id):
            self._wake.set()

    def remove(self, kind: TaskKind, task_id: int) -> bool:
        if self.queues[kind].remove(task_id) is None:
            return False
        self._wake.set()  # it may have held slots (waiting for a lookup)
        return True

    def may_be_at_kling(self, record: TaskRecord) -> bool:
        """A queued task whose create is under way, or whose earlier create may have reached
        Kling (its answer lost): only a lookup can tell whether Kling runs it."""
        if record.id in self.in_flight:
            return True
        entry = self.queues[record.kind].find(record.id)
        return entry.maybe_created if entry is not None else record.submit_attempts > 0

    def expedite(self, kind: TaskKind, task_id: int) -> None:
        """End a waiting task's backoff (a cancel only needs a lookup, which costs no slot at
        Kling)."""
        entry = self.queues[kind].find(task_id)
        if entry is not None:
            entry.not_before = 0.0
            self._wake.set()

    def record_run_time(self, kind: TaskKind, seconds: float) -> None:
        self.queues[kind].run_times.append(seconds)

    def position(self, kind: TaskKind, task_id: int) -> QueuePosition | None:
        return self.queues[kind].position(task_id, self._clock())

    async def run(self) -> None:
        while True:
            self._wake.clear()
            try:
                self._dispatch_ready()
            except Exception:  # a bug here must not stop admission for good
                log.exception("admission step failed; trying again shortly")
                await asyncio.sleep(1.0)
            now = self._clock()
            wakeups = [t for q in self.queues.values() if (t := q.next_wakeup(now)) is not None]
            timeout = None if not wakeups else max(0.01, min(wakeups) - now)
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that arrives as
            # the event is set, and the loop would then never stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    def _dispatch_ready(self) -> None:
        now = self._clock()
        for queue in self.queues.values():
            for waiting in queue.due_lookups(now):
                self._start_create(queue, waiting)
            while (entry := queue.next_ready(now)) is not None:
                self._start_create(queue, entry)

    def _start_create(self, queue: KindQueue, entry: Entry) -> None:
        self.in_flight.add(entry.task_id)
        create = asyncio.create_task(self._create(queue, entry))
        self._creates.add(create)
        create.add_done_callback(self._creates.discard)

    async def close(self) -> None:
        for create in list(self._creates):
            create.cancel()
        await asyncio.gather(*self._creates, return_exceptions=True)

    async def _create(self, queue: KindQueue, entry: Entry) -> None:
        try:
            await self._create_once(queue, entry)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # A lookup that could not answer, or the store hiccuping: never create blind.
            if entry.maybe_created:
                # Kling may run (and bill) it: only Kling's answer may end it. Ask again later,
                # however long Kling or the store take to answer.
                log.warning("task %s: cannot tell yet whether Kling has it (%r); asking again",
                            entry.task_id, exc)  # fmt: skip
                await self._retry_at(entry, queue.lookup_failed(entry, self._clock()))
            elif entry.failures + 1 < MAX_CREATE_FAILURES:
                log.warning("task %s: admission step failed (%r); retrying later",
                            entry.task_id, exc)  # fmt: skip
                await self._retry_at(entry, queue.retry_later(entry, self._clock()))
            else:
                log.exception("task %s: admission failed for good", entry.task_id)
                queue.release(entry.task_id)
                record = await self._store.get(entry.task_id)
                if record is not None:
                    reason = failure_reason(exc) if isinstance(exc, KlingError) else NOT_SUBMITTED
                    await self._create_failed(record, reason)
        finally:
            self.in_flight.discard(entry.task_id)
            self._wake.set()

    async def _create_once(self, queue: KindQueue, entry: Entry) -> None:
        record = await self._store.get(entry.task_id)
        if record is None or record.state is not TaskState.QUEUED:
            queue.release(entry.task_id)
            return
        if entry.maybe_created:
            # Kling may run it: look it up before anything else. Found, it is followed (a
            # cancelled one too: it holds its slots until it ends, cancelled). No answer
            # raises, and ``_create`` asks again later.
            found = await self._look_up(queue, entry, record)
            if found is not None:
                await self._submitted(record, found)
                return
        # From here on Kling has no such task: ending it costs the member nothing.
        reason = self._reason_not_to_create(queue, entry, record)
        if reason is not None:
            queue.release(entry.task_id)
            await self._create_failed(record, reason)
            return
        try:
            request = await self._request_for(record)
        except (OSError, ValueError) as exc:
            log.warning("task %s: cannot rebuild the request: %s", record.id, exc)
            queue.release(entry.task_id)
            await self._create_failed(
                record, INPUTS_UNREADABLE if isinstance(exc, OSError) else REQUEST_UNUSABLE
            )
            return
        # Written before the call: after a crash, submit_attempts > 0 means "look it up first".
        await self._store.update(record.id, submit_attempts=record.submit_attempts + 1)
        entry.maybe_created = True
        try:
            task = await self._client.create_task(request, retry_busy=False)
        except KlingConcurrencyLimit:
            log.info("task %s: Kling has no free %s slot (1303); %d held",
                     record.id, queue.kind, queue.slots_used - entry.slots)  # fmt: skip
            # 1303 is a definite "not created": no lookup needed next time.
            entry.maybe_created = False
            await self._retry_at(entry, queue.bounced(entry, self._clock()))
            return
        except KlingError as exc:
            # A refusal means Kling made nothing. Any other failure leaves it open, even a 1302:
            # the client's own retries may have sent the create before (answer lost).
            entry.maybe_created = exc.retryable
            if exc.retryable and entry.failures + 1 < MAX_CREATE_FAILURES:
                log.warning("task %s: create failed (%s); retrying later", record.id, exc)
                await self._retry_at(entry, queue.retry_later(entry, self._clock()))
                return
            await self._give_up(queue, entry, record, exc)
            return
        await self._submitted(record, task)

    async def _give_up(
        self, queue: KindQueue, entry: Entry, record: TaskRecord, exc: KlingError
    ) -> None:
        """The last create failed. If it may have reached Kling, one final lookup first: a
        task Kling runs is paid for and must be followed, not reported as failed."""
        if entry.maybe_created:
            found = await self._look_up(queue, entry, record)  # unknown answers raise
            if found is not None:
                log.info("task %s: the last create failed (%s) but Kling runs it as %s",
                         record.id, exc, found.task_id)  # fmt: skip
                await self._submitted(record, found)
                return
        log.warning("task %s: create failed for good: %s", record.id, exc)
        queue.release(entry.task_id)
        await self._create_failed(record, gave_up_reason(exc, tries=entry.failures + 1))

    def _reason_not_to_create(
        self, queue: KindQueue, entry: Entry, record: TaskRecord
    ) -> str | None:
        """Why a queued task that Kling does not have must end instead of being created."""
        if record.cancel_requested:
            return "cancelled"
        try:
            # Checked at submit; a task whose create may have reached Kling is resumed even
            # when the limit was lowered since, so it is checked again once Kling disowned it.
            self.check_fits(queue.kind, entry.slots)
        except SlotsExceedLimit as exc:
            return exc.user_message
        return None

    async def _look_up(
        self, queue: KindQueue, entry: Entry, record: TaskRecord
    ) -> KlingTask | None:
        try:
            found = await self._client.get_task(queue.kind, record.external_task_id)
        except KlingError as exc:
            if exc.code not in NOT_FOUND_CODES and exc.http_status != 404:
                raise  # unknown: never create blind, never fail; _create asks again later
            found = None
            entry.maybe_created = False
        entry.lookup_failures = 0
        return found

    async def _retry_at(self, entry: Entry, not_before: float) -> None:
        """Store when the task is tried next: only a restart reads it back, so the queue
        (which already holds the retry) must not lose the task when the store is refusing."""
        try:
            await self._store.update(entry.task_id, not_before=not_before)
        except Exception as exc:
            log.warning("task %s: could not store its retry time (%r)", entry.task_id, exc)


def backoff(base: float, failures: int) -> float:
    """``base * 2**failures`` seconds, capped at MAX_BACKOFF; the exponent is capped too, since
    a task may wait through thousands of failures and a float overflows past 2**1023."""
    return min(MAX_BACKOFF, base * 2.0 ** min(failures, 32))


def failure_reason(exc: KlingError) -> str:
    """The member-facing sentence plus Kling's own words, which name the offending field."""
    if exc.message and exc.message not in exc.user_message:
        return f"{exc.user_message} (Kling: {exc.message})"
    return exc.user_message


def gave_up_reason(exc: KlingError, *, tries: int) -> str:
    """Why a task failed whose last create failed: a refusal in Kling's words; after failures
    worth retrying (Kling has confirmed it has no such task), that no credit was used."""
    if not exc.retryable:
        return failure_reason(exc)
    what = exc.user_message.partition(";")[0].rstrip(".")  # without "the bot will try again"
    return (
        f"{what}, even after {tries} tries. Kling has no record of the task, so no credits "
        "were used: please try again later."
    )
