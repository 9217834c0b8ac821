"""One error reporter for commands, buttons and modals: known errors in words, anything else
with an error id that is also in the log. Real discord.py against the fake Discord."""

from __future__ import annotations

from typing import Any

import pytest

from bot.tasks.models import TaskState
from bot.tasks.store import DatabaseFileChanged
from testing.discord_world import EPHEMERAL, World, posted_image_result
from testing.fake_discord import FakeMessage


async def delivered_result(world: World) -> FakeMessage:
    await world.start_bot()
    result = await posted_image_result(world)
    await world.wait_state(1, TaskState.DELIVERED)
    return result


async def press_details(world: World, result: FakeMessage) -> dict[str, Any]:
    click = await world.fake.click_button(message_id=result.id, custom_id="kling:details:1")
    data: dict[str, Any] = await world.fake.wait_for_callback(click)
    return data


async def test_a_button_that_fails_unexpectedly_gives_an_error_id_that_is_logged(
    world: World, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    result = await delivered_result(world)

    async def broken(task_id: int) -> None:
        raise RuntimeError("database on fire")

    monkeypatch.setattr(world.tracker.tasks, "get", broken)
    data = await press_details(world, result)
    content = data["data"]["content"]
    assert data["data"]["flags"] & EPHEMERAL
    # The same words as a command's unexpected error.
    assert content.startswith("Something went wrong (error id ")
    assert content.endswith("). Please try again later.")
    error_id = content.split("error id ")[1][:6]
    logged = [r for r in caplog.records if error_id in r.getMessage()]
    assert logged and logged[0].exc_info is not None
    assert "database on fire" not in content


async def test_a_button_pressed_while_the_database_file_is_gone_says_so(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = await delivered_result(world)

    async def gone(task_id: int) -> None:
        raise DatabaseFileChanged("replaced")

    monkeypatch.setattr(world.tracker.tasks, "get", gone)
    data = await press_details(world, result)
    content = data["data"]["content"]
    assert data["data"]["flags"] & EPHEMERAL
    assert "database file was deleted or replaced" in content and "error id" not in content
