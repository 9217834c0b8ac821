"""Coordination lives in the store: two task cores on one PostgreSQL database (two processes,
as the scale-out runs them; SQLite serves one) share the work without doubling any of it."""

from __future__ import annotations

import time

from bot.kling.models import TaskKind
from bot.tasks.models import EventType, TaskState
from kling_sim.simulator import KlingSimulator
from testing.settings import settings_for
from testing.tracker_harness import Harness


async def test_two_cores_on_one_database_share_the_slots_and_create_and_end_each_task_once(
    simulator: KlingSimulator, postgres_url: str
) -> None:
    simulator.config.image_concurrency = 2  # Kling refuses a third task at once (1303)
    settings = settings_for(simulator, kling_image_concurrency=2, database_url=postgres_url)
    first = await Harness(settings).open()
    second = await Harness(settings).open()
    try:
        records = [await (first, second)[i % 2].submit(user_id=i) for i in range(8)]
        ids = {record.id for record in records}

        def completed() -> list[int]:
            return first.outcomes(EventType.COMPLETED) + second.outcomes(EventType.COMPLETED)

        await first.wait_until(lambda: set(completed()) == ids, limit=30)
        assert sorted(completed()) == sorted(ids)  # each completed once, by one of them
        for record in records:
            await first.wait_for_state(record.id, {TaskState.DELIVERED})
        assert simulator.calls["create_image"] == len(records)  # each created once
        # The slots were counted across both: neither went over the account's limit.
        busy = [
            key
            for core in (first.core, second.core)
            for key in core.metrics.kling_calls
            if key[1] == "1303"
        ]
        assert busy == []
        assert await first.store.slots_in_use(TaskKind.IMAGE, time.time()) == 0
    finally:
        await second.close()
        await first.close()
