"""What the store contract suites share: a hand clock, the store factories (SQLite and
PostgreSQL), and a maker of tasks. The fixtures over them are in tests/unit/store/conftest.py.

A factory builds the stores of a fresh, empty database (one per test); called again it opens
the same database, as another process would. The PostgreSQL factory takes the test's own
database from the ``postgres_url`` fixture (tests/conftest.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bot.kling.models import TaskKind
from bot.tasks.models import Origin, TaskRecord
from bot.tasks.store import Stores, TaskStore, open_store


class Clock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


Factory = Callable[[Path, Clock], Stores]


def sqlite_stores(request: pytest.FixtureRequest) -> Factory:
    return lambda folder, clock: open_store(f"sqlite:///{folder / 'contract.db'}", clock=clock)


def postgres_stores(request: pytest.FixtureRequest) -> Factory:
    url = request.getfixturevalue("postgres_url")  # the test's own database
    return lambda folder, clock: open_store(url, clock=clock)


FACTORIES = [
    pytest.param(sqlite_stores, id="sqlite"),
    pytest.param(postgres_stores, id="postgres"),
]


class Maker:
    """Creates tasks with distinct ids; fields beyond create()'s are set with update()."""

    def __init__(self, store: TaskStore) -> None:
        self.store = store
        self.count = 0

    async def __call__(
        self, user_id: int = 1, *, slots: int = 1, kind: TaskKind = TaskKind.IMAGE, **fields: Any
    ) -> TaskRecord:
        self.count += 1
        record = await self.store.create(
            kind=kind,
            provider="simulator",
            simulated=True,
            external_task_id=f"ext-{self.count}",
            params={"prompt": f"task {self.count}", "n": slots},
            input_labels=["subject1"],
            slots=slots,
            origin=Origin(channel_id=7, user_id=user_id, guild_id=3),
            callback_token=f"token-{self.count}",
        )
        if fields:
            await self.store.update(record.id, **fields)
        fresh = await self.store.get(record.id)
        assert fresh is not None
        return fresh
