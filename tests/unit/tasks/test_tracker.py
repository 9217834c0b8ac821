"""The tracker end to end over loopback, against the real simulator: callbacks, polling,
restarts, the admission limit, downloads and the poller's request budget."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pydantic
import pytest
from aiohttp import web
from aiohttp.test_utils import unused_port

from bot.kling.models import TaskKind
from bot.kling.params import ImageParams, VideoParams
from bot.tasks import poller as poller_module
from bot.tasks.failures import describe_failure
from bot.tasks.limits import SlotsExceedLimit
from bot.tasks.models import EventType, TaskEvent, TaskState
from bot.tasks.poller import spread
from bot.tasks.results import (
    DownloadError,
    ResultDownloader,
    download_results,
    kling_origin,
)
from bot.tasks.schedule import PollSchedule
from kling_sim.simulator import KlingSimulator
from testing.images import make_png
from testing.settings import settings_for
from testing.tracker_harness import (
    WAIT,
    Harness,
    callback_settings,
    harness,
    origin,
    subject,
)

# --- callbacks and polls -------------------------------------------------------------------


async def test_callbacks_alone_deliver_each_task_once_with_two_kling_calls(
    simulator: KlingSimulator,
) -> None:
    async with harness(callback_settings(simulator)) as h:
        records = [await h.submit(user_id=u) for u in (1, 2, 3)]
        ids = {r.id for r in records}
        await h.wait_until(lambda: set(h.outcomes(EventType.COMPLETED)) == ids)
        for record in records:
            done = await h.wait_for_state(record.id, {TaskState.DELIVERED})
            assert done.result_files == [f"results/{record.id}/0.png"]
            assert h.core.result_paths(done)[0].read_bytes().startswith(b"\x89PNG")
            assert done.credits == "1"
        # One create and one confirming GET per task; no poll ever ran.
        assert simulator.calls["create_image"] == 3
        assert simulator.calls["get_image"] == 3
        assert simulator.calls["list_image"] == 0
        assert h.core.poller.cycles == 0
        assert sorted(h.outcomes(EventType.COMPLETED)) == sorted(ids)
        # Every state was announced once, in order, for each task.
        states = [e.task.state for e in h.events if e.task.id == records[0].id]
        assert states[0] is TaskState.QUEUED and states[-1] is TaskState.DELIVERED
        assert TaskState.PROCESSING in states and TaskState.SUCCEED in states


async def test_polling_completes_tasks_whose_callbacks_never_arrive(
    simulator: KlingSimulator,
) -> None:
    simulator.config.faults.callback_drop_rate = 1.0
    settings = callback_settings(simulator, poll_first_delay=0.05, poll_interval_with_callbacks=0.2)
    async with harness(settings) as h:
        record = await h.submit()
        await h.wait_until(lambda: h.outcomes(EventType.COMPLETED) == [record.id])
        assert simulator.calls["callback_sent"] == 0
        assert simulator.calls["list_image"] >= 1
        done = await h.wait_for_state(record.id, {TaskState.DELIVERED})
        assert done.check_count >= 1


async def test_duplicated_and_reordered_callbacks_complete_once(
    simulator: KlingSimulator,
) -> None:
    simulator.config.faults.callback_duplicate_rate = 1.0
    simulator.config.faults.callback_reorder = True
    async with harness(callback_settings(simulator), deliver=False) as h:
        record = await h.submit()
        await h.wait_until(lambda: simulator.calls["callback_sent"] >= 6)
        await h.wait_until(lambda: h.outcomes(EventType.COMPLETED))
        await asyncio.sleep(0.2)  # room for any late duplicate to do damage
        assert h.outcomes(EventType.COMPLETED) == [record.id]
        final = await h.store.get(record.id)
        assert final is not None and final.state is TaskState.SUCCEED  # not moved back
        assert final.kling_status == "succeed"
        ignored = sum(
            n for (result, _), n in h.core.metrics.callbacks.items() if result == "ignored"
        )
        # The first final was news; its duplicate and the stale statuses after it were not.
        assert ignored == 5
        assert h.core.metrics.callbacks[("accepted", "")] == 1
        assert simulator.calls["get_image"] == 1  # one confirmation only


async def test_polling_only_without_a_public_url(simulator: KlingSimulator) -> None:
    async with harness(settings_for(simulator)) as h:
        record = await h.submit()
        await h.wait_for_state(record.id, {TaskState.DELIVERED})
        assert simulator.calls["callback_sent"] == 0
        stored = await h.store.get(record.id)
        assert stored is not None and stored.callback_token is None


# --- restarts ------------------------------------------------------------------------------


async def test_restart_after_a_kill_mid_task_completes_exactly_once(
    simulator: KlingSimulator,
) -> None:
    # The first tracker's poller waits 60 s: it is killed with the task running at Kling.
    settings = settings_for(simulator, poll_first_delay=60.0, poll_max_interval=60.0)
    first = await Harness(settings).open()
    record = await first.submit()
    await first.wait_for_state(record.id, {TaskState.SUBMITTED})
    await first.kill()
    await first.store.close()  # a dead process's connection (and SQLite lock) is gone

    # Same database and files; the new process polls at its normal pace.
    restarted = settings.model_copy(update={"poll_first_delay": 0.05, "poll_max_interval": 0.25})
    second = await Harness(restarted).open()
    try:
        await second.wait_for_state(record.id, {TaskState.DELIVERED})
        assert first.outcomes(EventType.COMPLETED) == []
        assert second.outcomes(EventType.COMPLETED) == [record.id]
        assert simulator.calls["create_image"] == 1  # resumed, never created twice
    finally:
        await second.close()
        await first.store.close()


async def test_restart_mid_download_downloads_again_and_completes_once(
    simulator: KlingSimulator,
) -> None:
    settings = settings_for(simulator)
    first = Harness(settings)
    await first.open(start=False)
    stuck = asyncio.Event()

    async def hang(task_id: int, urls: Any) -> list[str]:
        stuck.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    first.core.settler.downloader.download_all = hang  # type: ignore[method-assign]
    await first.core.start()
    record = await first.submit()
    await asyncio.wait_for(stuck.wait(), WAIT)
    mid = await first.store.get(record.id)
    assert mid is not None and mid.state is TaskState.PROCESSING
    assert mid.kling_status == "succeed" and mid.result_urls  # recorded before the download
    await first.kill()
    await first.store.close()  # a dead process's connection (and SQLite lock) is gone

    second = await Harness(settings).open()
    try:
        done = await second.wait_for_state(record.id, {TaskState.DELIVERED})
        assert second.core.result_paths(done)[0].exists()
        assert first.outcomes(EventType.COMPLETED) + second.outcomes(EventType.COMPLETED) == [
            record.id
        ]
    finally:
        await second.close()
        await first.store.close()


async def test_restart_reannounces_undelivered_results_but_never_delivered_ones(
    simulator: KlingSimulator,
) -> None:
    settings = settings_for(simulator)
    async with harness(settings, deliver=False) as first:
        a = await first.submit()
        b = await first.submit()
        await first.wait_until(lambda: len(first.outcomes(EventType.COMPLETED)) == 2)
        assert await first.core.mark_delivered(a.id)
        assert not await first.core.mark_delivered(a.id)  # only once
    async with harness(settings) as second:
        await second.wait_until(lambda: second.outcomes(EventType.COMPLETED))
        await asyncio.sleep(0.1)
        assert second.outcomes(EventType.COMPLETED) == [b.id]
        assert simulator.calls["create_image"] == 2


async def test_a_queued_task_interrupted_after_its_create_is_found_not_created_again(
    simulator: KlingSimulator,
) -> None:
    simulator.config.faults.lost_create_response_rate = 1.0
    simulator.config.faults.hang_seconds = 30.0
    settings = settings_for(simulator)
    first = await Harness(settings).open()
    record = await first.submit()
    await first.wait_until(lambda: simulator.calls["create_image"] == 1)
    stored = await first.store.get(record.id)
    assert stored is not None and stored.state is TaskState.QUEUED
    assert stored.submit_attempts == 1  # written before the create went out
    await first.kill()
    await first.store.close()  # a dead process's connection (and SQLite lock) is gone

    simulator.config.faults.lost_create_response_rate = 0.0
    second = await Harness(settings).open()
    try:
        done = await second.wait_for_state(record.id, {TaskState.DELIVERED})
        assert simulator.calls["create_image"] == 1
        assert done.kling_task_id in simulator.tasks
        assert second.outcomes(EventType.COMPLETED) == [record.id]
    finally:
        await second.close()
        await first.store.close()


# --- admission -----------------------------------------------------------------------------


async def test_admission_limit_is_fair_and_never_exceeded(simulator: KlingSimulator) -> None:
    simulator.config.image_concurrency = 2
    h = await Harness(settings_for(simulator, kling_image_concurrency=2)).open(start=False)
    try:
        # Member 1 asks for two tasks before member 2 asks for theirs; all four wait together.
        submitted = [await h.submit(user_id=u) for u in (1, 1, 2, 2)]
        ids = [r.id for r in submitted]
        stats = h.core.queue_stats()[TaskKind.IMAGE]
        assert (stats.queued, stats.limit) == (4, 2)
        assert [h.core.queue_position(i).position for i in ids] == [1, 3, 2, 4]  # type: ignore[union-attr]
        await h.core.start()
        await h.wait_until(lambda: len(h.outcomes(EventType.COMPLETED)) == 4)
        by_external = {r.external_task_id: r.id for r in submitted}
        created = [by_external[t.external_task_id] for t in simulator.tasks.values()]
        # Turns alternate between members: each member's first task before anyone's second.
        assert set(created[:2]) == {ids[0], ids[2]} and set(created[2:]) == {ids[1], ids[3]}
        # The simulator never had to refuse a task: we never went over its limit.
        assert not [k for k in h.core.metrics.kling_calls if k[1] == "1303"]
        assert simulator.calls["create_image"] == 4
    finally:
        await h.close()


async def test_kling_busy_sends_tasks_back_to_the_queue_until_a_slot_frees(
    simulator: KlingSimulator,
) -> None:
    simulator.config.image_concurrency = 2  # Kling knows a limit the bot was not told
    async with harness(settings_for(simulator)) as h:
        records = [await h.submit(user_id=u) for u in (1, 2, 3, 4)]
        await h.wait_until(lambda: len(h.outcomes(EventType.COMPLETED)) == 4, limit=15)
        assert h.core.metrics.kling_calls[("create_image", "1303")] >= 1
        assert h.outcomes(EventType.FAILED) == []
        rows = [await h.store.get(r.id) for r in records]
        bounced = [r for r in rows if r and r.submit_attempts > 1]
        assert bounced
        for row in bounced:  # back to the queue for at least a second, then created
            assert row.submitted_at is not None and row.submitted_at - row.created_at >= 1.0


async def test_a_task_needing_more_slots_than_the_limit_is_refused_at_submit(
    simulator: KlingSimulator,
) -> None:
    async with harness(settings_for(simulator, kling_image_concurrency=2)) as h:
        with pytest.raises(SlotsExceedLimit) as caught:
            await h.submit(n=4)
        assert "at most 2" in caught.value.user_message
        assert await h.store.count_tasks() == 0
        assert simulator.calls["create_image"] == 0


async def test_queue_position_and_cancel_of_a_queued_task(simulator: KlingSimulator) -> None:
    simulator.config.processing_seconds = 1.0
    async with harness(settings_for(simulator, kling_image_concurrency=1)) as h:
        running = await h.submit(user_id=1)
        waiting = await h.submit(user_id=2)
        last = await h.submit(user_id=3)
        await h.wait_for_state(running.id, {TaskState.SUBMITTED, TaskState.PROCESSING})
        position = h.core.queue_position(last.id)
        assert position is not None and (position.position, position.ahead) == (2, 1)
        assert position.estimated_wait == 120.0  # two turnovers of the default 60 s
        cancelled = await h.core.cancel(waiting.id)
        assert cancelled is not None and cancelled.state is TaskState.CANCELLED
        assert h.core.queue_position(last.id).position == 1  # type: ignore[union-attr]
        await h.wait_for_state(last.id, {TaskState.DELIVERED})
        assert waiting.id not in h.outcomes(EventType.COMPLETED)
        assert simulator.calls["create_image"] == 2


async def test_cancel_while_running_ends_cancelled_and_is_not_announced(
    simulator: KlingSimulator,
) -> None:
    async with harness(settings_for(simulator)) as h:
        record = await h.submit()
        await h.wait_for_state(record.id, {TaskState.SUBMITTED, TaskState.PROCESSING})
        requested = await h.core.cancel(record.id)
        assert requested is not None and requested.cancel_requested
        await h.wait_for_state(record.id, {TaskState.CANCELLED})
        assert h.outcomes(EventType.COMPLETED) == [] and h.outcomes(EventType.FAILED) == []
        assert await h.slots_used() == 0


# --- results -------------------------------------------------------------------------------


async def test_expired_result_urls_fail_the_task_with_the_reason(
    simulator: KlingSimulator,
) -> None:
    simulator.config.faults.expired_result_rate = 1.0
    async with harness(settings_for(simulator)) as h:
        record = await h.submit()
        await h.wait_until(lambda: h.outcomes(EventType.FAILED) == [record.id])
        failed = next(e.task for e in h.events if e.type is EventType.FAILED)
        assert (
            describe_failure(failed) == "Kling's result files are no longer available (HTTP 404)."
        )
        assert simulator.calls["result"] == 1  # a 404 is not retried


async def test_a_failed_kling_task_is_announced_with_kling_s_reason(
    simulator: KlingSimulator,
) -> None:
    simulator.config.faults.task_failure_rate = 1.0
    async with harness(settings_for(simulator)) as h:
        record = await h.submit()
        await h.wait_until(lambda: h.outcomes(EventType.FAILED) == [record.id])
        failed = await h.wait_for_state(record.id, {TaskState.DELIVERED})
        assert (describe_failure(failed) or "").startswith("Kling could not")
        assert simulator.calls["result"] == 0


async def test_plain_http_result_urls_are_refused_outside_the_simulator(
    simulator: KlingSimulator,
) -> None:
    # Kling named by another name than its result URLs use: results from elsewhere need https.
    local_name = simulator.base_url.replace("127.0.0.1", "localhost")
    async with harness(settings_for(simulator, kling_base_url=local_name)) as h:
        record = await h.submit()
        await h.wait_until(lambda: h.outcomes(EventType.FAILED) == [record.id])
        failed = next(e.task for e in h.events if e.type is EventType.FAILED)
        assert "only https" in (describe_failure(failed) or "")
        assert simulator.calls["result"] == 0


async def test_tasks_older_than_the_maximum_age_fail(simulator: KlingSimulator) -> None:
    simulator.config.processing_seconds = 30.0
    async with harness(settings_for(simulator, task_max_age=0.3)) as h:
        record = await h.submit()
        await h.wait_until(lambda: h.outcomes(EventType.FAILED) == [record.id])
        failed = next(e.task for e in h.events if e.type is EventType.FAILED)
        assert describe_failure(failed) == "Kling did not finish within 0.3 seconds."


async def test_downloads_retry_server_errors_and_cap_the_size(tmp_path: Path) -> None:
    hits: Counter[str] = Counter()
    png = make_png()

    async def flaky(request: web.Request) -> web.Response:
        hits["flaky"] += 1
        if hits["flaky"] < 3:
            return web.Response(status=503)
        return web.Response(body=png, content_type="image/png")

    async def huge(request: web.Request) -> web.StreamResponse:
        hits["huge"] += 1
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(8):
            await response.write(b"x" * 1024)
        return response

    app = web.Application()
    app.router.add_get("/flaky", flaky)
    app.router.add_get("/huge.mp4", huge)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = unused_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    base = f"http://127.0.0.1:{port}"
    try:
        downloader = ResultDownloader(
            max_bytes=4096, timeout=5, trusted_origin=base, base_delay=0.01
        )
        paths = await downloader.download_all([f"{base}/flaky"], tmp_path / "7")
        assert paths == [tmp_path / "7" / "0.png"]  # extension from the content type
        assert hits["flaky"] == 3
        assert paths[0].read_bytes() == png
        with pytest.raises(DownloadError, match="larger than"):
            await download_results(
                [f"{base}/huge.mp4"], tmp_path / "8", max_bytes=4096, timeout=5,
                trusted_origin=base,
            )  # fmt: skip
        assert hits["huge"] == 1
        assert list((tmp_path / "8").iterdir()) == []  # no partial file left
        with pytest.raises(DownloadError, match="only https"):
            ResultDownloader(max_bytes=4096, timeout=5).check_url(f"{base}/flaky")
    finally:
        await runner.cleanup()


# --- the poller's request budget -----------------------------------------------------------


async def test_fifty_pending_tasks_cost_one_list_call_per_poll_cycle(
    simulator: KlingSimulator,
) -> None:
    simulator.config.processing_seconds = 1.5
    settings = settings_for(simulator, poll_first_delay=0.2, poll_max_interval=0.3)
    async with harness(settings) as h:
        records = [await h.submit(user_id=i % 7) for i in range(50)]
        await h.wait_until(lambda: len(h.outcomes(EventType.COMPLETED)) == 50, limit=30)
        cycles = h.core.poller.cycles
        assert cycles >= 2
        # Every cycle asked about all its due tasks with ONE list call; never one by one.
        assert simulator.calls["list_image"] == cycles
        assert simulator.calls["get_image"] == 0
        assert h.core.metrics.polls[("image", "list")] == cycles
        assert h.core.metrics.polls[("image", "get")] == 0
        assert simulator.calls["create_image"] == len(records)
        print(f"\n50 pending: {cycles} poll cycles, {simulator.calls['list_image']} list calls")


async def test_one_cycle_settles_every_due_task_with_one_list_call(
    simulator: KlingSimulator,
) -> None:
    simulator.config.processing_seconds = 0.3
    # The poll loop idles (first check in a minute); the test drives one cycle by hand.
    settings = settings_for(simulator, poll_first_delay=60.0, poll_max_interval=60.0)
    async with harness(settings) as h:
        records = [await h.submit(user_id=i) for i in range(50)]
        for record in records:
            await h.wait_for_state(record.id, {TaskState.SUBMITTED})
        await asyncio.sleep(0.5)  # all have ended at Kling
        before = Counter(simulator.calls)
        checked = await h.core.poller.run_cycle(time.time() + 120)
        assert checked == 50
        assert simulator.calls["list_image"] - before["list_image"] == 1
        assert simulator.calls["get_image"] - before["get_image"] == 0
        await h.wait_until(lambda: len(h.outcomes(EventType.COMPLETED)) == 50, limit=30)


async def test_due_tasks_on_older_list_pages_are_reached_by_reading_on(
    simulator: KlingSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kling lists newest first, so the oldest tasks are on the last page and page 1 may hold
    none of the due ones: the cycle must read on to them, not fall back to one query each.
    Scaled down: pages of 20 tasks instead of 500."""
    monkeypatch.setattr(poller_module, "LIST_PAGE_MAX", 20)
    monkeypatch.setattr(poller_module, "LIST_PAGE_MIN", 5)
    simulator.config.processing_seconds = 0.3
    # The poll loop idles (first check in a minute); the test drives one cycle by hand.
    settings = settings_for(simulator, poll_first_delay=60.0, poll_max_interval=60.0)
    async with harness(settings) as h:
        records = [await h.submit(user_id=i % 9) for i in range(100)]
        for record in records:
            await h.wait_for_state(record.id, {TaskState.SUBMITTED})
        await asyncio.sleep(0.5)  # all have ended at Kling
        poller = h.core.poller
        # Only the 12 oldest are due in the cycle run here; the rest much later. (The poll loop
        # itself sleeps on: nothing is due for it before then.)
        at = time.time() + 500
        for record in records:
            await h.store.update(record.id, next_check_at=at if record.id <= 12 else at + 500)
        before = Counter(simulator.calls)
        assert await poller.run_cycle(at + 60) == 12
        lists = simulator.calls["list_image"] - before["list_image"]
        assert simulator.calls["get_image"] - before["get_image"] == 0
        assert 2 <= lists <= 6  # pages of 20 back to the oldest of 100 tasks
        await h.wait_until(lambda: len(h.outcomes(EventType.COMPLETED)) == 12, limit=30)
        assert sorted(h.outcomes(EventType.COMPLETED)) == list(range(1, 13))


def test_checks_of_thousands_of_pending_tasks_gather_into_few_cycles(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past one list page of pending tasks every cycle reads many pages, so checks are
    rounded up onto a grid of half the longest interval: a few large cycles, not one per task.
    Scaled down: pages of 20 tasks instead of 500."""
    monkeypatch.setattr(poller_module, "LIST_PAGE_MAX", 20)
    schedule = PollSchedule(first_delay=1.0, max_interval=4.0, batch_window=0.1)
    rng = random.Random(7)
    asked = {task_id: 1000 + rng.uniform(0, 20) for task_id in range(1, 201)}
    # Up to one page pending: each check when it is due.
    assert all(spread(asked[i], 20, schedule) == asked[i] for i in range(1, 22))
    due = {i: spread(asked[i], 200, schedule) for i in asked}
    assert set(due.values()) <= {1000.0 + 2 * k for k in range(11)}  # on the grid,
    assert all(asked[i] <= due[i] < asked[i] + 2 for i in asked)  # never early, < a step late


async def test_the_safety_net_leaves_alone_tasks_whose_callbacks_arrive(
    simulator: KlingSimulator,
) -> None:
    """A task's ``processing`` callback shows callbacks reach us for it: its safety-net check
    moves out to the longest interval, so a task that ends before then costs no poll."""
    simulator.config.submitted_seconds = 0.05
    simulator.config.processing_seconds = 1.3  # ends 1.35 s after submit
    # First safety-net check 1.0 s after submit; the longest interval 2.0 s.
    settings = callback_settings(simulator, poll_interval_with_callbacks=2.0)
    async with harness(settings) as h:
        records = [await h.submit(user_id=i) for i in range(5)]
        await h.wait_until(lambda: len(h.outcomes(EventType.COMPLETED)) == 5, limit=20)
        assert h.core.poller.cycles == 0
        assert simulator.calls["list_image"] == 0
        assert simulator.calls["get_image"] == len(records)  # the confirming GETs only


# --- files ---------------------------------------------------------------------------------


async def test_resubmit_and_retention_cleanup(simulator: KlingSimulator) -> None:
    async with harness(settings_for(simulator, retention_days=1)) as h:
        record = await h.submit()
        done = await h.wait_for_state(record.id, {TaskState.DELIVERED})
        again = await h.core.resubmit(record.id, origin(2))
        assert again.params == done.params and again.input_labels == ["subject1"]
        assert await h.core.input_bytes(again) == await h.core.input_bytes(done)
        await h.wait_for_state(again.id, {TaskState.DELIVERED})
        retention = h.core.retention
        assert await retention.cleanup_files() == 0  # too recent
        retention.clock = lambda: time.time() + 2 * 86400
        assert await retention.cleanup_files() == 4  # inputs and results of both tasks
        assert not h.core.result_paths(done)[0].exists()
        # Each old task is handled once: the next hourly run selects nothing at all.
        assert await h.store.files_due_for_removal(time.time() + 2 * 86400) == []
        assert await retention.cleanup_files() == 0
        with pytest.raises(FileNotFoundError, match="deleted after 1 days"):
            await h.core.resubmit(record.id, origin(2))


async def test_a_video_task_and_a_failing_subscriber(simulator: KlingSimulator) -> None:
    async with harness(settings_for(simulator)) as h:

        async def broken(event: TaskEvent) -> None:
            raise RuntimeError("a subscriber bug")

        h.core.bus.subscribers.insert(0, broken)  # runs first, fails every time
        images = [subject("image1"), subject("image2")]
        record = await h.core.submit(
            TaskKind.VIDEO, VideoParams(prompt="waves", duration="5"), images, origin()
        )
        assert record.slots == 1 and record.input_labels == ["image1", "image2"]
        done = await h.wait_for_state(record.id, {TaskState.DELIVERED}, limit=30)
        assert done.result_files == [f"results/{record.id}/0.mp4"]
        assert simulator.calls["list_video"] >= 1 and simulator.calls["list_image"] == 0


async def test_invalid_parameters_are_refused_before_anything_is_stored(
    simulator: KlingSimulator,
) -> None:
    async with harness(settings_for(simulator)) as h:
        with pytest.raises(pydantic.ValidationError):
            await h.submit(aspect_ratio="5:4")
        with pytest.raises(pydantic.ValidationError):
            await h.core.submit(
                TaskKind.VIDEO,
                VideoParams.model_validate({}),  # no prompt
                [subject("image1")],
                origin(),
            )
        with pytest.raises(pydantic.ValidationError):  # no subject image: no valid request
            await h.core.submit(
                TaskKind.IMAGE, ImageParams(prompt="x"), [subject("scene")], origin()
            )
        assert await h.store.count_tasks() == 0
        assert simulator.calls["create_image"] + simulator.calls["create_video"] == 0


def test_results_are_trusted_from_klings_own_configured_origin(
    simulator: KlingSimulator,
) -> None:
    assert kling_origin(settings_for(simulator)) == simulator.base_url
    local_official = settings_for(simulator, kling_provider="official")  # base URL on loopback
    assert kling_origin(local_official) == simulator.base_url
    default = settings_for(simulator, kling_provider="official", kling_base_url=None)
    assert kling_origin(default) == "https://api-singapore.klingai.com"
