"""Tasks created straight in a store, for the tests of the store itself."""

from __future__ import annotations

import os

from bot.kling.models import TaskKind
from bot.tasks.models import Origin, TaskRecord
from bot.tasks.store import TaskStore


async def create_tasks(store: TaskStore, n: int = 1) -> list[TaskRecord]:
    """``n`` image tasks created in ``store``, each with a fresh external id."""
    records = []
    for _ in range(n):
        records.append(
            await store.create(
                kind=TaskKind.IMAGE,
                provider="simulator",
                simulated=True,
                external_task_id=os.urandom(8).hex(),
                params={"prompt": "a cat"},
                input_labels=[],
                slots=1,
                origin=Origin(channel_id=1, user_id=1),
                callback_token=None,
            )
        )
    return records
