"""A database made by the bot before the store package opens unchanged and carries on.

data/main-v3.sql is the dump of a database the released bot (schema version 3) made; its
records as that bot read them are in data/main-v3.json. Migrations 4 to 6 add columns and
tables only: every stored value reads back the same, and the new fields start empty.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from contextlib import closing
from enum import Enum
from pathlib import Path
from typing import Any

import pytest

from bot.kling.models import TaskKind
from bot.tasks.models import Origin, TaskRecord, TaskState
from bot.tasks.store import MIGRATIONS, Stores, id_mark_path, open_store

DATA = Path(__file__).parent / "data"
S = TaskState
NEW_FIELDS = {
    "claim_owner": None,
    "claim_purpose": None,
    "claim_until": None,
    "posted_message_id": None,
    "failure_code": None,
    "failure_params": {},
    "delivery_error_code": None,
    "delivery_error_params": {},
}
LATER = 1_800_000_000.0  # after every stored time


def _plain(record: TaskRecord) -> dict[str, Any]:
    return {
        name: value.value if isinstance(value, Enum) else value
        for name, value in dataclasses.asdict(record).items()
    }


@pytest.fixture
def main_database(tmp_path: Path) -> Path:
    """The released bot's database file, with its id mark, as it left them."""
    path = tmp_path / "data" / "kling-bot.db"
    path.parent.mkdir()
    with closing(sqlite3.connect(path)) as raw:
        raw.executescript((DATA / "main-v3.sql").read_text(encoding="utf-8"))
    id_mark_path(path).write_text("9\n", encoding="ascii")
    return path


@pytest.fixture
def expected() -> dict[str, Any]:
    return json.loads((DATA / "main-v3.json").read_text(encoding="utf-8"))


async def test_the_fixture_is_the_released_schema(main_database: Path) -> None:
    with closing(sqlite3.connect(main_database)) as raw:
        assert raw.execute("PRAGMA user_version").fetchone() == (3,)
        columns = {row[1] for row in raw.execute("PRAGMA table_info(tasks)")}
    assert "files_removed_at" in columns and "claim_owner" not in columns
    assert len(MIGRATIONS) >= 4  # 4 (claims, codes), 5 (inputs), 6 (processes) carry it over


async def test_every_stored_value_reads_back_the_same(
    main_database: Path, expected: dict[str, Any]
) -> None:
    async with open_store(f"sqlite:///{main_database}") as stores:
        assert await stores.tasks.schema_version() == len(MIGRATIONS)  # type: ignore[attr-defined]
        for want in expected["tasks"]:
            record = await stores.tasks.get(want["id"])
            assert record is not None
            got = _plain(record)
            assert {name: got[name] for name in want} == want
            assert {name: got[name] for name in NEW_FIELDS} == NEW_FIELDS
        counts = await stores.tasks.counts_by_state()
        assert {state.value: n for state, n in counts.items()} == expected["counts_by_state"]
        assert await stores.tasks.files_due_for_removal(LATER) == expected["files_due_for_removal"]
        for guild_id, config in expected["guild_config"].items():
            assert await stores.guild_settings.get_guild_config(int(guild_id)) == config


async def test_the_upgraded_database_carries_on(main_database: Path) -> None:
    async with open_store(f"sqlite:///{main_database}") as stores:
        await _carries_on(stores)
    # Opened again: nothing is migrated twice, and what was written stays.
    async with open_store(f"sqlite:///{main_database}") as again:
        assert await again.tasks.schema_version() == len(MIGRATIONS)  # type: ignore[attr-defined]
        assert await again.tasks.count_tasks() == 10
        task = await again.tasks.get(1)
        assert task is not None and task.claim_owner == "p1"


async def _carries_on(stores: Stores) -> None:
    tasks = stores.tasks
    # The running tasks hold their slots: #3 (image, 2 slots) and #4 (video, 1).
    assert await tasks.slots_in_use(TaskKind.IMAGE, LATER) == 2
    assert await tasks.slots_in_use(TaskKind.VIDEO, LATER) == 1
    assert (await tasks.queue_snapshot(TaskKind.IMAGE, now=LATER)).ids == [1]
    admitted = await tasks.admit_next(
        TaskKind.IMAGE, limit=4, owner="p1", now=LATER, until=LATER + 60
    )
    assert admitted is not None and (admitted.id, admitted.submit_attempts) == (1, 1)
    assert await tasks.slots_in_use(TaskKind.IMAGE, LATER) == 4
    due = await tasks.claim_due_polls(
        TaskKind.VIDEO, now=LATER, until=LATER + 30, owner="p1", limit=10
    )
    assert [record.id for record in due] == [4]
    assert await tasks.next_poll_at() is not None
    new = await tasks.create(
        kind=TaskKind.IMAGE,
        provider="simulator",
        simulated=True,
        external_task_id="ext-new",
        params={"prompt": "after the upgrade"},
        input_labels=[],
        slots=1,
        origin=Origin(channel_id=100, user_id=15, guild_id=5),
        callback_token="tok-new",
    )
    assert new.id == 10  # above every id the released bot handed out
    assert await tasks.transition(
        3, [S.SUBMITTED], S.FAILED, failure_code="kling_failed", failure_params={"tries": 2}
    )
    failed = await tasks.get(3)
    assert failed is not None and (failed.failure_code, failed.failure_params) == (
        "kling_failed",
        {"tries": 2},
    )
    await stores.guild_settings.set_guild_config(6, {"daily_limit": 1})
    assert await stores.guild_settings.get_guild_config(6) == {"daily_limit": 1}
