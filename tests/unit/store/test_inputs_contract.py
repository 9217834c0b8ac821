"""The ``InputStore`` contract: a task's prepared input images kept in the database.

Every test runs on SQLite and on PostgreSQL (a fresh database of the suite's server, see
tests/conftest.py; skipped without one). What holds on both: the images read back byte for byte
in their order, by the next process too (after a restart, on another machine); a save stores
all of a task's images or none; retention's removal counts the tasks it emptied.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bot.kling.models import TaskKind
from bot.tasks.models import Origin, TaskRecord
from bot.tasks.store import InputsNotSaved, InputStore, Stores, TaskStore
from testing.store_contract import Clock, Factory

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
JPEG = b"\xff\xd8\xff\xe0" + b"\x00\xff" * 300  # NUL and 0xff bytes survive the round trip


async def new_task(tasks: TaskStore, number: int, labels: list[str]) -> TaskRecord:
    return await tasks.create(
        kind=TaskKind.IMAGE,
        provider="simulator",
        simulated=True,
        external_task_id=f"ext-{number}",
        params={"prompt": f"task {number}"},
        input_labels=labels,
        slots=1,
        origin=Origin(channel_id=7, user_id=1, guild_id=3),
        callback_token=f"token-{number}",
    )


async def test_the_stores_have_an_input_store(stores: Stores) -> None:
    assert isinstance(stores.inputs, InputStore)


async def test_saved_images_read_back_byte_for_byte_in_their_order(
    factory: Factory, tmp_path: Path, clock: Clock
) -> None:
    big = os.urandom(5 * 1024 * 1024)  # a large prepared image: a few MB in one row
    want = [("subject2", PNG), ("subject1", JPEG), ("scene", big)]
    async with factory(tmp_path, clock) as stores:
        task = await new_task(stores.tasks, 1, ["subject2", "subject1", "scene"])
        await stores.inputs.save_inputs(
            task.id, [("subject2", PNG, "png"), ("subject1", JPEG, "jpg"), ("scene", big, "png")]
        )
        assert await stores.inputs.read_inputs(task.id) == want
    # The process that stored them is gone: the next one (on any machine) reads them.
    async with factory(tmp_path, clock) as after:
        assert await after.inputs.read_inputs(task.id) == want


async def test_a_task_without_stored_images_reads_none(stores: Stores) -> None:
    task = await new_task(stores.tasks, 1, ["subject1"])
    assert await stores.inputs.read_inputs(task.id) == []
    assert await stores.inputs.read_inputs(999_999) == []


async def test_a_save_that_fails_keeps_none_of_the_images(stores: Stores) -> None:
    """All or nothing: the first image is not kept when the second cannot be."""
    task = await new_task(stores.tasks, 1, ["subject1", "subject2"])
    with pytest.raises(InputsNotSaved) as caught:
        await stores.inputs.save_inputs(
            task.id,
            [("subject1", PNG, "png"), (None, JPEG, "jpg")],  # type: ignore[list-item]
        )
    assert isinstance(caught.value, OSError) and caught.value.task_id == task.id
    assert await stores.inputs.read_inputs(task.id) == []


async def test_images_of_a_task_that_does_not_exist_are_refused(stores: Stores) -> None:
    with pytest.raises(InputsNotSaved):
        await stores.inputs.save_inputs(424_242, [("subject1", PNG, "png")])
    assert await stores.inputs.read_inputs(424_242) == []


async def test_a_second_save_for_the_same_task_is_refused_and_keeps_the_first(
    stores: Stores,
) -> None:
    task = await new_task(stores.tasks, 1, ["subject1"])
    await stores.inputs.save_inputs(task.id, [("subject1", PNG, "png")])
    with pytest.raises(InputsNotSaved):
        await stores.inputs.save_inputs(task.id, [("subject1", JPEG, "jpg")])
    assert await stores.inputs.read_inputs(task.id) == [("subject1", PNG)]


async def test_removal_empties_the_given_tasks_only_and_counts_them(stores: Stores) -> None:
    first, kept, empty = [await new_task(stores.tasks, n, ["subject1"]) for n in (1, 2, 3)]
    for task in (first, kept):
        await stores.inputs.save_inputs(
            task.id, [("subject1", PNG, "png"), ("subject2", JPEG, "jpg")]
        )
    assert await stores.inputs.remove_inputs([first.id, empty.id, 999_999]) == 1
    assert await stores.inputs.read_inputs(first.id) == []
    assert await stores.inputs.read_inputs(kept.id) == [("subject1", PNG), ("subject2", JPEG)]
    assert await stores.inputs.remove_inputs([first.id]) == 0  # once only
    assert await stores.inputs.remove_inputs([]) == 0


async def test_removal_of_many_tasks_at_once(stores: Stores) -> None:
    """Retention hands over every old task of an hour: more ids than one statement of the
    SQLite store takes (``ID_CHUNK``)."""
    tasks = [await new_task(stores.tasks, n, ["subject1"]) for n in range(1, 601)]
    for task in tasks[::50]:
        await stores.inputs.save_inputs(task.id, [("subject1", PNG, "png")])
    assert await stores.inputs.remove_inputs([task.id for task in tasks]) == 12
    assert await stores.inputs.read_inputs(tasks[50].id) == []
