"""The admission queue on its own: fair order, slots, backoff, estimates (a hand-driven clock),
and the create step's error handling against a fake client and a real store."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from bot.kling.errors import (
    KlingConcurrencyLimit,
    KlingError,
    KlingNetworkError,
    KlingPolicyError,
)
from bot.kling.models import ImageTaskRequest, KlingTask, TaskKind, TaskRequest
from bot.kling.providers import flavour_for
from bot.tasks.admission import (
    DEFAULT_RUN_SECONDS,
    MAX_CREATE_FAILURES,
    Admission,
    Entry,
    KindQueue,
    SlotsExceedLimit,
)
from bot.tasks.models import Origin, TaskRecord, TaskState
from bot.tasks.store import SqliteTaskStore


def entry(task_id: int, user_id: int, slots: int = 1, queued_at: float = 0.0) -> Entry:
    return Entry(task_id=task_id, user_id=user_id, slots=slots, queued_at=queued_at)


def drain(queue: KindQueue, now: float = 0.0) -> list[int]:
    taken = []
    while (e := queue.next_ready(now)) is not None:
        taken.append(e.task_id)
    return taken


def test_members_take_turns_and_each_members_tasks_stay_in_order() -> None:
    queue = KindQueue(TaskKind.IMAGE, limit=None)
    for task_id in range(1, 11):  # member 1 asks for ten tasks first
        queue.add(entry(task_id, user_id=1))
    queue.add(entry(11, user_id=2))
    queue.add(entry(12, user_id=2))
    queue.add(entry(13, user_id=3))
    assert [e.task_id for e in queue.order()] == [1, 11, 13, 2, 12, 3, 4, 5, 6, 7, 8, 9, 10]
    assert drain(queue) == [1, 11, 13, 2, 12, 3, 4, 5, 6, 7, 8, 9, 10]


def test_limit_holds_tasks_until_slots_free() -> None:
    queue = KindQueue(TaskKind.IMAGE, limit=2)
    for task_id, user in ((1, 1), (2, 1), (3, 2), (4, 2)):
        queue.add(entry(task_id, user))
    assert drain(queue) == [1, 3]
    assert queue.slots_used == 2
    assert queue.release(1)
    assert not queue.release(1)  # idempotent: a second "it ended" frees nothing
    assert drain(queue) == [2]
    queue.release(3)
    assert drain(queue) == [4]


def test_a_big_task_is_not_overtaken_by_small_ones() -> None:
    queue = KindQueue(TaskKind.IMAGE, limit=4)
    queue.add(entry(1, user_id=1, slots=3))
    queue.add(entry(2, user_id=2, slots=4))
    queue.add(entry(3, user_id=3, slots=1))
    assert drain(queue) == [1]  # member 2's turn: 4 slots needed, 1 free -> nobody overtakes
    queue.release(1)
    assert drain(queue) == [2]
    queue.release(2)
    assert drain(queue) == [3]


def test_concurrency_limit_backs_off_and_caps_until_a_slot_frees() -> None:
    queue = KindQueue(TaskKind.IMAGE, limit=None)
    for task_id in (1, 2, 3):
        queue.add(entry(task_id, user_id=task_id))
    taken = [queue.next_ready(100.0) for _ in range(3)]
    assert [e.task_id for e in taken if e] == [1, 2, 3]
    third = taken[2]
    assert third is not None
    # Kling refused task 3 (1303): it goes back with a backoff of at least a second, and the
    # limit drops to the slots in use.
    not_before = queue.bounced(third, now=100.0)
    assert not_before >= 101.0
    assert queue.slots_used == 2
    assert queue.effective_limit(100.0) == 2
    queue.add(entry(4, user_id=4))
    assert drain(queue, now=100.5) == []  # capped, and task 3 is backing off
    queue.release(1)  # a slot freed: the cap goes, but task 3 still waits out its backoff
    assert queue.effective_limit(100.5) is None
    assert drain(queue, now=100.5) == [4]
    assert drain(queue, now=not_before) == [3]
    # Each further 1303 doubles the wait: the fourth waits at least 8 s.
    third.busy_count = 3
    assert queue.bounced(third, now=200.0) >= 208.0


def test_retry_later_backs_off_and_keeps_the_members_order() -> None:
    queue = KindQueue(TaskKind.VIDEO, limit=1)
    queue.add(entry(1, user_id=1))
    queue.add(entry(2, user_id=1))
    first = queue.next_ready(0.0)
    assert first is not None and first.task_id == 1
    queue.retry_later(first, now=0.0)
    assert first.not_before >= 2.0 and queue.slots_used == 0
    assert [e.task_id for e in queue.order()] == [1, 2]
    assert queue.next_ready(1.0) is None  # FIFO per member: task 2 does not jump the line
    assert queue.next_wakeup() == first.not_before
    taken = queue.next_ready(first.not_before)
    assert taken is not None and taken.task_id == 1


def test_position_and_estimated_wait() -> None:
    queue = KindQueue(TaskKind.IMAGE, limit=2)
    queue.add(entry(1, 1, queued_at=10.0))
    queue.add(entry(2, 1, queued_at=11.0))
    drain(queue, now=20.0)  # both running
    queue.add(entry(3, 2, queued_at=20.0))
    queue.add(entry(4, 3, queued_at=21.0))
    queue.add(entry(5, 2, queued_at=22.0))
    position = queue.position(4, now=30.0)
    assert position is not None
    assert (position.position, position.ahead) == (2, 1)
    # 2 running + 1 ahead + itself = 4 slots on a limit of 2: one full turnover first.
    assert position.estimated_wait == DEFAULT_RUN_SECONDS[TaskKind.IMAGE]
    queue.run_times.extend([10.0, 30.0])
    # 2 running + 2 ahead + itself = 5 slots: two turnovers of the mean run time (20 s).
    assert queue.position(5, now=30.0).estimated_wait == 40.0  # type: ignore[union-attr]
    assert queue.position(99, now=30.0) is None
    stats = queue.stats(now=30.0)
    assert (stats.queued, stats.slots_used, stats.limit) == (3, 2, 2)
    assert stats.oldest_wait == 10.0


def test_unlimited_queue_lets_everything_go_at_once() -> None:
    queue = KindQueue(TaskKind.VIDEO, limit=None)
    for task_id in range(1, 6):
        queue.add(entry(task_id, user_id=1, slots=1))
    assert drain(queue) == [1, 2, 3, 4, 5]
    assert queue.position(1, now=0.0) is None


# --- the create step, against a fake client and a real store ---------------------------------


class FakeClient:
    flavour = flavour_for("simulator")

    def __init__(self, outcomes: list[Any]) -> None:
        self.outcomes = outcomes
        self.creates: list[TaskRequest] = []
        self.gets: list[str] = []
        self.lookup: Any = KlingError("task does not exist", code=1203, http_status=404)
        self.lookups: list[Any] = []  # answered first, in order; then ``lookup`` every time

    async def create_task(self, request: TaskRequest, *, retry_busy: bool = True) -> KlingTask:
        assert retry_busy is False  # admission handles 1303 itself
        self.creates.append(request)
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def get_task(self, kind: TaskKind, task_id: str) -> KlingTask:
        self.gets.append(task_id)
        answer = self.lookups.pop(0) if self.lookups else self.lookup
        if isinstance(answer, Exception):
            raise answer
        return answer


def kling_task(task_id: str = "k1") -> KlingTask:
    return KlingTask.model_validate({"task_id": task_id, "task_status": "submitted"})


class Harness:
    def __init__(self, store: SqliteTaskStore, client: FakeClient, limit: int | None) -> None:
        self.store = store
        self.client = client
        self.now = 1000.0
        self.submitted: list[tuple[int, str]] = []
        self.failed: list[tuple[int, str]] = []
        self.done = asyncio.Event()
        self.admission = Admission(
            client=client,  # type: ignore[arg-type]
            store=store,
            limits={TaskKind.IMAGE: limit},
            request_for=self.request_for,
            submitted=self.on_submitted,
            create_failed=self.on_failed,
            clock=lambda: self.now,
        )

    async def request_for(self, record: TaskRecord) -> TaskRequest:
        return ImageTaskRequest(
            subject_images=["aGVsbG8="], external_task_id=record.external_task_id
        )

    async def on_submitted(self, record: TaskRecord, task: KlingTask) -> None:
        self.submitted.append((record.id, task.task_id))
        self.done.set()

    async def on_failed(self, record: TaskRecord, reason: str) -> None:
        self.failed.append((record.id, reason))
        self.done.set()

    async def add_task(self, user_id: int = 1, **fields: Any) -> TaskRecord:
        record = await self.store.create(
            kind=TaskKind.IMAGE,
            provider="simulator",
            simulated=True,
            external_task_id=f"ext-{user_id}-{self.now}",
            params={"prompt": "p"},
            input_labels=["subject1"],
            slots=1,
            origin=Origin(channel_id=1, user_id=user_id),
            callback_token=None,
        )
        if fields:
            await self.store.update(record.id, **fields)
        record = await self.store.get(record.id)
        assert record is not None
        self.admission.enqueue(record)
        return record

    async def step(self) -> None:
        """Let the admission loop create whatever is ready, then wait for the outcome."""
        self.done.clear()
        await asyncio.wait_for(self.done.wait(), 5)
        await asyncio.sleep(0)


@pytest.fixture
async def store(tmp_path: Path) -> Any:
    async with SqliteTaskStore(tmp_path / "tasks.db") as opened:
        yield opened


async def run_admission(harness: Harness) -> asyncio.Task[None]:
    return asyncio.create_task(harness.admission.run())


async def test_busy_then_network_errors_requeue_then_fail_with_the_reason(
    store: SqliteTaskStore,
) -> None:
    failures = [KlingNetworkError("boom")] * MAX_CREATE_FAILURES
    client = FakeClient([KlingConcurrencyLimit("busy", code=1303), *failures])
    harness = Harness(store, client, limit=None)
    record = await harness.add_task()
    loop = await run_admission(harness)
    try:
        for _ in range(30):
            await asyncio.sleep(0.01)
            row = await store.get(record.id)
            assert row is not None
            if row.not_before:
                harness.now = row.not_before  # jump the hand clock over each backoff
                harness.admission._wake.set()
            if harness.failed:
                break
        assert harness.failed and harness.failed[0][0] == record.id
        assert "could not reach Kling" in harness.failed[0][1]
        assert len(client.creates) == 1 + MAX_CREATE_FAILURES
        # After the first ambiguous failure every retry looked the task up by its external id
        # before creating again (never a blind second create), and the last failure had one
        # final lookup before the task was given up.
        assert client.gets == [record.external_task_id] * MAX_CREATE_FAILURES
        assert all(r.external_task_id == record.external_task_id for r in client.creates)
        row = await store.get(record.id)
        assert row is not None and row.submit_attempts == 1 + MAX_CREATE_FAILURES
    finally:
        loop.cancel()
        await harness.admission.close()


async def drive_until_outcome(harness: Harness, record: TaskRecord) -> None:
    """Jump the hand clock over each backoff until the task is submitted or failed."""
    for _ in range(100):
        await asyncio.sleep(0.01)
        row = await harness.store.get(record.id)
        assert row is not None
        if row.not_before and row.not_before > harness.now:
            harness.now = row.not_before
            harness.admission._wake.set()
        if harness.failed or harness.submitted:
            return
    raise AssertionError("admission reached no outcome")


async def test_a_final_lookup_after_the_last_failed_create_finds_the_task(
    store: SqliteTaskStore,
) -> None:
    """Every create answer was lost; the last one had reached Kling: the task is followed (its
    slot held), not failed, and never created a fifth time."""
    client = FakeClient([KlingNetworkError("no answer")] * MAX_CREATE_FAILURES)
    not_found = KlingError("task does not exist", code=1203, http_status=404)
    client.lookups = [not_found] * (MAX_CREATE_FAILURES - 1)
    client.lookup = kling_task("made-it")
    harness = Harness(store, client, limit=2)
    record = await harness.add_task()
    loop = await run_admission(harness)
    try:
        await drive_until_outcome(harness, record)
        assert harness.failed == []
        assert harness.submitted == [(record.id, "made-it")]
        assert len(client.creates) == MAX_CREATE_FAILURES
        assert client.gets == [record.external_task_id] * MAX_CREATE_FAILURES
        assert harness.admission.queues[TaskKind.IMAGE].held == {record.id: 1}
    finally:
        loop.cancel()
        await harness.admission.close()


async def test_policy_error_fails_at_once_with_both_messages(store: SqliteTaskStore) -> None:
    client = FakeClient([KlingPolicyError("prompt contains banned words", code=1301)])
    harness = Harness(store, client, limit=None)
    record = await harness.add_task()
    loop = await run_admission(harness)
    try:
        await harness.step()
        assert harness.failed == [
            (
                record.id,
                f"{KlingPolicyError.user_message} (Kling: prompt contains banned words)",
            )
        ]
        assert len(client.creates) == 1
        assert client.gets == []  # a refusal created nothing: no lookup before failing
        assert harness.admission.queues[TaskKind.IMAGE].slots_used == 0
    finally:
        loop.cancel()
        await harness.admission.close()


async def test_restart_looks_up_a_maybe_created_task_instead_of_creating(
    store: SqliteTaskStore,
) -> None:
    client = FakeClient([])
    client.lookup = kling_task("found-it")
    harness = Harness(store, client, limit=1)
    record = await harness.add_task(submit_attempts=1)
    loop = await run_admission(harness)
    try:
        await harness.step()
        assert harness.submitted == [(record.id, "found-it")]
        assert client.creates == [] and client.gets == [record.external_task_id]
        assert harness.admission.queues[TaskKind.IMAGE].slots_used == 1
    finally:
        loop.cancel()
        await harness.admission.close()


async def test_a_cancelled_task_is_not_created(store: SqliteTaskStore) -> None:
    client = FakeClient([kling_task()])
    harness = Harness(store, client, limit=None)
    record = await harness.add_task()
    await store.transition(record.id, [TaskState.QUEUED], TaskState.CANCELLED)
    second = await harness.add_task(user_id=2)
    loop = await run_admission(harness)
    try:
        await harness.step()
        assert harness.submitted == [(second.id, "k1")]
        assert len(client.creates) == 1
    finally:
        loop.cancel()
        await harness.admission.close()


def test_more_slots_than_the_limit_is_refused_with_a_clear_message() -> None:
    admission = Admission(
        client=FakeClient([]),  # type: ignore[arg-type]
        store=None,  # type: ignore[arg-type]
        limits={TaskKind.IMAGE: 2, TaskKind.VIDEO: None},
        request_for=None,  # type: ignore[arg-type]
        submitted=None,  # type: ignore[arg-type]
        create_failed=None,  # type: ignore[arg-type]
        clock=lambda: 0.0,
    )
    admission.check_fits(TaskKind.IMAGE, 2)
    admission.check_fits(TaskKind.VIDEO, 1)
    with pytest.raises(SlotsExceedLimit) as caught:
        admission.check_fits(TaskKind.IMAGE, 4)
    assert "at most 2" in caught.value.user_message
