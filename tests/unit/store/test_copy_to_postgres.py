"""``kling-bot migrate-db``'s copy: a SQLite database into an empty PostgreSQL one, unchanged."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bot.config import ConfigError
from bot.kling.models import TaskKind
from bot.tasks.models import Origin, TaskState
from bot.tasks.store import Stores, open_store
from bot.tasks.store.copy import copy_database
from bot.tasks.store.idmark import id_mark_path, write_id_mark

S = TaskState
NOW = 1_000.0


async def _fill(stores: Stores) -> list[int]:
    tasks = stores.tasks
    ids = []
    for n in range(6):
        record = await tasks.create(
            kind=TaskKind.VIDEO if n == 5 else TaskKind.IMAGE,
            provider="simulator",
            simulated=True,
            external_task_id=f"ext-{n}",
            params={"prompt": f"a cat number {n} 猫", "n": 1},
            input_labels=["subject1"],
            slots=1,
            origin=Origin(channel_id=7, user_id=n % 3, guild_id=3),
            callback_token=f"token-{n}",
        )
        ids.append(record.id)
    admitted = await tasks.admit_next(TaskKind.IMAGE, limit=9, owner="p/1", now=NOW, until=2e9)
    assert admitted is not None
    await tasks.transition(admitted.id, [S.QUEUED], S.SUBMITTED, kling_task_id="k-1")
    await tasks.transition(ids[1], [S.QUEUED], S.FAILED, failure_code="kling_refused")
    await tasks.update(ids[2], credits="0.5", result_urls=["https://x/1.png"])
    await stores.guild_settings.set_guild_config(3, {"language": "ko", "blocked_words": ["x"]})
    return ids


async def test_every_task_setting_and_turn_arrives_unchanged(
    tmp_path: Path, postgres_url: str
) -> None:
    source = f"sqlite:///{tmp_path / 'bot.db'}"
    async with open_store(source) as sqlite:
        ids = await _fill(sqlite)
        before = [await sqlite.tasks.get(i) for i in ids]
        order = (await sqlite.tasks.queue_snapshot(TaskKind.IMAGE, now=NOW)).ids
        counts = await sqlite.tasks.counts_by_state()
    write_id_mark(id_mark_path(tmp_path / "bot.db"), 5_000)  # ids up to 5,000 were handed out

    copied = await copy_database(source, postgres_url)

    assert copied.rows["tasks"] == 6 and copied.rows["guild_config"] == 1
    assert copied.next_id == 5_001
    async with open_store(postgres_url) as pg:
        after = [await pg.tasks.get(i) for i in ids]
        for old, new in zip(before, after, strict=True):
            assert old is not None and new is not None
            # Claims end with the process that held them; everything else is as it was.
            cleared = dataclasses.replace(
                old, claim_owner=None, claim_purpose=None, claim_until=None
            )
            assert new == cleared
        assert (await pg.tasks.queue_snapshot(TaskKind.IMAGE, now=NOW)).ids == order
        assert await pg.tasks.counts_by_state() == counts
        assert await pg.guild_settings.get_guild_config(3) == {
            "language": "ko",
            "blocked_words": ["x"],
        }
        fresh = await pg.tasks.create(
            kind=TaskKind.IMAGE,
            provider="simulator",
            simulated=True,
            external_task_id="ext-new",
            params={},
            input_labels=[],
            slots=1,
            origin=Origin(channel_id=7, user_id=1, guild_id=3),
            callback_token=None,
        )
        assert fresh.id == 5_001  # never an id the SQLite database gave out


async def test_a_target_that_holds_tasks_is_refused_and_left_alone(
    tmp_path: Path, postgres_url: str
) -> None:
    source = f"sqlite:///{tmp_path / 'bot.db'}"
    async with open_store(source) as sqlite:
        await _fill(sqlite)
    await copy_database(source, postgres_url)
    with pytest.raises(ConfigError, match="already holds rows in tasks"):
        await copy_database(source, postgres_url)
    async with open_store(postgres_url) as pg:
        assert await pg.tasks.count_tasks() == 6


async def test_wrong_urls_say_which_side_is_wrong(tmp_path: Path, postgres_url: str) -> None:
    with pytest.raises(ConfigError, match="--from must be"):
        await copy_database(postgres_url, postgres_url)
    with pytest.raises(ConfigError, match="--to must be"):
        await copy_database(f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}")
    with pytest.raises(ConfigError, match="no SQLite database at"):
        await copy_database(f"sqlite:///{tmp_path / 'missing.db'}", postgres_url)


async def test_task_rows_reads_a_postgres_database_from_a_running_loop(
    tmp_path: Path, postgres_url: str
) -> None:
    from bot.tasks.store import task_rows

    assert task_rows(postgres_url) == []  # no schema yet: no tasks
    source = f"sqlite:///{tmp_path / 'bot.db'}"
    async with open_store(source) as sqlite:
        ids = await _fill(sqlite)
    await copy_database(source, postgres_url)
    rows = task_rows(postgres_url)
    assert [row["id"] for row in rows] == ids
    assert rows[1]["state"] == "failed" and rows[1]["failure_code"] == "kling_refused"
