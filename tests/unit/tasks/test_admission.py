"""Admission on its own: the 1303 cap, backoffs, estimates, and the create step's error handling,
with a hand-driven clock, a fake Kling client and a real store.

The fair order and the slot accounting are the store's (``admit_next``: its contract suite,
tests/unit/store/test_contract.py, has the turn-taking cases); here is what admission does with
them. Tasks go in through the real intake (their images saved under DATA_DIR), and only the
admission loop runs: every create's outcome is what the store and the events say.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.config import Settings
from bot.kling.errors import (
    KlingConcurrencyLimit,
    KlingError,
    KlingNetworkError,
    KlingPolicyError,
)
from bot.kling.models import KlingTask, TaskKind, TaskRequest
from bot.kling.params import ImageParams
from bot.kling.providers import flavour_for
from bot.tasks.core import TaskCore
from bot.tasks.creates import MAX_CREATE_FAILURES, backoff
from bot.tasks.failures import describe_failure
from bot.tasks.limits import SlotsExceedLimit, check_fits
from bot.tasks.models import EventType, TaskEvent, TaskRecord, TaskState
from bot.tasks.queue_view import DEFAULT_RUN_SECONDS
from bot.tasks.store import Stores, open_store
from testing.tracker_harness import origin, subject


class FakeClient:
    flavour = flavour_for("simulator")

    def __init__(self, outcomes: list[Any]) -> None:
        self.outcomes = outcomes
        self.creates: list[TaskRequest] = []
        self.gets: list[str] = []
        self.lookup: Any = KlingError("task does not exist", code=1203, http_status=404)
        self.lookups: list[Any] = []  # answered first, in order; then ``lookup`` every time
        self.on_call = None

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
    """The task core on a fake client and a hand clock; only its admission loop runs."""

    def __init__(self, tmp_path: Path, client: FakeClient, limit: int | None) -> None:
        self.client = client
        self.now = 1000.0
        self.settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            kling_provider="simulator",
            kling_base_url="http://127.0.0.1:9",
            data_dir=tmp_path / "data",
            database_url=f"sqlite:///{tmp_path / 'tasks.db'}",
            kling_image_concurrency=limit,
        )
        self.submitted: list[tuple[int, str]] = []
        self.failed: list[tuple[int, str]] = []
        self.changed = asyncio.Event()
        self.loop: asyncio.Task[None] | None = None

    async def open(self) -> Harness:
        self.stores: Stores = open_store(self.settings.database_url, clock=lambda: self.now)
        await self.stores.open()
        self.store = self.stores.tasks
        self.core = TaskCore(
            settings=self.settings,
            store=self.store,
            client=self.client,  # type: ignore[arg-type]
            clock=lambda: self.now,
        )
        self.core.subscribe(self.on_event)
        return self

    async def on_event(self, event: TaskEvent) -> None:
        task = event.task
        if event.type is EventType.STATE and task.state is TaskState.SUBMITTED:
            self.submitted.append((task.id, task.kling_task_id or ""))
        if event.type is EventType.FAILED:
            self.failed.append((task.id, describe_failure(task) or ""))
        self.changed.set()

    async def add_task(self, user_id: int = 1, n: int | None = None, **fields: Any) -> TaskRecord:
        record = await self.core.submit(
            TaskKind.IMAGE, ImageParams(prompt="p", n=n), [subject()], origin(user_id)
        )
        if fields:
            await self.store.update(record.id, **fields)
        fresh = await self.store.get(record.id)
        assert fresh is not None
        return fresh

    def run(self) -> None:
        self.loop = asyncio.create_task(self.core.admission.run())

    def tick(self, to: float) -> None:
        """Move the hand clock and wake admission (the loop sleeps on real time)."""
        self.now = to
        self.core.admission._wake.set()

    async def step(self) -> None:
        """Wait for the next outcome (a submit or a failure)."""
        self.changed.clear()
        await asyncio.wait_for(self.changed.wait(), 5)
        await asyncio.sleep(0.05)

    async def slots(self) -> int:
        return await self.store.slots_in_use(TaskKind.IMAGE, self.now)

    async def close(self) -> None:
        if self.loop is not None:
            self.loop.cancel()
            await asyncio.gather(self.loop, return_exceptions=True)
        await self.core.close()
        await self.stores.close()


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[Any]:
    opened: list[Harness] = []

    async def factory(client: FakeClient, limit: int | None = None) -> Harness:
        harness = await Harness(tmp_path, client, limit).open()
        opened.append(harness)
        return harness

    yield factory
    for harness in opened:
        await harness.close()


async def drive_until_outcome(harness: Harness, record: TaskRecord) -> None:
    """Jump the hand clock over each backoff until the task is submitted or failed."""
    for _ in range(200):
        await asyncio.sleep(0.01)
        row = await harness.store.get(record.id)
        assert row is not None
        if row.not_before and row.not_before > harness.now:
            harness.tick(row.not_before)
        if harness.failed or harness.submitted:
            return
    raise AssertionError("admission reached no outcome")


# --- backoffs and the 1303 cap -------------------------------------------------------------


async def test_concurrency_limit_backs_off_and_caps_until_a_slot_frees(make: Any) -> None:
    client = FakeClient(
        [kling_task("k1"), kling_task("k2"), KlingConcurrencyLimit("busy", code=1303)]
    )
    h = await make(client)
    first, second, third = [await h.add_task(user_id=u) for u in (1, 2, 3)]
    h.run()
    for _ in range(100):
        await asyncio.sleep(0.01)
        row = await h.store.get(third.id)
        if row is not None and row.not_before:
            break
    # Kling refused task 3 (1303): it goes back with a backoff of at least a second, and the
    # limit drops to the slots in use.
    assert row is not None and row.state is TaskState.QUEUED
    not_before = row.not_before
    assert not_before is not None and not_before >= h.now + 1.0
    assert await h.slots() == 2
    assert {task_id for task_id, _ in h.submitted} == {first.id, second.id}
    client.outcomes += [kling_task("k4"), kling_task("k3")]
    fourth = await h.add_task(user_id=4)
    h.tick(h.now + 0.5)
    await asyncio.sleep(0.3)
    assert len(client.creates) == 3  # capped, and task 3 is backing off
    # A slot frees (task 1 ends at Kling): the cap goes, but task 3 still waits out its backoff.
    await h.store.transition(first.id, [TaskState.SUBMITTED], TaskState.SUCCEED)
    h.tick(h.now)
    await h.step()
    assert h.submitted[-1] == (fourth.id, "k4")
    h.tick(not_before)
    await h.step()
    assert h.submitted[-1] == (third.id, "k3")


def test_each_further_1303_doubles_the_wait_up_to_a_minute() -> None:
    assert [backoff(1.0, n) for n in range(4)] == [1.0, 2.0, 4.0, 8.0]  # the fourth: 8 s
    assert backoff(1.0, 10_000) == 60.0  # capped, and no overflow far out


async def test_retry_later_backs_off_and_keeps_the_members_order(
    make: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step that fails before any create was sent (the store hiccuping): the task goes back
    to the front of its member's line, without its slots, and the member's next task waits."""
    client = FakeClient([kling_task("k1"), kling_task("k2")])
    h = await make(client, limit=1)
    first = await h.add_task(user_id=1)
    second = await h.add_task(user_id=1)
    real = h.store.update_if_state
    hiccups = [1]

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        if hiccups[0] and "submit_attempts" in kwargs:
            hiccups[0] -= 1
            raise RuntimeError("database is locked")
        return await real(*args, **kwargs)

    monkeypatch.setattr(h.store, "update_if_state", flaky)
    h.run()
    for _ in range(100):
        await asyncio.sleep(0.01)
        row = await h.store.get(first.id)
        if row is not None and row.not_before:
            break
    assert row is not None and row.not_before is not None
    assert row.not_before >= h.now + 2.0 and await h.slots() == 0
    assert (await h.store.queue_snapshot(TaskKind.IMAGE, now=h.now)).ids == [first.id, second.id]
    h.tick(h.now + 1.0)
    await asyncio.sleep(0.2)
    assert client.creates == []  # FIFO per member: task 2 does not jump the line
    assert h.core.admission._sleep_time() <= row.not_before - h.now  # it wakes for task 1
    h.tick(row.not_before)
    await h.step()
    assert h.submitted == [(first.id, "k1")]


# --- what members are shown ------------------------------------------------------------------


async def test_position_and_estimated_wait(make: Any) -> None:
    h = await make(FakeClient([]), limit=2)
    for user_id in (1, 1):
        record = await h.add_task(user_id=user_id)
        await h.store.transition(record.id, [TaskState.QUEUED], TaskState.SUBMITTED)  # running
    h.now = 1010.0
    third = await h.add_task(user_id=2)
    h.now = 1011.0
    fourth = await h.add_task(user_id=3)
    h.now = 1012.0
    fifth = await h.add_task(user_id=2)
    h.now = 1020.0
    await h.core.queue.refresh()
    position = h.core.queue_position(fourth.id)
    assert position is not None
    assert (position.position, position.ahead) == (2, 1)
    # 2 running + 1 ahead + itself = 4 slots on a limit of 2: one full turnover first.
    assert position.estimated_wait == DEFAULT_RUN_SECONDS[TaskKind.IMAGE]
    h.core.run_times.record(TaskKind.IMAGE, 10.0)
    h.core.run_times.record(TaskKind.IMAGE, 30.0)
    # 2 running + 2 ahead + itself = 5 slots: two turnovers of the mean run time (20 s).
    assert h.core.queue_position(fifth.id).estimated_wait == 40.0  # type: ignore[union-attr]
    assert h.core.queue_position(99) is None
    stats = h.core.queue_stats()[TaskKind.IMAGE]
    assert (stats.queued, stats.slots_used, stats.limit) == (3, 2, 2)
    assert stats.oldest_wait == 1020.0 - third.created_at == 10.0


async def test_unlimited_admission_lets_everything_go_at_once(make: Any) -> None:
    client = FakeClient([kling_task(f"k{i}") for i in range(1, 6)])
    h = await make(client)
    records = [await h.add_task(user_id=1) for _ in range(5)]
    h.run()
    for _ in range(100):
        await asyncio.sleep(0.02)
        if len(h.submitted) == 5:
            break
    assert sorted(task_id for task_id, _ in h.submitted) == [r.id for r in records]
    assert h.core.queue_position(records[0].id) is None


# --- the create step -------------------------------------------------------------------------


async def test_busy_then_network_errors_requeue_then_fail_with_the_reason(make: Any) -> None:
    failures = [KlingNetworkError("boom")] * MAX_CREATE_FAILURES
    client = FakeClient([KlingConcurrencyLimit("busy", code=1303), *failures])
    h = await make(client)
    record = await h.add_task()
    h.run()
    await drive_until_outcome(h, record)
    assert h.failed and h.failed[0][0] == record.id
    assert "could not reach Kling" in h.failed[0][1]
    assert len(client.creates) == 1 + MAX_CREATE_FAILURES
    # After the first ambiguous failure every retry looked the task up by its external id
    # before creating again (never a blind second create), and the last failure had one
    # final lookup before the task was given up.
    assert client.gets == [record.external_task_id] * MAX_CREATE_FAILURES
    assert all(r.external_task_id == record.external_task_id for r in client.creates)
    row = await h.store.get(record.id)
    assert row is not None and row.submit_attempts == 1 + MAX_CREATE_FAILURES


async def test_a_final_lookup_after_the_last_failed_create_finds_the_task(make: Any) -> None:
    """Every create answer was lost; the last one had reached Kling: the task is followed (its
    slot held), not failed, and never created a fifth time."""
    client = FakeClient([KlingNetworkError("no answer")] * MAX_CREATE_FAILURES)
    not_found = KlingError("task does not exist", code=1203, http_status=404)
    client.lookups = [not_found] * (MAX_CREATE_FAILURES - 1)
    client.lookup = kling_task("made-it")
    h = await make(client, limit=2)
    record = await h.add_task()
    h.run()
    await drive_until_outcome(h, record)
    assert h.failed == []
    assert h.submitted == [(record.id, "made-it")]
    assert len(client.creates) == MAX_CREATE_FAILURES
    assert client.gets == [record.external_task_id] * MAX_CREATE_FAILURES
    assert await h.slots() == 1


async def test_policy_error_fails_at_once_with_both_messages(make: Any) -> None:
    client = FakeClient([KlingPolicyError("prompt contains banned words", code=1301)])
    h = await make(client)
    record = await h.add_task()
    h.run()
    await h.step()
    assert h.failed == [
        (record.id, f"{KlingPolicyError.user_message} (Kling: prompt contains banned words)")
    ]
    assert len(client.creates) == 1
    assert client.gets == []  # a refusal created nothing: no lookup before failing
    assert await h.slots() == 0


async def test_restart_looks_up_a_maybe_created_task_instead_of_creating(make: Any) -> None:
    client = FakeClient([])
    client.lookup = kling_task("found-it")
    h = await make(client, limit=1)
    record = await h.add_task(submit_attempts=1)
    await h.core.admission.look_up_soon(record)  # what the start does with it
    assert await h.slots() == 1  # held while it is looked up
    h.run()
    await h.step()
    assert h.submitted == [(record.id, "found-it")]
    assert client.creates == [] and client.gets == [record.external_task_id]
    assert await h.slots() == 1


async def test_a_cancelled_task_is_not_created(make: Any) -> None:
    client = FakeClient([kling_task()])
    h = await make(client)
    record = await h.add_task()
    await h.store.transition(record.id, [TaskState.QUEUED], TaskState.CANCELLED)
    second = await h.add_task(user_id=2)
    h.run()
    await h.step()
    assert h.submitted == [(second.id, "k1")]
    assert len(client.creates) == 1


def test_more_slots_than_the_limit_is_refused_with_a_clear_message() -> None:
    limits: dict[TaskKind, int | None] = {TaskKind.IMAGE: 2, TaskKind.VIDEO: None}
    check_fits(limits, TaskKind.IMAGE, 2)
    check_fits(limits, TaskKind.VIDEO, 1)
    with pytest.raises(SlotsExceedLimit) as caught:
        check_fits(limits, TaskKind.IMAGE, 4)
    assert "at most 2" in caught.value.user_message
