"""Regression tests for defects found in review of bot/tasks: each failed before its fix."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import unused_port

import bot.tasks.requests as requests_module
import bot.tasks.settle as settle_module
from bot.kling.models import KlingTask, TaskKind
from bot.kling.params import ImageParams
from bot.tasks import failures
from bot.tasks.admission import IDLE_TICK, Admission
from bot.tasks.claims import Claims
from bot.tasks.creates import AdmissionBook
from bot.tasks.events import Jobs
from bot.tasks.failures import Failure, describe_failure
from bot.tasks.files import TaskFiles
from bot.tasks.metrics import Metrics
from bot.tasks.models import EventType, TaskState
from bot.tasks.poller import Poller
from bot.tasks.queue_view import QueueView, RunTimes
from bot.tasks.requests import stored_request
from bot.tasks.results import DownloadError, ResultDownloader
from bot.tasks.schedule import PollSchedule
from bot.tasks.store import Stores, TaskStore, open_store
from bot.tasks.store.signals import LocalSignals
from kling_sim.simulator import KlingSimulator
from testing.callbacks import running_task
from testing.images import make_png
from testing.settings import settings_for
from testing.tracker_harness import Harness, origin, subject

RUNNING = {TaskState.SUBMITTED, TaskState.PROCESSING}


def _task(task_id: str, status: str) -> KlingTask:
    return KlingTask(task_id=task_id, task_status=status)


async def _kling_id(h: Harness, task_id: int) -> str:
    record = await h.wait_for_state(task_id, RUNNING | {TaskState.SUCCEED, TaskState.DELIVERED})
    assert record.kling_task_id
    return record.kling_task_id


# --- 1: expiry only after Kling answered ----------------------------------------------------


async def test_restart_after_downtime_longer_than_max_age_asks_kling_first(
    simulator: KlingSimulator,
) -> None:
    settings = settings_for(simulator, poll_first_delay=60.0, poll_max_interval=60.0)
    first = await Harness(settings).open()
    record = await first.submit()
    await first.wait_for_state(record.id, {TaskState.SUBMITTED})
    await first.kill()
    await first.store.close()
    await asyncio.sleep(1.0)  # the downtime, longer than the max age: Kling finishes meanwhile
    restarted = settings.model_copy(
        update={"poll_first_delay": 0.05, "poll_max_interval": 0.25, "task_max_age": 0.5}
    )
    second = await Harness(restarted).open()
    try:
        done = await second.wait_for_state(record.id, {TaskState.DELIVERED})
        assert done.failure_reason is None
        assert second.outcomes(EventType.COMPLETED) == [record.id]
        assert second.outcomes(EventType.FAILED) == []
    finally:
        await second.close()


# --- 2: failed downloads after Kling's success are retried ----------------------------------


def _cdn_outage(h: Harness) -> dict[str, Any]:
    """Every download attempt fails with a connection error while ``state["down"]``."""
    downloader = h.core.settler.downloader
    real = downloader._download_once
    state: dict[str, Any] = {"down": True, "failures": 0}

    async def flaky(session: aiohttp.ClientSession, url: str, index: int, directory: Path) -> Path:
        if state["down"]:
            state["failures"] += 1
            raise aiohttp.ClientConnectionError("connection refused")
        return await real(session, url, index, directory)

    downloader._download_once = flaky  # type: ignore[method-assign]
    downloader._attempts = 1  # no in-call retries: each poll is one attempt
    return state


async def test_a_cdn_outage_keeps_the_paid_task_running_and_retries_later(
    simulator: KlingSimulator,
) -> None:
    h = await Harness(settings_for(simulator)).open()
    outage = _cdn_outage(h)
    try:
        record = await h.submit()
        await h.wait_until(lambda: outage["failures"] >= 3)
        pending = await h.store.get(record.id)
        assert pending is not None and pending.state in RUNNING
        assert pending.kling_status == "succeed" and pending.result_urls
        assert h.outcomes(EventType.FAILED) == []
        outage["down"] = False
        done = await h.wait_for_state(record.id, {TaskState.DELIVERED})
        assert done.result_files == [f"results/{record.id}/0.png"]
        assert h.outcomes(EventType.COMPLETED) == [record.id]
        assert h.outcomes(EventType.FAILED) == []
    finally:
        await h.close()


async def test_a_restart_resumes_a_download_that_kept_failing(simulator: KlingSimulator) -> None:
    settings = settings_for(simulator)
    first = await Harness(settings).open()
    outage = _cdn_outage(first)
    record = await first.submit()
    await first.wait_until(lambda: outage["failures"] >= 2)
    await first.kill()
    await first.store.close()
    stored = await _reopen_get(settings, record.id)
    assert stored.state in RUNNING and stored.kling_status == "succeed"
    second = await Harness(settings).open()
    try:
        await second.wait_for_state(record.id, {TaskState.DELIVERED})
        assert second.outcomes(EventType.COMPLETED) == [record.id]
    finally:
        await second.close()


async def _reopen_get(settings: Any, task_id: int) -> Any:
    async with open_store(settings.database_url) as stores:
        return await stores.tasks.get(task_id)


async def test_download_retries_stop_at_the_download_deadline(
    simulator: KlingSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settle_module, "DOWNLOAD_GRACE_MIN", 0.6)
    h = await Harness(settings_for(simulator, task_max_age=0.3)).open()
    outage = _cdn_outage(h)
    try:
        record = await h.submit()
        await h.wait_until(lambda: h.outcomes(EventType.FAILED) == [record.id])
        failed = await h.store.get(record.id)
        assert failed is not None and failed.state in (TaskState.FAILED, TaskState.DELIVERED)
        assert "could not download" in (describe_failure(failed) or "")
        assert outage["failures"] >= 2  # retried before giving up
    finally:
        await h.close()


# --- 3: a queued task too big for a lowered limit -------------------------------------------


async def test_a_queued_task_too_big_for_a_lowered_limit_fails_at_start(
    simulator: KlingSimulator,
) -> None:
    settings = settings_for(simulator, kling_image_concurrency=4)
    first = await Harness(settings).open(start=False)  # admission not running: both stay queued
    big = await first.core.submit(
        TaskKind.IMAGE, ImageParams(prompt="x", n=4), [subject()], origin(1)
    )
    small = await first.core.submit(
        TaskKind.IMAGE, ImageParams(prompt="y", n=1), [subject()], origin(2)
    )
    await first.close()

    second = await Harness(settings.model_copy(update={"kling_image_concurrency": 2})).open()
    try:
        await second.wait_for_state(small.id, {TaskState.DELIVERED})
        failed = await second.wait_for_state(big.id, {TaskState.DELIVERED})
        assert "at most 2" in (describe_failure(failed) or "")
        assert second.outcomes(EventType.FAILED) == [big.id]  # announced once
        assert simulator.calls["create_image"] == 1
    finally:
        await second.close()


async def test_a_kill_between_the_row_and_its_images_fails_it_saying_no_credit_was_used(
    simulator: KlingSimulator,
) -> None:
    settings = settings_for(simulator)
    first = await Harness(settings).open(start=False)
    record = await first.core.submit(
        TaskKind.IMAGE, ImageParams(prompt="x"), [subject()], origin(1)
    )
    await first.store.set_inputs(record.id, [])  # as if killed before the images were saved
    await first.close()

    second = await Harness(settings).open()
    try:
        failed = await second.wait_for_state(record.id, {TaskState.DELIVERED})
        assert "no credits were used" in (describe_failure(failed) or "")
        assert second.outcomes(EventType.FAILED) == [record.id]
        assert simulator.calls["create_image"] == 0
    finally:
        await second.close()


# --- 4: the poller never loses a task -------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "exc"),
    [
        ("claim_due_polls", RuntimeError("database is locked")),  # the cycle's read fails
        ("count_tasks", ValueError("boom")),  # the whole kind's check fails
    ],
)
async def test_the_poller_keeps_due_tasks_scheduled_when_a_check_fails(
    simulator: KlingSimulator,
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    exc: Exception,
) -> None:
    h = await Harness(settings_for(simulator)).open()
    real = getattr(h.store, method)
    left = [1]

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        if left[0] > 0:
            left[0] -= 1
            raise exc
        return await real(*args, **kwargs)

    monkeypatch.setattr(h.store, method, flaky)
    try:
        record = await h.submit()
        done = await h.wait_for_state(record.id, {TaskState.DELIVERED})
        assert left == [0]
        assert done.state is TaskState.DELIVERED
    finally:
        await h.close()


# --- 5: admission does not spin on past times -----------------------------------------------


@pytest.fixture
async def stores(tmp_path: Path) -> Any:
    async with open_store(f"sqlite:///{tmp_path / 'tasks.db'}") as opened:
        yield opened


def _bare_admission(store: TaskStore, book: AdmissionBook | None = None) -> Admission:
    """Admission with one slot per kind and no creator: only its loop is exercised."""
    limits: dict[TaskKind, int | None] = {TaskKind.IMAGE: 1, TaskKind.VIDEO: 1}
    return Admission(
        store=store,
        claims=Claims(store, process_id="test"),
        creator=None,  # type: ignore[arg-type]  # nothing may be admitted
        book=book or AdmissionBook(),
        limits=limits,
        queue=QueueView(store, limits, RunTimes(), LocalSignals()),
        wake=asyncio.Event(),
    )


async def test_the_sleep_counts_only_future_times_and_an_expired_cap_is_lifted(
    stores: Stores,
) -> None:
    now = time.time()
    book = AdmissionBook(wakeups=[now - 5], caps={TaskKind.IMAGE: (1, now - 5)})
    admission = _bare_admission(stores.tasks, book)
    # Past: a freed slot wakes admission, not the clock; only the idle tick remains.
    assert admission._sleep_time() > IDLE_TICK - 0.5
    assert book.wakeups == []
    assert await admission._cap(TaskKind.IMAGE, now) is None
    assert book.caps == {}
    book.wakeups.append(now + 0.3)
    assert admission._sleep_time() <= 0.3


async def test_admission_does_not_spin_while_a_backed_off_head_waits_for_a_slot(
    stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = stores.tasks
    runner_up = await running_task_in(store, user_id=9)  # a running task holds the only slot
    assert runner_up.state is TaskState.PROCESSING
    queued = await queued_task_in(store, user_id=1)
    await store.update(queued.id, not_before=time.time() - 5)
    book = AdmissionBook(caps={TaskKind.IMAGE: (1, time.time() - 5)})
    admission = _bare_admission(store, book)
    steps = 0
    real = store.admit_next

    async def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal steps
        steps += 1
        return await real(*args, **kwargs)

    monkeypatch.setattr(store, "admit_next", counting)
    runner = asyncio.create_task(admission.run())
    await asyncio.sleep(0.5)
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)
    assert 1 <= steps < 5  # one step per kind, then the idle tick


async def queued_task_in(store: TaskStore, *, user_id: int) -> Any:
    from bot.tasks.models import Origin

    return await store.create(
        kind=TaskKind.IMAGE,
        provider="simulator",
        simulated=True,
        external_task_id=f"ext-{user_id}-{time.time()}",
        params={"prompt": "p"},
        input_labels=["subject1"],
        slots=1,
        origin=Origin(channel_id=1, user_id=user_id),
        callback_token=None,
    )


async def running_task_in(store: TaskStore, *, user_id: int) -> Any:
    record = await queued_task_in(store, user_id=user_id)
    await store.transition(
        record.id, [TaskState.QUEUED], TaskState.PROCESSING, kling_task_id=f"k-{record.id}"
    )
    return await store.get(record.id)


# --- 7: redirects are checked hop by hop ----------------------------------------------------


async def test_result_redirects_are_followed_by_hand_and_checked(tmp_path: Path) -> None:
    png = make_png()
    hits: dict[str, int] = {}

    async def handler(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        hits[name] = hits.get(name, 0) + 1
        targets = {
            "relative": "sub/ok.png",
            "private": "https://10.1.2.3/x.png",
            "plain": "http://example.com/x.png",
            "loop": "/r/loop",
        }
        if name in targets:
            raise web.HTTPFound(targets[name])
        return web.Response(body=png, content_type="image/png")

    app = web.Application()
    app.router.add_get("/r/{name}", handler)
    app.router.add_get("/r/sub/{name}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = unused_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    base = f"http://127.0.0.1:{port}/r"
    try:
        downloader = ResultDownloader(
            max_bytes=1 << 20, timeout=1, trusted_origin=base, base_delay=0.01
        )
        paths = await downloader.download_all([f"{base}/relative"], tmp_path / "1")
        assert paths[0].read_bytes() == png and hits["ok.png"] == 1
        for name in ("private", "plain"):
            with pytest.raises(DownloadError, match="refuses") as caught:
                await downloader.download_all([f"{base}/{name}"], tmp_path / name)
            assert caught.value.final
        with pytest.raises(DownloadError, match="redirected more than 5"):
            await downloader.download_all([f"{base}/loop"], tmp_path / "loop")
        assert hits["loop"] == 6
        with pytest.raises(DownloadError, match="private"):
            downloader.check_url("https://192.168.1.1/x.png")
    finally:
        await runner.cleanup()


# --- 12, 13: completions and callbacks racing the poller and admission ----------------------


async def test_a_poll_answer_during_a_running_completion_keeps_the_task_scheduled(
    simulator: KlingSimulator,
) -> None:
    h = await Harness(settings_for(simulator)).open(start=False)
    try:
        record = await running_task(h, "k1", state=TaskState.PROCESSING)
        held = await h.core.settler.claim(record)  # a callback's completion runs
        assert held is not None
        await h.core.poller._apply(record, _task("k1", "succeed"))
        after = await h.store.get(record.id)
        assert after is not None and after.state is TaskState.PROCESSING
        assert after.check_count == record.check_count + 1  # still checked, in case
        assert after.next_check_at is not None and after.claim_owner == held.token
    finally:
        await h.close()


async def test_a_failed_create_with_an_early_callback_is_treated_as_submitted(
    simulator: KlingSimulator,
) -> None:
    h = await Harness(settings_for(simulator)).open(start=False)
    try:
        record = await h.submit()
        h.core.early.offer(record.id, _task("k-early", "processing"))
        await h.core.creator._end_unsent(record, Failure(failures.NOT_SUBMITTED))
        fresh = await h.wait_for_state(record.id, RUNNING)
        assert fresh.kling_task_id == "k-early"
        assert await h.slots_used() == 1
        assert fresh.next_check_at is not None  # followed like any submitted task
        assert h.outcomes(EventType.FAILED) == []
    finally:
        await h.close()


# --- 14: a cancelled queued task whose create may have reached Kling ------------------------


async def test_a_cancelled_queued_task_created_at_kling_runs_to_cancelled_after_restart(
    simulator: KlingSimulator,
) -> None:
    settings = settings_for(simulator)
    first = await Harness(settings).open(start=False)
    record = await first.submit()
    request = await stored_request(record, first.core.inputs, settings)
    await first.client.create_task(request, retry_busy=False)  # reached Kling; answer lost
    await first.store.update(record.id, cancel_requested=True, submit_attempts=1)
    await first.close()

    second = await Harness(settings).open()
    try:
        assert await second.slots_used() == 1  # held while it is looked up, then while it runs
        done = await second.wait_for_state(record.id, {TaskState.CANCELLED})
        assert done.kling_task_id is not None and done.kling_status == "succeed"
        assert simulator.calls["create_image"] == 1
        assert second.outcomes(EventType.COMPLETED) == []
        assert await second.slots_used() == 0
    finally:
        await second.close()


async def test_a_cancelled_queued_task_unknown_to_kling_is_cancelled_after_a_lookup(
    simulator: KlingSimulator,
) -> None:
    settings = settings_for(simulator)
    first = await Harness(settings).open(start=False)
    record = await first.submit()
    await first.store.update(record.id, cancel_requested=True, submit_attempts=1)
    await first.close()

    second = await Harness(settings).open()
    try:
        done = await second.wait_for_state(record.id, {TaskState.CANCELLED})
        assert done.kling_task_id is None
        assert simulator.calls["get_image"] == 1  # looked up before cancelling
        assert simulator.calls["create_image"] == 0
    finally:
        await second.close()


# --- 10: file reads and base64 off the event loop -------------------------------------------


async def test_inputs_are_read_and_encoded_off_the_event_loop(
    simulator: KlingSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Image files (INPUT_STORAGE=files) are read in a thread; the database's images come
    through the store's own (aiosqlite's, asyncpg's network I/O)."""
    loop_thread = threading.current_thread()
    on_loop: list[str] = []
    reads: list[str] = []
    real_b64, real_read = requests_module.b64encode, TaskFiles.read_inputs

    def b64(data: bytes) -> bytes:
        if threading.current_thread() is loop_thread:
            on_loop.append("b64")
        return real_b64(data)

    def read(self: Any, *args: Any) -> Any:
        reads.append("read")
        if threading.current_thread() is loop_thread:
            on_loop.append("read")
        return real_read(self, *args)

    monkeypatch.setattr(requests_module, "b64encode", b64)
    monkeypatch.setattr(TaskFiles, "read_inputs", read)
    h = await Harness(settings_for(simulator, input_storage="files")).open(start=False)
    try:
        record = await h.submit()
        again = await h.core.resubmit(record.id, origin(1))
        await stored_request(again, h.core.inputs, h.settings)
        assert on_loop == [] and reads == ["read", "read"]  # resubmit's and the request's
    finally:
        await h.close()


# --- 8: the background loops stop when cancelled, whatever else happens at that moment ------


def _idle_poller(store: TaskStore) -> Poller:
    return Poller(
        store=store,  # empty: no cycle runs
        client=None,  # type: ignore[arg-type]
        settler=None,  # type: ignore[arg-type]
        claims=Claims(store, process_id="test"),
        jobs=Jobs(),
        metrics=Metrics(),
        schedule=PollSchedule(first_delay=1.0, max_interval=1.0, batch_window=0.1),
        concurrency=1,
        max_age=60,
        wake=asyncio.Event(),
    )


@pytest.mark.parametrize("steps", range(5))
async def test_the_poll_loop_stops_when_cancelled_just_as_it_is_woken(
    stores: Stores, steps: int
) -> None:
    """On Python 3.11 ``asyncio.wait_for`` swallows a cancel that arrives after the awaited
    event was set but before the waiting task resumed: the loop ran on and shutdown hung."""
    poller = _idle_poller(stores.tasks)
    loop_task = asyncio.create_task(poller.run())
    await asyncio.sleep(0.01)  # the loop is waiting for its next tick
    poller._wake.set()  # what a new check does
    for _ in range(steps):
        await asyncio.sleep(0)
    loop_task.cancel()
    done, _ = await asyncio.wait({loop_task}, timeout=3)
    assert loop_task in done and loop_task.cancelled()


@pytest.mark.parametrize("steps", range(5))
async def test_the_admission_loop_stops_when_cancelled_just_as_it_is_woken(
    stores: Stores, steps: int
) -> None:
    admission = _bare_admission(stores.tasks)
    loop_task = asyncio.create_task(admission.run())
    await asyncio.sleep(0.01)
    admission._wake.set()
    for _ in range(steps):
        await asyncio.sleep(0)
    loop_task.cancel()
    done, _ = await asyncio.wait({loop_task}, timeout=3)
    assert loop_task in done and loop_task.cancelled()
