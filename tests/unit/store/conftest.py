"""Fixtures of the store's tests: databases as older bots left them, and the contract suites'
``stores`` on every implementation (``testing.store_contract.FACTORIES``)."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from bot.tasks.store import SqliteTaskStore, Stores, TaskStore, schema
from testing.store_contract import FACTORIES, Clock, Factory, Maker

OldDatabase = Callable[..., None]


def _build_old_database(
    path: Path, version: int, rows: list[Mapping[str, Any]] = (), delete: list[int] = ()
) -> None:
    """The file a bot at schema ``version`` made: the released scripts up to it, run as they
    are, then ``rows`` inserted as that bot wrote them (the columns its schema had; the rest
    take their defaults), then the ids in ``delete`` removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(path, isolation_level=None)) as raw:
        for script in schema.MIGRATIONS[:version]:
            for statement in schema.statements(script):
                raw.execute(statement)
        raw.execute(f"PRAGMA user_version = {version}")
        for row in rows:
            names = ", ".join(row)
            marks = ", ".join("?" * len(row))
            raw.execute(f"INSERT INTO tasks ({names}) VALUES ({marks})", list(row.values()))
        for task_id in delete:
            raw.execute("DELETE FROM tasks WHERE id = ?", (task_id,))


@pytest.fixture
def old_database() -> OldDatabase:
    return _build_old_database


def old_row(task_id: int, state: str = "queued", **fields: Any) -> dict[str, Any]:
    """A task row with what every schema version requires."""
    return {
        "id": task_id,
        "kind": "image",
        "provider": "simulator",
        "simulated": 1,
        "external_task_id": f"ext-{task_id}",
        "state": state,
        "slots": 1,
        "channel_id": 1,
        "user_id": 1,
        "created_at": float(task_id),
        "updated_at": float(task_id),
        **fields,
    }


@pytest.fixture
def row() -> Callable[..., dict[str, Any]]:
    return old_row


# --- the contract suites: each test on every store ---------------------------------------


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=FACTORIES)
def factory(request: pytest.FixtureRequest) -> Factory:
    factory_for: Callable[[pytest.FixtureRequest], Factory] = request.param
    return factory_for(request)


@pytest.fixture
async def stores(factory: Factory, tmp_path: Path, clock: Clock) -> AsyncIterator[Stores]:
    async with factory(tmp_path, clock) as opened:
        yield opened


@pytest.fixture
async def second(
    factory: Factory, stores: Stores, tmp_path: Path, clock: Clock
) -> AsyncIterator[Stores]:
    """The same database as another process sees it. SQLite serves one process (a second
    store on the file is refused), so there it is the same stores: the race between two
    owners still runs, through one connection."""
    if isinstance(stores.tasks, SqliteTaskStore):
        yield stores
        return
    async with factory(tmp_path, clock) as opened:
        yield opened


@pytest.fixture
def tasks(stores: Stores) -> TaskStore:
    return stores.tasks


@pytest.fixture
def make(tasks: TaskStore) -> Maker:
    return Maker(tasks)
