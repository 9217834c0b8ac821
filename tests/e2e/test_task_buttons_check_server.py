"""A task's buttons and its Animate modal act only in the server the task was made in.

A custom_id carries only the task id, so an interaction naming task #1 can come from any server
the bot is in. Its owner, or a moderator of another server, is refused there, privately, and no
task is created. Real discord.py against the fake Discord, the simulator as Kling.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from testing.discord_world import EPHEMERAL, MODERATOR_PERMISSIONS, World, posted_image_result
from testing.fake_discord import FakeInteraction, FakeMessage, FakeUser

ELSEWHERE = "#1 was made in another server"
PRESSERS = ["owner", "moderator-of-b"]


async def other_server(world: World, presser: str) -> tuple[int, FakeUser]:
    """Server B (known to the bot from its start) and who acts there: task #1's owner, a
    member of both servers, or a moderator of B only."""
    guild = world.fake.add_guild(name="Server B", channels=("art",))
    if presser == "owner":
        user = world.fake.default_user
    else:
        user = world.fake.add_user(name="mod-b")
        world.fake.add_member(guild.id, user, permissions=MODERATOR_PERMISSIONS)
    return next(iter(guild.channels)), user


@dataclass
class Elsewhere:
    result: FakeMessage  # task #1's result post, in server A
    channel_id: int  # a channel of server B
    user: FakeUser  # who acts there


async def task_one_and_server_b(world: World, presser: str) -> Elsewhere:
    channel_b, user = await other_server(world, presser)
    await world.start_bot()
    return Elsewhere(await posted_image_result(world), channel_b, user)


async def click_in(world: World, where: Elsewhere, custom_id: str) -> FakeInteraction:
    """Task #1's button pressed in server B: its components (a copied or crafted message)
    reach the bot from B's channel, as Discord would send them."""
    return await world.fake.click_button(
        message_id=where.result.id,
        custom_id=custom_id,
        channel_id=where.channel_id,
        user=where.user,
    )


async def refused_at_once(world: World, interaction: FakeInteraction) -> str:
    """The private refusal sent as the first answer, before anything is deferred or started."""
    data = await world.fake.wait_for_callback(interaction)
    assert interaction.callback_type == 4, data  # not deferred (5) nor a modal (9)
    assert data["data"]["flags"] & EPHEMERAL
    return str(data["data"]["content"])


async def assert_nothing_started(world: World) -> None:
    await asyncio.sleep(0.3)
    assert len(world.sim.tasks) == 1
    assert await world.tracker.tasks.get(2) is None


@pytest.mark.parametrize("presser", PRESSERS)
async def test_again_from_another_server_is_refused(world: World, presser: str) -> None:
    where = await task_one_and_server_b(world, presser)
    click = await click_in(world, where, "kling:again:1")
    assert ELSEWHERE in await refused_at_once(world, click)
    await assert_nothing_started(world)


@pytest.mark.parametrize("presser", PRESSERS)
async def test_animate_button_from_another_server_is_refused(world: World, presser: str) -> None:
    where = await task_one_and_server_b(world, presser)
    click = await click_in(world, where, "kling:animate:1")
    assert ELSEWHERE in await refused_at_once(world, click)
    assert click.modal is None
    await assert_nothing_started(world)


@pytest.mark.parametrize("presser", PRESSERS)
async def test_animate_modal_from_another_server_is_refused(world: World, presser: str) -> None:
    where = await task_one_and_server_b(world, presser)
    submit = await world.fake.submit_modal(
        custom_id="kling:animate-modal:1",
        values={"prompt": "the cube flies away", "mode": "std", "duration": "5"},
        channel_id=where.channel_id,
        user=where.user,
        message_id=where.result.id,
    )
    assert ELSEWHERE in await refused_at_once(world, submit)
    await assert_nothing_started(world)


@pytest.mark.parametrize("presser", PRESSERS)
async def test_details_from_another_server_is_refused(world: World, presser: str) -> None:
    where = await task_one_and_server_b(world, presser)
    click = await click_in(world, where, "kling:details:1")
    assert ELSEWHERE in await refused_at_once(world, click)
    data = await world.fake.wait_for_callback(click)
    assert not data["data"].get("embeds")  # the prompt and settings stay in server A
