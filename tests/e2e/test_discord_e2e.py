"""End to end: the real discord.py against testing/fake_discord/, the simulator as Kling.

Every test runs the whole bot (KlingBot + tracker + SQLite store + webhook listener) the way
``run_bot`` does, drives it with slash commands and button clicks over the fake gateway, and
asserts on what reached "Discord" (the fake's recorded requests and messages) and "Kling" (the
simulator's tasks).
"""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bot.config import ConfigError, Settings
from bot.discord.runner import run_bot, sync_commands
from bot.tasks.failures import describe_delivery_error, describe_failure
from bot.tasks.models import TaskState
from bot.text import t
from testing.discord_world import (
    EPHEMERAL,
    MODERATOR_PERMISSIONS,
    P_MANAGE_MESSAGES,
    World,
    posted_image_result,
    run_image,
    until,
)
from testing.fake_discord import (
    BOT_PERMISSIONS,
    P_READ_MESSAGE_HISTORY,
    FakeInteraction,
    FakeMessage,
)
from testing.images import png_bytes, webp_bytes

# What the result posts say, from the catalogue (the embeds word them when shown).
LINK_NOTE = t("embed.link_note")
SIMULATED_NOTE = t("embed.simulated_note")

OLD_AGAIN_AND_ANIMATE = [
    {"type": 2, "style": 1, "label": "Again", "custom_id": "kling:again:1"},
    {"type": 2, "style": 2, "label": "Animate", "custom_id": "kling:animate:1"},
]


def content_mentions(message: FakeMessage, user_id: int) -> bool:
    return f"<@{user_id}>" in message.content


def embed_fields(message: FakeMessage) -> dict[str, str]:
    return {f["name"]: f["value"] for f in message.embeds[0].get("fields", [])}


def button_ids(message: FakeMessage) -> list[str]:
    return [c["custom_id"] for row in message.components for c in row["components"]]


async def add_moderator(world: World, name: str = "mod") -> Any:
    moderator = world.fake.add_user(name=name)
    world.fake.add_member(world.guild_id, moderator, permissions=MODERATOR_PERMISSIONS)
    return moderator


async def moderator_config(world: World, moderator: Any, **options: Any) -> dict[str, Any]:
    """Run ``/kling-mod config`` as ``moderator``; returns the callback's data."""
    interaction = await world.fake.send_slash_command(
        "kling-mod", subcommand="config", options=options, user=moderator
    )
    data = await world.fake.wait_for_callback(interaction)
    assert data["data"]["flags"] & EPHEMERAL
    return data["data"]


async def kling_request(world: World, number: int) -> dict[str, Any]:
    """The create body of the ``number``-th task the simulator received (1-based)."""
    await until(lambda: len(world.sim.tasks) >= number)
    return list(world.sim.tasks.values())[number - 1].request


async def refusal(world: World, interaction: FakeInteraction) -> str:
    """The ephemeral answer to a refused command or button, whether deferred first or not."""
    data = await world.fake.wait_for_callback(interaction)
    if interaction.callback_type == 4:
        assert data["data"]["flags"] & EPHEMERAL
        return str(data["data"]["content"])
    message = await world.first_followup(interaction)
    assert message.ephemeral
    return message.content


# --- the happy paths ----------------------------------------------------------------------------


async def test_image_end_to_end(world: World) -> None:
    bot = await world.start_bot()
    user = world.fake.default_user
    interaction = await run_image(
        world, subject1=("cube.png", png_bytes()), subject2=("side.webp", webp_bytes())
    )
    callback = await world.fake.wait_for_callback(interaction)
    assert interaction.callback_type == 5  # deferred at once, public ("thinking")
    assert not (callback.get("data") or {}).get("flags", 0) & EPHEMERAL

    message = await world.wait_result()
    assert len(world.sim.tasks) == 1
    sim_task = next(iter(world.sim.tasks.values()))
    assert sim_task.n == 2 and sim_task.aspect_ratio == "1:1"
    assert content_mentions(message, user.id)
    assert len(message.attachments) == 2
    for att in message.attachments:
        with Image.open(io.BytesIO(att.data)) as im:
            assert im.format == "PNG"
            im.load()
    footer = message.embeds[0]["footer"]["text"]
    assert "Task #1" in footer and SIMULATED_NOTE in footer
    # The embed says what was asked and what it cost: prompt, model, parameters, time, credits.
    assert message.embeds[0]["description"] == "a red cube on a table"
    fields = embed_fields(message)
    assert fields["Model"] == world.settings.kling_image_model == sim_task.request["model_name"]
    assert "2 images" in fields["Parameters"] and "aspect 1:1" in fields["Parameters"]
    assert "subject1, subject2" in fields["Parameters"]
    assert fields["Time taken"].endswith(" s")
    assert fields["Credits"] == "none (simulated)"
    assert button_ids(message) == ["kling:again:1", "kling:animate:1", "kling:details:1"]

    # Only the member is pinged: no @everyone or role pings through a prompt.
    post = world.fake.requests_to("POST", rf"/channels/{world.channel_id}/messages")[-1]
    assert [int(u) for u in post.json["allowed_mentions"]["users"]] == [user.id]
    assert not post.json["allowed_mentions"].get("parse")

    await world.wait_state(1, TaskState.DELIVERED)
    # The status message followed the task and mentions the WebP conversion.
    original = world.fake.original_message(interaction)
    assert original is not None and original.embeds
    fields = {f["name"]: f["value"] for f in original.embeds[0].get("fields", [])}
    assert "subject2" in fields.get("Input adjustments", "")
    assert "#1" in original.embeds[0]["title"]
    assert bot.tracker.health_checks and bot.tracker.health_checks[0]() == ("discord", True)
    # The webhook listener runs on the bound port and reports the Discord connection.
    assert world.app is not None
    async with world.app.session.get(f"http://127.0.0.1:{bot.webhook_port}/healthz") as response:
        assert response.status == 200


async def test_video_end_to_end(world: World) -> None:
    await world.start_bot()
    interaction = await world.fake.send_slash_command(
        "kling",
        subcommand="video",
        options={"prompt": "the cube spins", "mode": "pro", "duration": "5"},
        attachments={"image1": ("cube.png", png_bytes((640, 360)))},
    )
    await world.fake.wait_for_callback(interaction)
    message = await world.wait_result()
    sim_task = next(iter(world.sim.tasks.values()))
    assert sim_task.mode == "pro" and sim_task.duration == "5"
    assert content_mentions(message, world.fake.default_user.id)
    assert len(message.attachments) == 1
    video = message.attachments[0]
    assert video.filename.endswith(".mp4")
    assert video.data[4:8] == b"ftyp"
    assert "kling:animate:1" not in button_ids(message)  # videos cannot be animated
    assert message.embeds[0]["description"] == "the cube spins"
    fields = embed_fields(message)
    assert fields["Model"] == sim_task.request["model_name"] == "kling-v1-6"
    assert "mode pro" in fields["Parameters"] and "5 s" in fields["Parameters"]
    assert "aspect 16:9" in fields["Parameters"] and "image1" in fields["Parameters"]
    assert fields["Time taken"].endswith(" s")
    assert fields["Credits"] == "none (simulated)"


# --- refusals: nothing reaches Kling ------------------------------------------------------------


async def test_bad_attachment_is_refused_and_nothing_submitted(world: World) -> None:
    await world.start_bot()
    interaction = await run_image(world, subject1=("photo.png", b"this is not an image at all"))
    await world.fake.wait_for_callback(interaction)

    message = await world.first_followup(interaction)
    assert message.ephemeral
    assert "subject1" in message.content
    await asyncio.sleep(0.3)
    assert world.sim.tasks == {}
    assert await world.tracker.tasks.list_tasks() == []
    # The public "thinking..." placeholder is removed, not left hanging.
    original = world.fake.original_message(interaction)
    assert original is None or original.deleted


async def test_blocked_word_refused(world: World) -> None:
    await world.start_bot()
    await world.tracker.guild_settings.set_guild_config(world.guild_id, {"blocked_words": ["cube"]})
    interaction = await run_image(world)
    await world.fake.wait_for_callback(interaction)

    message = await world.first_followup(interaction)
    assert message.ephemeral and "cube" in message.content
    assert world.sim.tasks == {}


async def test_member_without_rights_is_refused_mod_commands(world: World) -> None:
    await world.start_bot()
    member = world.fake.add_user(name="member")
    interaction = await world.fake.send_slash_command("kling-mod", subcommand="tasks", user=member)
    data = await world.fake.wait_for_callback(interaction)
    assert interaction.callback_type == 4
    assert data["data"]["flags"] & EPHEMERAL
    assert "moderator" in data["data"]["content"].lower()
    assert "embeds" not in data["data"] or not data["data"]["embeds"]

    moderator = world.fake.add_user(name="mod")
    world.fake.add_member(world.guild_id, moderator, permissions=P_MANAGE_MESSAGES | (1 << 11))
    interaction = await world.fake.send_slash_command(
        "kling-mod", subcommand="tasks", user=moderator
    )
    data = await world.fake.wait_for_callback(interaction)
    assert data["data"]["embeds"][0]["title"].startswith("Tasks")


# --- restarts and buttons -----------------------------------------------------------------------


async def test_restart_mid_task_delivers_once_and_again_works(world: World) -> None:
    world.sim.config.processing_seconds = 1.0
    await world.start_bot()
    interaction = await run_image(world)
    await world.fake.wait_for_callback(interaction)

    await until(lambda: world.sim.tasks)
    await world.stop_bot()  # mid-task: Kling is still working, nothing was posted
    assert world.result_messages() == []

    await asyncio.sleep(1.0)  # the task ends at Kling while the bot is down
    await world.start_bot()
    message = await world.wait_result()
    await world.wait_state(1, TaskState.DELIVERED)
    await asyncio.sleep(0.5)
    assert len(world.result_messages()) == 1
    assert len(world.sim.tasks) == 1

    # Restart again: the persistent buttons still work on the old message.
    await world.stop_bot()
    await world.start_bot()
    click = await world.fake.click_button(
        message_id=message.id, custom_id="kling:again:1", channel_id=world.channel_id
    )
    await world.fake.wait_for_callback(click)
    assert click.callback_type == 5
    second = await world.wait_result(lambda m: "Task #2" in m.embeds[0]["footer"]["text"])
    assert len(world.sim.tasks) == 2
    assert len(second.attachments) == 2


async def test_again_refused_for_other_members(world: World) -> None:
    await world.start_bot()
    message = await posted_image_result(world)
    stranger = world.fake.add_user(name="stranger")
    click = await world.fake.click_button(
        message_id=message.id, custom_id="kling:again:1", user=stranger
    )
    data = await world.fake.wait_for_callback(click)
    assert data["data"]["flags"] & EPHEMERAL
    await asyncio.sleep(0.3)
    assert len(world.sim.tasks) == 1


async def test_animate_turns_images_into_a_video(world: World) -> None:
    await world.start_bot()
    message = await posted_image_result(world)
    click = await world.fake.click_button(message_id=message.id, custom_id="kling:animate:1")
    await world.fake.wait_for_callback(click)
    assert click.modal is not None and click.modal["custom_id"] == "kling:animate-modal:1"
    submit = await world.fake.submit_modal(
        custom_id="kling:animate-modal:1",
        values={"prompt": "the cube flies away", "mode": "std", "duration": "5"},
        message_id=message.id,
    )
    await world.fake.wait_for_callback(submit)
    video = await world.wait_result(lambda m: "Task #2" in m.embeds[0]["footer"]["text"])
    assert video.attachments[0].data[4:8] == b"ftyp"
    kinds = sorted(str(t.kind) for t in world.sim.tasks.values())
    assert kinds == ["image", "video"]


async def test_animate_modal_opened_before_a_restart_works_after_it(world: World) -> None:
    await world.start_bot()
    interaction = await run_image(world)
    await world.fake.wait_for_callback(interaction)
    message = await world.wait_result()
    click = await world.fake.click_button(message_id=message.id, custom_id="kling:animate:1")
    await world.fake.wait_for_callback(click)
    assert click.modal is not None
    await world.stop_bot()  # the member is still typing the prompt
    await world.start_bot()
    submit = await world.fake.submit_modal(
        custom_id="kling:animate-modal:1",
        values={"prompt": "the cube flies away", "mode": "pro", "duration": ""},
        message_id=message.id,
    )
    await world.fake.wait_for_callback(submit)
    assert submit.callback_type == 5  # deferred: answered, not "interaction failed"
    await world.wait_result(lambda m: "Task #2" in m.embeds[0]["footer"]["text"])
    video = next(t for t in world.sim.tasks.values() if str(t.kind) == "video")
    assert video.request["prompt"] == "the cube flies away"
    assert (video.request["mode"], video.request["duration"]) == ("pro", "5")  # empty: default
    assert len(world.sim.tasks) == 2  # one answer to the submission, not two


async def test_animate_after_the_results_were_cleaned_up_says_so(world: World) -> None:
    await world.start_bot()
    message = await posted_image_result(world)
    await world.wait_state(1, TaskState.DELIVERED)
    for path in world.tracker.result_paths(await world.tracker.tasks.get(1)):
        path.unlink()  # what retention cleanup does after RETENTION_DAYS
    click = await world.fake.click_button(message_id=message.id, custom_id="kling:animate:1")
    await world.fake.wait_for_callback(click)
    submit = await world.fake.submit_modal(
        custom_id="kling:animate-modal:1",
        values={"prompt": "the cube flies away", "mode": "std", "duration": "5"},
        message_id=message.id,
    )
    reply = await world.first_followup(submit)
    assert reply.ephemeral and "were deleted after" in reply.content
    assert "Something went wrong" not in reply.content
    assert sorted(str(t.kind) for t in world.sim.tasks.values()) == ["image"]


# --- delivery problems --------------------------------------------------------------------------


async def test_upload_too_large_sends_the_link(world: World) -> None:
    await world.start_bot()
    # Discord answers 413 for this channel's uploads: the post must go out with links instead.
    world.fake.fail_next(
        "POST", rf"/channels/{world.channel_id}/messages", 413, code=40005, message="too large"
    )
    interaction = await run_image(world)
    await world.fake.wait_for_callback(interaction)
    message = await world.wait_result()
    assert message.attachments == []
    fields = {f["name"]: f["value"] for f in message.embeds[0]["fields"]}
    assert LINK_NOTE in fields["Links"]
    assert world.settings.kling_base_url and world.settings.kling_base_url in fields["Links"]
    await world.wait_state(1, TaskState.DELIVERED)


@pytest.mark.parametrize("problem", ["no permission", "channel deleted"])
async def test_channel_gone_or_forbidden_dms_the_member(world: World, problem: str) -> None:
    world.sim.config.processing_seconds = 0.8
    await world.start_bot()
    interaction = await run_image(world)
    await world.fake.wait_for_callback(interaction)
    # The bot could post when the command ran; the channel changes while Kling works.
    if problem == "no permission":
        world.fake.set_channel_permissions(world.channel_id, can_send=False)
    else:
        world.fake.delete_channel(world.channel_id)
    await world.wait_state(1, TaskState.UNDELIVERABLE)
    record = await world.tracker.tasks.get(1)
    expected = "permission" if problem == "no permission" else "no longer exists"
    assert expected in (describe_delivery_error(record) or "")
    assert "direct message" in (describe_delivery_error(record) or "")
    dms = [c for c in world.fake.channels.values() if c.type == 1]
    assert len(dms) == 1
    dm_messages = world.fake.messages(dms[0].id)
    assert len(dm_messages) == 1 and len(dm_messages[0].attachments) == 2
    assert world.result_messages() == []

    # Outside the guild no channel rule, limit or moderator applies: the DM offers Details
    # only; and a DM that still carries Again and Animate (sent by an earlier version of the
    # bot) gets them refused without starting a task.
    dm = dm_messages[0]
    assert button_ids(dm) == ["kling:details:1"]
    details_row = dm.components[0]["components"]
    dm.components = [{"type": 1, "components": [*OLD_AGAIN_AND_ANIMATE, *details_row]}]
    again = await world.fake.click_button(
        message_id=dm.id, custom_id="kling:again:1", channel_id=dms[0].id
    )
    assert "only works on the result posted in the server" in await refusal(world, again)
    animate = await world.fake.click_button(
        message_id=dm.id, custom_id="kling:animate:1", channel_id=dms[0].id
    )
    assert "only works" in await refusal(world, animate) and animate.modal is None
    details = await world.fake.click_button(
        message_id=dm.id, custom_id="kling:details:1", channel_id=dms[0].id
    )
    data = await world.fake.wait_for_callback(details)
    assert "#1" in data["data"]["embeds"][0]["title"]
    await asyncio.sleep(0.3)
    assert len(world.sim.tasks) == 1


async def test_transient_discord_errors_are_retried_once_posted(world: World) -> None:
    await world.start_bot()
    # 503 is not retried by discord.py itself (500/502/504 are): delivery's own retries act.
    rule = world.fake.fail_next(
        "POST", rf"/channels/{world.channel_id}/messages", 503, count=2, message="unavailable"
    )
    interaction = await run_image(world)
    await world.fake.wait_for_callback(interaction)
    await world.wait_result()
    await world.wait_state(1, TaskState.DELIVERED)
    assert len(rule.hits) == 2
    assert len(world.result_messages()) == 1


async def test_a_post_that_failed_after_discord_stored_it_is_not_sent_again(
    world: World,
) -> None:
    await world.start_bot()
    rule = world.fake.fail_next(
        "POST", rf"/channels/{world.channel_id}/messages", 503, after_handling=True
    )
    interaction = await run_image(world)
    await world.fake.wait_for_callback(interaction)
    await world.wait_state(1, TaskState.DELIVERED)
    assert len(rule.hits) == 1
    history = world.fake.requests_to("GET", rf"/channels/{world.channel_id}/messages")
    assert history, "delivery must look before posting again"
    assert len(world.result_messages()) == 1


async def test_persistent_discord_errors_end_undeliverable(world: World) -> None:
    await world.start_bot()
    world.fake.fail_next("POST", rf"/channels/{world.channel_id}/messages", 503, count=50)
    interaction = await run_image(world)
    await world.fake.wait_for_callback(interaction)
    await world.wait_state(1, TaskState.UNDELIVERABLE)
    record = await world.tracker.tasks.get(1)
    assert "503" in (describe_delivery_error(record) or "")


# --- permissions up front, moderation, member commands -----------------------------------------


async def test_missing_bot_permissions_are_named_up_front(world: World) -> None:
    await world.start_bot()
    interaction = await run_image(world)
    await world.fake.wait_for_callback(interaction)
    result = await world.wait_result()

    world.fake.set_channel_permissions(world.channel_id, can_send=True, can_attach_files=False)
    interaction = await run_image(world)
    data = await world.fake.wait_for_callback(interaction)
    assert interaction.callback_type == 4
    assert data["data"]["flags"] & EPHEMERAL
    assert "Attach Files" in data["data"]["content"]
    # Again would end in a post too: refused the same way, before anything is deferred.
    again = await world.fake.click_button(message_id=result.id, custom_id="kling:again:1")
    data = await world.fake.wait_for_callback(again)
    assert again.callback_type == 4 and data["data"]["flags"] & EPHEMERAL
    assert "Attach Files" in data["data"]["content"]
    await assert_ephemeral_commands_still_answer(world)

    # Delivery reads the channel's history after an ambiguous failure: needed up front too.
    world.fake.set_channel_permissions(world.channel_id, can_send=True)
    bot_member = world.fake.guilds[world.guild_id].members[world.fake.bot.id]
    bot_member.permissions = BOT_PERMISSIONS & ~P_READ_MESSAGE_HISTORY
    interaction = await world.fake.send_slash_command(
        "kling",
        subcommand="video",
        options={"prompt": "the cube spins"},
        attachments={"image1": ("cube.png", png_bytes())},
    )
    data = await world.fake.wait_for_callback(interaction)
    assert interaction.callback_type == 4
    content = data["data"]["content"]
    assert "Read Message History" in content and "Attach Files" not in content
    await assert_ephemeral_commands_still_answer(world)
    await asyncio.sleep(0.2)
    assert len(world.sim.tasks) == 1


async def assert_ephemeral_commands_still_answer(world: World) -> None:
    """/kling help, queue and status answer ephemerally: the bot's channel permissions do not
    matter for them."""
    for subcommand, options in (("help", {}), ("queue", {}), ("status", {"task": "#1"})):
        interaction = await world.fake.send_slash_command(
            "kling", subcommand=subcommand, options=options
        )
        data = await world.fake.wait_for_callback(interaction)
        assert data["data"].get("embeds"), (subcommand, data["data"].get("content"))


async def test_moderator_config_blocks_words_and_limits_channels(world: World) -> None:
    await world.start_bot()
    moderator = world.fake.add_user(name="mod")
    world.fake.add_member(world.guild_id, moderator, permissions=P_MANAGE_MESSAGES | (1 << 11))
    interaction = await world.fake.send_slash_command(
        "kling-mod",
        subcommand="config",
        options={"block_word": "Cube", "max_active": 5},
        user=moderator,
    )
    data = await world.fake.wait_for_callback(interaction)
    assert data["data"]["flags"] & EPHEMERAL
    config = await world.tracker.guild_settings.get_guild_config(world.guild_id)
    assert config["blocked_words"] == ["cube"] and config["max_active"] == 5

    refused = await run_image(world)  # "a red cube on a table": whole word, any case
    await world.fake.wait_for_callback(refused)
    await asyncio.sleep(0.3)
    assert world.sim.tasks == {}
    assert "cube" in world.fake.followups(refused)[0].content

    # Only listed channels take commands once any is listed.
    other = world.fake.add_channel(world.guild_id, name="elsewhere")
    await world.tracker.guild_settings.set_guild_config(
        world.guild_id, {"allowed_channels": [other.id], "blocked_words": []}
    )
    refused = await run_image(world)
    await world.fake.wait_for_callback(refused)
    await asyncio.sleep(0.3)
    message = world.fake.followups(refused)[0]
    assert message.ephemeral and f"<#{other.id}>" in message.content
    assert world.sim.tasks == {}


async def test_moderator_cancel_running_task_is_not_posted(world: World) -> None:
    world.sim.config.processing_seconds = 1.0
    await world.start_bot()
    interaction = await run_image(world)
    await world.fake.wait_for_callback(interaction)
    await world.wait_state(1, TaskState.SUBMITTED, TaskState.PROCESSING)
    moderator = world.fake.add_user(name="mod")
    world.fake.add_member(world.guild_id, moderator, permissions=P_MANAGE_MESSAGES | (1 << 11))
    cancel = await world.fake.send_slash_command(
        "kling-mod", subcommand="cancel", options={"task": "#1"}, user=moderator
    )
    data = await world.fake.wait_for_callback(cancel)
    assert "will not be posted" in data["data"]["content"]
    await world.wait_state(1, TaskState.CANCELLED)
    await asyncio.sleep(0.3)
    assert world.result_messages() == []


async def test_member_status_queue_help_and_details(world: World) -> None:
    await world.start_bot()
    message = await posted_image_result(world)
    await world.wait_state(1, TaskState.DELIVERED)

    status = await world.fake.send_slash_command(
        "kling", subcommand="status", options={"task": "#1"}
    )
    data = await world.fake.wait_for_callback(status)
    embed = data["data"]["embeds"][0]
    assert "#1" in embed["title"] and "delivered" in embed["title"]
    ids = next(f["value"] for f in embed["fields"] if f["name"] == "Ids")
    sim_id = next(iter(world.sim.tasks))
    assert sim_id in ids

    # Another member cannot look at it.
    stranger = world.fake.add_user(name="stranger")
    status = await world.fake.send_slash_command(
        "kling", subcommand="status", options={"task": "1"}, user=stranger
    )
    data = await world.fake.wait_for_callback(status)
    assert "embeds" not in data["data"] or not data["data"]["embeds"]

    queue = await world.fake.send_slash_command("kling", subcommand="queue")
    data = await world.fake.wait_for_callback(queue)
    assert data["data"]["flags"] & EPHEMERAL and data["data"]["embeds"][0]["title"] == "Kling queue"

    help_ = await world.fake.send_slash_command("kling", subcommand="help")
    data = await world.fake.wait_for_callback(help_)
    assert "/kling image" in [f["name"] for f in data["data"]["embeds"][0]["fields"]]

    details = await world.fake.click_button(
        message_id=message.id, custom_id="kling:details:1", user=stranger
    )
    data = await world.fake.wait_for_callback(details)
    assert data["data"]["flags"] & EPHEMERAL and "#1" in data["data"]["embeds"][0]["title"]


# --- the runner ----------------------------------------------------------------------------------


async def test_sync_commands_over_rest_only(world: World) -> None:
    names = await sync_commands(world.settings, world.guild_id)
    assert names == ["/kling", "/kling-mod"]
    assert not world.fake.gateway_connections  # REST only: no gateway session
    commands = {c["name"]: c for c in world.fake.commands(world.guild_id)}
    assert set(commands) == {"kling", "kling-mod"}
    assert int(commands["kling-mod"]["default_member_permissions"]) == P_MANAGE_MESSAGES
    assert commands["kling-mod"]["contexts"] == [0] and commands["kling"]["contexts"] == [0]
    kling = {o["name"]: o for o in commands["kling"]["options"]}
    assert set(kling) == {"image", "video", "queue", "status", "help"}
    moderation = {o["name"]: o for o in commands["kling-mod"]["options"]}
    assert set(moderation) == {"status", "tasks", "queue", "usage", "cancel", "config"}

    # Sets: discord.py sends required options first, whatever the signature's order.
    options = {o["name"]: o for o in kling["image"]["options"]}
    assert set(options) == {
        *("prompt", "subject1", "subject2", "subject3", "subject4", "scene", "style"),
        *("negative_prompt", "count", "aspect_ratio", "model"),
    }
    assert options["subject1"]["type"] == 11 and options["subject1"]["required"]
    assert options["style"]["type"] == 11 and not options["style"].get("required")
    assert not options["prompt"].get("required")  # Kling takes images without a prompt
    assert options["count"]["min_value"] == 1 and options["count"]["max_value"] == 9
    assert all(o.get("description") for o in options.values())

    video = {o["name"]: o for o in kling["video"]["options"]}
    assert set(video) == {
        *("prompt", "image1", "image2", "image3", "image4"),
        *("negative_prompt", "mode", "duration", "aspect_ratio"),
    }
    assert video["prompt"]["required"] and video["image1"]["required"]
    assert [c["value"] for c in video["mode"]["choices"]] == ["std", "pro"]
    assert [c["value"] for c in video["duration"]["choices"]] == ["5", "10"]
    assert all(o.get("description") for o in video.values())

    config = {o["name"]: o for o in moderation["config"]["options"]}
    defaults = ("image_model", "image_aspect_ratio", "image_count")
    defaults += ("video_mode", "video_duration", "video_aspect_ratio", "clear_defaults")
    assert set(defaults) <= set(config)
    assert [c["value"] for c in config["image_model"]["choices"]] == ["kling-v2", "kling-v2-1"]
    assert [c["value"] for c in config["video_aspect_ratio"]["choices"]] == ["16:9", "9:16", "1:1"]
    assert config["image_count"]["min_value"] == 1 and config["image_count"]["max_value"] == 9
    assert all(o.get("description") for o in config.values())


async def test_run_bot_requires_a_token(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, discord_token=None, data_dir=tmp_path)  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match="DISCORD_TOKEN"):
        await run_bot(settings, simulate=True)


async def test_oversized_attachment_is_refused_before_download(world: World) -> None:
    await world.start_bot()
    huge = b"\x89PNG\r\n\x1a\n" + b"\0" * (25 * 1024 * 1024)
    interaction = await run_image(
        world, subject1=("cube.png", png_bytes()), scene=("big.png", huge)
    )
    await world.fake.wait_for_callback(interaction)
    message = await world.first_followup(interaction)
    assert message.ephemeral and "scene" in message.content and "25 MB" in message.content
    assert not world.fake.requests_to("GET", r".*big\.png")  # refused on the size alone
    assert world.sim.tasks == {}


async def test_unexpected_error_gives_an_error_id_that_is_logged(
    world: World, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    await world.start_bot()

    async def broken(ref: str) -> None:
        raise RuntimeError("database on fire")

    monkeypatch.setattr(world.tracker.tasks, "find", broken)
    interaction = await world.fake.send_slash_command(
        "kling", subcommand="status", options={"task": "1"}
    )
    data = await world.fake.wait_for_callback(interaction)
    content = data["data"]["content"]
    assert data["data"]["flags"] & EPHEMERAL and "error id" in content
    error_id = content.split("error id ")[1][:6]
    logged = [r for r in caplog.records if error_id in r.getMessage()]
    assert logged and logged[0].exc_info is not None
    assert "database on fire" not in content  # internals stay in the log


async def test_failed_task_is_posted_with_klings_reason(world: World) -> None:
    world.sim.config.faults.task_failure_rate = 1.0
    await world.start_bot()
    message = await posted_image_result(world)
    await world.wait_state(1, TaskState.DELIVERED)
    record = await world.tracker.tasks.get(1)
    assert describe_failure(record)
    assert "failed" in message.content and content_mentions(message, record.user_id)
    fields = {f["name"]: f["value"] for f in message.embeds[0]["fields"]}
    assert fields["Why"] == describe_failure(record)
    assert message.attachments == []
    custom_ids = [c["custom_id"] for row in message.components for c in row["components"]]
    assert custom_ids == ["kling:again:1", "kling:details:1"]  # nothing to animate


async def test_moderator_tasks_pages_usage_and_queue(world: World) -> None:
    await world.start_bot()
    for _ in range(2):
        interaction = await run_image(world)
        await world.fake.wait_for_callback(interaction)
    await until(lambda: len(world.result_messages()) == 2)
    moderator = world.fake.add_user(name="mod")
    world.fake.add_member(world.guild_id, moderator, permissions=P_MANAGE_MESSAGES | (1 << 11))

    # Ten per page: both tasks fit on page 1, so Prev and Next are both disabled.
    tasks = await world.fake.send_slash_command(
        "kling-mod", subcommand="tasks", options={"page": 1}, user=moderator
    )
    data = await world.fake.wait_for_callback(tasks)
    body = data["data"]["embeds"][0]["description"]
    assert body.index("#2") < body.index("#1")  # newest first
    buttons = [c for row in data["data"]["components"] for c in row["components"]]
    assert [b["label"] for b in buttons] == ["Prev", "Next"]
    assert all(b.get("disabled") for b in buttons)  # one page only

    usage = await world.fake.send_slash_command("kling-mod", subcommand="usage", user=moderator)
    data = await world.fake.wait_for_callback(usage)
    embed = data["data"]["embeds"][0]
    assert f"<@{world.fake.default_user.id}>: 2 tasks (2 ok" in embed["description"]

    queue = await world.fake.send_slash_command("kling-mod", subcommand="queue", user=moderator)
    data = await world.fake.wait_for_callback(queue)
    assert "**image**: 0 waiting" in data["data"]["embeds"][0]["description"]


# --- guild defaults, the moderator role, member limits ------------------------------------------


async def test_guild_defaults_fill_the_options_a_member_leaves_out(world: World) -> None:
    # Three tiers: the member's option, else the guild's default, else the server-wide setting.
    world.settings = world.settings.model_copy(update={"kling_image_model": "kling-v2-1"})
    await world.start_bot()
    moderator = await add_moderator(world)
    data = await moderator_config(
        world,
        moderator,
        image_model="kling-v2",
        image_aspect_ratio="3:4",
        image_count=3,
        video_mode="pro",
        video_duration="10",
        video_aspect_ratio="9:16",
    )
    shown = next(f["value"] for f in data["embeds"][0]["fields"] if f["name"] == "Defaults")
    assert "image model: **kling-v2**" in shown and "images per task: **3**" in shown
    assert "video duration (s): **10**" in shown and "(bot default)" not in shown
    stored = await world.tracker.guild_settings.get_guild_config(world.guild_id)
    assert stored["defaults"]["video_aspect_ratio"] == "9:16"

    # No prompt either: Kling's image API does not need one.
    plain = await world.fake.send_slash_command(
        "kling", subcommand="image", attachments={"subject1": ("cube.png", png_bytes())}
    )
    await world.fake.wait_for_callback(plain)
    request = await kling_request(world, 1)
    assert (request["n"], request["aspect_ratio"], request["model_name"]) == (3, "3:4", "kling-v2")
    assert "prompt" not in request
    message = await world.wait_result()
    assert message.embeds[0]["description"] == "*(no prompt)*"
    await world.wait_state(1, TaskState.DELIVERED)

    await run_image(world)  # count 2 and aspect 1:1 given: they win over the guild's
    request = await kling_request(world, 2)
    assert (request["n"], request["aspect_ratio"], request["model_name"]) == (2, "1:1", "kling-v2")
    await world.wait_state(2, TaskState.DELIVERED)

    video = await world.fake.send_slash_command(
        "kling",
        subcommand="video",
        options={"prompt": "the cube spins"},
        attachments={"image1": ("cube.png", png_bytes((640, 360)))},
    )
    await world.fake.wait_for_callback(video)
    request = await kling_request(world, 3)
    assert (request["mode"], request["duration"], request["aspect_ratio"]) == ("pro", "10", "9:16")
    assert request["model_name"] == "kling-v1-6"

    data = await moderator_config(world, moderator, clear_defaults=True)
    shown = next(f["value"] for f in data["embeds"][0]["fields"] if f["name"] == "Defaults")
    assert "image model: **kling-v2-1** (bot default)" in shown
    plain = await world.fake.send_slash_command(
        "kling", subcommand="image", attachments={"subject1": ("cube.png", png_bytes())}
    )
    await world.fake.wait_for_callback(plain)
    request = await kling_request(world, 4)
    assert (request["n"], request["aspect_ratio"]) == (1, "16:9")
    assert request["model_name"] == "kling-v2-1"  # KLING_IMAGE_MODEL, the server-wide setting


async def test_moderator_role_grants_moderator_commands_until_cleared(world: World) -> None:
    await sync_commands(world.settings, world.guild_id)  # the fake then types the role option
    role = world.fake.add_role(world.guild_id, name="kling helpers")
    await world.start_bot()
    helper = world.fake.add_user(name="helper")
    world.fake.add_member(world.guild_id, helper, roles=[role])  # no Manage Messages
    moderator = await add_moderator(world)

    async def helper_queue() -> dict[str, Any]:
        interaction = await world.fake.send_slash_command(
            "kling-mod", subcommand="queue", user=helper
        )
        data = await world.fake.wait_for_callback(interaction)
        assert data["data"]["flags"] & EPHEMERAL
        return dict(data["data"])

    assert "moderator" in (await helper_queue())["content"].lower()
    await moderator_config(world, moderator, moderator_role=role.id)
    allowed = await helper_queue()
    assert allowed["embeds"][0]["title"] == "Kling queue"

    await moderator_config(world, moderator, clear_moderator_role=True)
    refused = await helper_queue()
    assert "moderator" in refused["content"].lower() and not refused.get("embeds")


@pytest.mark.parametrize("where", ["MEMBER_MAX_ACTIVE", "per-guild max_active"])
async def test_member_limit_refuses_a_second_running_task_and_again(
    world: World, where: str
) -> None:
    if where == "MEMBER_MAX_ACTIVE":
        world.settings = world.settings.model_copy(update={"member_max_active": 1})
    await world.start_bot()
    if where != "MEMBER_MAX_ACTIVE":
        await moderator_config(world, await add_moderator(world), max_active=1)
    first = await run_image(world)
    await world.fake.wait_for_callback(first)
    result = await world.wait_result()
    await world.wait_state(1, TaskState.DELIVERED)

    world.sim.config.processing_seconds = 30.0  # the next task stays running at Kling
    running = await run_image(world)
    await world.fake.wait_for_callback(running)
    await world.wait_state(2, TaskState.SUBMITTED, TaskState.PROCESSING)

    second = await run_image(world)
    assert "1 task running (limit 1)" in await refusal(world, second)
    again = await world.fake.click_button(message_id=result.id, custom_id="kling:again:1")
    assert "1 task running (limit 1)" in await refusal(world, again)
    await asyncio.sleep(0.3)
    assert len(world.sim.tasks) == 2
    assert len(await world.tracker.tasks.list_tasks()) == 2


async def test_commands_sent_together_cannot_both_pass_the_member_limit(world: World) -> None:
    world.settings = world.settings.model_copy(update={"member_max_active": 1})
    world.sim.config.processing_seconds = 30.0
    await world.start_bot()
    burst = await asyncio.gather(*(run_image(world) for _ in range(4)))
    answers = [await world.fake.wait_for_callback(i) for i in burst]
    assert len(answers) == 4
    await until(lambda: len(world.sim.tasks) >= 1)
    await asyncio.sleep(0.5)
    assert len(world.sim.tasks) == 1
    assert len(await world.tracker.tasks.list_tasks()) == 1
    replies = [m for i in burst for m in world.fake.followups(i)]
    refused = [m for m in replies if m.ephemeral and "1 task running (limit 1)" in m.content]
    assert len(refused) == 3  # whichever of the four came first got the one place


async def test_animate_refused_to_strangers_and_again_allowed_to_moderators(world: World) -> None:
    await world.start_bot()
    message = await posted_image_result(world)

    stranger = world.fake.add_user(name="stranger")
    click = await world.fake.click_button(
        message_id=message.id, custom_id="kling:animate:1", user=stranger
    )
    assert "Only the member who asked" in await refusal(world, click)
    assert click.modal is None

    moderator = await add_moderator(world)
    click = await world.fake.click_button(
        message_id=message.id, custom_id="kling:again:1", user=moderator
    )
    await world.fake.wait_for_callback(click)
    assert click.callback_type == 5
    second = await world.wait_result(lambda m: "Task #2" in m.embeds[0]["footer"]["text"])
    assert content_mentions(second, moderator.id)  # the presser's task, under their limits
    record = await world.tracker.tasks.get(2)
    assert record.user_id == moderator.id and len(world.sim.tasks) == 2


async def test_links_refused_as_too_large_too_end_undeliverable_without_looping(
    world: World,
) -> None:
    await world.start_bot()
    rule = world.fake.fail_next(
        "POST", rf"/channels/{world.channel_id}/messages", 413, code=40005, count=100
    )
    interaction = await run_image(world)
    await world.fake.wait_for_callback(interaction)
    await world.wait_state(1, TaskState.UNDELIVERABLE)
    record = await world.tracker.tasks.get(1)
    assert "413" in (describe_delivery_error(record) or "")
    await asyncio.sleep(0.3)
    # Once with the files, once with links only; then it stops.
    assert [len(hit.files) for hit in rule.hits] == [2, 0]
