"""Fixtures of the store's tests: databases as older bots left them."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from bot.tasks.store import schema

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
