"""The poller against the simulator: the single-GET path (flavours that cannot list, and tasks
a list page misses), its concurrency bound, expiry (and its respect for a running completion),
the back-off schedule, and checking every running task at once after a restart."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import unused_port

from bot.kling.models import TaskKind
from bot.tasks.failures import describe_failure
from bot.tasks.models import EventType, TaskRecord, TaskState
from bot.tasks.results import ResultDownloader
from bot.tasks.schedule import PollSchedule
from kling_sim.simulator import KlingSimulator, SimulatorConfig
from testing.callbacks import running_task
from testing.images import make_png
from testing.settings import settings_for
from testing.tracker_harness import Harness, callback_settings, harness

PROCESSING = TaskState.PROCESSING
RUNNING = {TaskState.SUBMITTED, TaskState.PROCESSING}
IDLE_POLLS = {"poll_first_delay": 60.0, "poll_max_interval": 60.0}  # the test drives cycles


class CountingSimulator(KlingSimulator):
    """The simulator, counting single-task queries in flight (each held ``get_delay``) and
    hiding chosen tasks from list pages."""

    def __init__(self, config: SimulatorConfig) -> None:
        super().__init__(config)
        self.get_delay = 0.0
        self.in_flight = 0
        self.most_in_flight = 0
        self.got: list[str] = []
        self.hidden_from_list: set[str] = set()

    async def _get(self, request: web.Request, kind: TaskKind, flavour: str) -> dict[str, Any]:
        self.got.append(request.match_info["id"])
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.get_delay)
            return await super()._get(request, kind, flavour)
        finally:
            self.in_flight -= 1

    async def _list(self, request: web.Request, kind: TaskKind, flavour: str) -> list[Any]:
        page = await super()._list(request, kind, flavour)
        return [task for task in page if task["task_id"] not in self.hidden_from_list]


@pytest.fixture
async def counting() -> AsyncIterator[CountingSimulator]:
    async with CountingSimulator(
        SimulatorConfig(submitted_seconds=0.05, processing_seconds=30.0, seed=99)
    ) as sim:
        yield sim


def gateway_settings(sim: KlingSimulator, **overrides: Any) -> Any:
    """The gateway flavour (Bearer key, ``/kling/v1/...``, no list endpoint) on the simulator."""
    return settings_for(
        sim, kling_provider="gateway", kling_api_key="sim-api-key", **IDLE_POLLS, **overrides
    )


async def _submitted(h: Harness, count: int) -> list[TaskRecord]:
    """``count`` tasks running at Kling, each with its first check on the poller's schedule."""
    records = [await h.submit(user_id=i) for i in range(count)]
    running = [await h.wait_for_state(r.id, RUNNING) for r in records]
    assert all(r.next_check_at is not None for r in running)  # stored with the state
    return running


# --- one GET per due task where the flavour cannot list --------------------------------------


async def test_a_gateway_poll_makes_one_get_per_due_task_per_cycle_and_no_list(
    counting: CountingSimulator,
) -> None:
    async with harness(gateway_settings(counting)) as h:
        records = await _submitted(h, 3)
        poller = h.core.poller
        for cycle in (1, 2):
            before = Counter(counting.calls)
            assert await poller.run_cycle(time.time() + 200 * cycle) == 3
            assert counting.calls["get_image"] - before["get_image"] == 3
            assert counting.calls["list_image"] == 0
        assert sorted(counting.got) == sorted(2 * [r.kling_task_id for r in records])
        assert h.core.metrics.polls == Counter({("image", "get"): 6})
        assert poller.cycles == 2


async def test_poll_concurrency_bounds_the_gets_in_flight(counting: CountingSimulator) -> None:
    counting.get_delay = 0.1  # long enough for the queries of one cycle to overlap
    async with harness(gateway_settings(counting, poll_concurrency=2)) as h:
        await _submitted(h, 6)
        started = time.monotonic()
        assert await h.core.poller.run_cycle(time.time() + 200) == 6
        assert counting.calls["get_image"] == 6
        assert counting.most_in_flight == 2  # bounded, and the bound is used
        assert time.monotonic() - started >= 0.3  # three rounds of two


async def test_a_due_task_missing_from_the_list_page_costs_exactly_one_get(
    counting: CountingSimulator,
) -> None:
    async with harness(settings_for(counting, **IDLE_POLLS)) as h:
        records = await _submitted(h, 5)
        missing = records[2].kling_task_id
        assert missing is not None
        counting.hidden_from_list = {missing}
        assert await h.core.poller.run_cycle(time.time() + 200) == 5
        assert counting.calls["list_image"] == 1
        assert counting.calls["get_image"] == 1 and counting.got == [missing]


# --- expiry ------------------------------------------------------------------------------------


async def test_a_task_unknown_to_kling_fails_only_once_it_is_too_old(
    simulator: KlingSimulator,
) -> None:
    settings = settings_for(simulator, task_max_age=5.0, **IDLE_POLLS)
    h = await Harness(settings).open(start=False)
    try:
        now = time.time()
        old = await running_task(h, "404-old", state=PROCESSING, submitted_at=now - 60, token=False)
        young = await running_task(h, "404-young", state=PROCESSING, submitted_at=now, token=False)
        await h.core.start()
        await h.wait_until(lambda: h.outcomes(EventType.FAILED) == [old.id])
        failed = await h.wait_for_state(old.id, {TaskState.DELIVERED})
        assert describe_failure(failed) == "Kling did not finish within 5 seconds."
        assert simulator.calls["get_image"] == 2  # neither was on the list: one query each
        still = await h.store.get(young.id)
        assert still is not None and still.state in RUNNING  # unknown, but may yet appear
        assert still.next_check_at is not None and still.check_count >= 1  # and still checked
    finally:
        await h.close()


async def _result_server(release: asyncio.Event, hits: Counter[str]) -> web.AppRunner:
    png = make_png()

    async def slow(request: web.Request) -> web.Response:
        hits["slow"] += 1
        await release.wait()
        return web.Response(body=png, content_type="image/png")

    app = web.Application()
    app.router.add_get("/slow.png", slow)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    return runner


async def test_expiry_leaves_alone_a_task_whose_callback_download_runs(
    simulator: KlingSimulator,
) -> None:
    """A success callback starts the download; meanwhile the (too old) task is unknown to
    Kling. The expiry must wait for the completion, not fail a paid task: the poller leaves a
    task alone while another worker holds its completion, and an expiry cannot claim it."""
    release, hits = asyncio.Event(), Counter[str]()
    runner = await _result_server(release, hits)
    port = unused_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    settings = callback_settings(simulator, callback_confirm=False, task_max_age=5.0)
    h = await Harness(settings).open(start=False)
    # The slow result lives on a local test server: trusted like Kling's own origin would be.
    h.core.settler.downloader = ResultDownloader(
        max_bytes=settings.download_max_bytes,
        timeout=settings.download_timeout,
        trusted_origin=f"http://127.0.0.1:{port}",
    )
    try:
        record = await running_task(h, "gone-1", state=PROCESSING, submitted_at=time.time() - 60)
        body = {
            "task_id": "gone-1",
            "task_status": "succeed",
            "task_info": {"external_task_id": record.external_task_id},
            "task_result": {"images": [{"index": 0, "url": f"http://127.0.0.1:{port}/slow.png"}]},
        }
        path = f"{settings.public_base_url}/kling/callback/{record.callback_token}"
        async with h.session.post(path, json=body) as response:
            assert response.status == 200
        await h.wait_until(lambda: hits["slow"] == 1)  # the download hangs

        await h.core.start()  # a restart: every running task is due for a check at once
        await asyncio.sleep(0.5)
        during = await h.store.get(record.id)
        assert during is not None and during.state in RUNNING
        assert simulator.calls["get_image"] == 0  # held by the completion: not polled
        assert not await h.core.settler.expire(during)  # nor failed by an expiry
        assert h.outcomes(EventType.FAILED) == []
        assert during.next_check_at is not None  # still checked, in case it does not end it

        release.set()
        done = await h.wait_for_state(record.id, {TaskState.DELIVERED})
        assert done.failure_reason is None and done.result_files
        assert h.outcomes(EventType.COMPLETED) == [record.id]
        assert h.outcomes(EventType.FAILED) == []
    finally:
        release.set()
        await h.close()
        await runner.cleanup()


# --- the schedule ------------------------------------------------------------------------------


def test_poll_intervals_start_near_the_first_delay_double_and_stop_at_the_maximum() -> None:
    schedule = PollSchedule(first_delay=2.0, max_interval=30.0, batch_window=0.5)
    samples = {count: [schedule.interval(count) for _ in range(300)] for count in range(8)}
    assert all(1.7 <= s <= 2.3 for s in samples[0])  # first_delay +-15%
    for count in (1, 2, 3):  # x2 each check
        base = 2.0 * 2**count
        assert all(0.85 * base <= s <= 1.15 * base for s in samples[count])
        ratio = statistics.mean(samples[count]) / statistics.mean(samples[count - 1])
        assert 1.8 < ratio < 2.2
    for count in (4, 5, 7):  # 32 s and more: capped at 30, jitter below the cap only
        assert all(0.85 * 30.0 <= s <= 30.0 for s in samples[count])
    assert schedule.interval(10_000) <= 30.0  # no overflow far out
    for count in (0, 3, 7):  # jittered, so tasks submitted together spread out
        assert len(set(samples[count])) > 100
        assert statistics.pstdev(samples[count]) > 0.01 * statistics.mean(samples[count])


async def test_a_restart_checks_every_running_task_at_once_in_one_list_call(
    simulator: KlingSimulator,
) -> None:
    """Callbacks sent while the bot was down are lost: the stored schedule is not waited for."""
    simulator.config.processing_seconds = 30.0
    settings = settings_for(simulator, **IDLE_POLLS)
    async with harness(settings) as first:
        tasks = await _submitted(first, 3)
    now = time.time()
    second = await Harness(settings).open(start=False)
    try:
        for task in tasks:
            await second.store.update(task.id, next_check_at=now + 100)
        simulator.reset_counters()
        await second.core.start()
        await second.wait_until(lambda: second.core.poller.cycles == 1)
        assert simulator.calls["list_image"] == 1 and simulator.calls["get_image"] == 0
        for task in tasks:  # checked, and scheduled again from now
            checked = await second.store.get(task.id)
            assert checked is not None and checked.next_check_at is not None
            assert checked.next_check_at < now + 100
    finally:
        await second.close()
