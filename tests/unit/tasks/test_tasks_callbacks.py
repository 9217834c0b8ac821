"""CALLBACK_CONFIRM against the simulator: a terminal callback completes a task only once Kling
confirms it (or at once when confirming is off), and a confirmation that cannot be had leaves
the task to the poller, which completes it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from bot.kling.models import TaskKind
from bot.tasks.models import EventType, TaskState
from kling_sim.simulator import ApiError, KlingSimulator, SimulatorConfig
from testing.tracker_harness import Harness, callback_settings, harness

RUNNING = {TaskState.SUBMITTED, TaskState.PROCESSING}


class FailingGetSimulator(KlingSimulator):
    """The simulator, answering the next ``failing_gets`` single-task queries with a 500."""

    def __init__(self, config: SimulatorConfig) -> None:
        super().__init__(config)
        self.failing_gets = 0
        self.failed_gets = 0

    async def _get(self, request: web.Request, kind: TaskKind, flavour: str) -> dict[str, Any]:
        if self.failing_gets > 0:
            self.failing_gets -= 1
            self.failed_gets += 1
            raise ApiError(500, 5000, "internal server error")
        return await super()._get(request, kind, flavour)


@pytest.fixture
async def failing() -> AsyncIterator[FailingGetSimulator]:
    async with FailingGetSimulator(
        SimulatorConfig(submitted_seconds=0.05, processing_seconds=0.2, seed=7)
    ) as sim:
        yield sim


async def test_without_confirmation_the_callback_alone_completes_the_task(
    simulator: KlingSimulator,
) -> None:
    async with harness(callback_settings(simulator, callback_confirm=False)) as h:
        record = await h.submit()
        done = await h.wait_for_state(record.id, {TaskState.DELIVERED})
        assert done.result_files == [f"results/{record.id}/0.png"]
        assert h.outcomes(EventType.COMPLETED) == [record.id]
        assert simulator.calls["get_image"] == 0  # no confirming GET, no poll
        assert simulator.calls["list_image"] == 0


async def test_a_terminal_callback_kling_does_not_confirm_completes_nothing(
    simulator: KlingSimulator,
) -> None:
    """A callback with a valid token says "succeed" while Kling still says processing (a stale
    relay, a replay, or a forgery that got the URL): the confirming GET wins."""
    simulator.config.processing_seconds = 30.0
    h = await Harness(callback_settings(simulator)).open()
    try:
        record = await h.submit()
        running = await h.wait_for_state(record.id, RUNNING)
        kling = simulator.tasks[running.kling_task_id or ""]
        claim = {
            "task_id": running.kling_task_id,
            "task_status": "succeed",
            "task_info": {"external_task_id": running.external_task_id},
            "task_result": {"images": [{"index": 0, "url": f"{simulator.base_url}/x/0.png"}]},
        }
        url = f"{h.settings.public_base_url}/kling/callback/{running.callback_token}"
        async with h.session.post(url, json=claim) as response:
            assert response.status == 200
        await h.wait_until(lambda: simulator.calls["get_image"] == 1)  # the confirmation
        await asyncio.sleep(0.2)  # room for a wrong completion to happen
        after = await h.store.get(record.id)
        assert after is not None and after.state in RUNNING
        assert after.kling_status != "succeed" and after.result_urls == []
        assert h.outcomes(EventType.COMPLETED) == [] and h.outcomes(EventType.FAILED) == []
        assert simulator.calls["result"] == 0  # nothing downloaded
        assert kling.status.value == "processing"
    finally:
        await h.close()


async def test_a_failed_confirmation_leaves_the_task_to_the_poller(
    failing: FailingGetSimulator,
) -> None:
    # Safety-net polls are a minute apart: only the failed confirmation brings one forward.
    settings = callback_settings(failing, kling_max_attempts=1, poll_interval_with_callbacks=60.0)
    async with harness(settings) as h:
        failing.failing_gets = 1
        record = await h.submit()
        done = await h.wait_for_state(record.id, {TaskState.DELIVERED})
        assert failing.failed_gets == 1  # the confirming GET failed
        assert failing.calls["list_image"] >= 1  # and the poller settled it
        assert done.result_files == [f"results/{record.id}/0.png"]
        assert h.outcomes(EventType.COMPLETED) == [record.id]
        assert h.outcomes(EventType.FAILED) == []
