"""Buttons on result messages and the Animate modal.

The buttons are ``DynamicItem``s: the task id lives in the ``custom_id``
(``kling:again:12``), so a button on a week-old message still works after any number of
restarts without keeping views in memory. They are registered in ``KlingBot.setup_hook``.

The Animate modal's submissions are handled the same way: ``on_animate_modal_submit`` (an
``on_interaction`` listener) reads the task id from the modal's ``custom_id`` and the fields
from the interaction, so a modal a member opened before a restart still works after it.

A ``custom_id`` names only the task, and can reach the bot from any server it is in: every
button and the modal act on a task only in the server it was made in, and Again and Animate
only for its owner or a moderator of that server.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands

from bot.discord import embeds
from bot.discord.checks import GenerationDefaults, Refused, guild_config, is_moderator
from bot.discord.errors import KlingCommandTree, refuse, reply, require_channel_permissions
from bot.kling.errors import KlingInvalidRequest
from bot.kling.models import VIDEO_ASPECT_RATIOS, TaskKind
from bot.tasks.models import TaskRecord
from bot.tasks.tracker import InputsNotStored

if TYPE_CHECKING:
    from bot.discord.bot import KlingBot

log = logging.getLogger(__name__)

MAX_ANIMATE_IMAGES = 4
ANIMATE_MODAL_ID = re.compile(r"kling:animate-modal:(?P<id>[0-9]+)")


async def _load_task(interaction: discord.Interaction[KlingBot], task_id: int) -> TaskRecord:
    task = await interaction.client.tracker.store.get(task_id)
    if task is None:
        raise Refused(f"Task #{task_id} no longer exists.")
    return task


def _require_task_server(interaction: discord.Interaction[KlingBot], task: TaskRecord) -> None:
    """Rights in another server (its moderators, its rules) say nothing about this task."""
    if interaction.guild_id != task.guild_id:
        raise Refused(
            f"{task.short_ref} was made in another server, so its buttons only work there. "
            "Run `/kling` here to make something new."
        )


async def _require_generation_rights(
    interaction: discord.Interaction[KlingBot], task: TaskRecord
) -> None:
    """Again and Animate start paid work: only in the task's server, by its owner or a
    moderator of that server; the guild's rules and the bot's permissions apply."""
    if interaction.guild_id is None:
        # A result sent by direct message: no channel, moderators or limits of the guild here.
        raise Refused(
            "This button only works on the result posted in the server: use it there, or run "
            "`/kling` in the server again."
        )
    _require_task_server(interaction, task)
    require_channel_permissions(interaction)
    if interaction.user.id == task.user_id:
        return
    config = await guild_config(interaction.client, interaction.guild_id)
    if not is_moderator(interaction, config):
        raise Refused("Only the member who asked for this, or a moderator, can use this button.")


def _require_viewing_rights(interaction: discord.Interaction[KlingBot], task: TaskRecord) -> None:
    """Details: anyone in the task's server, where its result is posted; elsewhere only its
    owner, in the direct message a result is sent as when its channel cannot take it."""
    if interaction.guild_id is None and interaction.user.id == task.user_id:
        return
    _require_task_server(interaction, task)


async def _report(interaction: discord.Interaction[KlingBot], exc: Exception, what: str) -> None:
    """Buttons and modals bypass the command tree's handler: same treatment here."""
    if isinstance(exc, app_commands.AppCommandError):
        message = KlingCommandTree.message_for(exc)
        if message is not None:
            await refuse(interaction, message)
            return
    error_id = f"{id(exc) & 0xFFFFFF:06X}"
    log.error("%s failed (error id %s)", what, error_id, exc_info=exc)
    try:
        await refuse(interaction, f"Something went wrong (error id {error_id}).")
    except discord.HTTPException:
        log.warning("could not report an error to the member", exc_info=True)


class AgainButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"kling:again:(?P<id>[0-9]+)"
):
    def __init__(self, task_id: int) -> None:
        super().__init__(
            discord.ui.Button(
                label="Again",
                emoji="🔁",
                style=discord.ButtonStyle.primary,
                custom_id=f"kling:again:{task_id}",
            )
        )
        self.task_id = task_id

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> AgainButton:
        return cls(int(match["id"]))

    async def callback(self, interaction: discord.Interaction[KlingBot]) -> None:  # type: ignore[override]
        bot = interaction.client
        try:
            task = await _load_task(interaction, self.task_id)
            await _require_generation_rights(interaction, task)
            await interaction.response.defer(thinking=True)
            origin = bot.origin_of(interaction)
            async with bot.member_lock(origin.guild_id, origin.user_id):
                await bot.check_request(interaction, task.params)
                try:
                    new = await bot.tracker.resubmit(task.id, origin)
                except InputsNotStored as exc:
                    raise Refused(exc.user_message) from None
                except (LookupError, FileNotFoundError, KlingInvalidRequest) as exc:
                    raise Refused(f"Cannot run {task.short_ref} again: {exc}.") from None
            interaction.extras["status_shown"] = True
            await bot.status_messages.follow(new, interaction)
        except Exception as exc:
            await _report(interaction, exc, f"Again on task {self.task_id}")


class AnimateButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"kling:animate:(?P<id>[0-9]+)"
):
    def __init__(self, task_id: int) -> None:
        super().__init__(
            discord.ui.Button(
                label="Animate",
                emoji="🎬",
                style=discord.ButtonStyle.secondary,
                custom_id=f"kling:animate:{task_id}",
            )
        )
        self.task_id = task_id

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> AnimateButton:
        return cls(int(match["id"]))

    async def callback(self, interaction: discord.Interaction[KlingBot]) -> None:  # type: ignore[override]
        try:
            task = await _load_task(interaction, self.task_id)
            await _require_generation_rights(interaction, task)
            if task.kind != TaskKind.IMAGE or not task.result_files:
                raise Refused("Only finished image results can be animated.")
            # A modal must be the first response: only quick store reads happen before it.
            config = await guild_config(interaction.client, interaction.guild_id)
            await interaction.response.send_modal(AnimateModal(task, config.defaults))
        except Exception as exc:
            await _report(interaction, exc, f"Animate on task {self.task_id}")


class DetailsButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"kling:details:(?P<id>[0-9]+)"
):
    def __init__(self, task_id: int) -> None:
        super().__init__(
            discord.ui.Button(
                label="Details",
                emoji="ℹ️",
                style=discord.ButtonStyle.secondary,
                custom_id=f"kling:details:{task_id}",
            )
        )
        self.task_id = task_id

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> DetailsButton:
        return cls(int(match["id"]))

    async def callback(self, interaction: discord.Interaction[KlingBot]) -> None:  # type: ignore[override]
        try:
            task = await _load_task(interaction, self.task_id)
            _require_viewing_rights(interaction, task)
            await reply(interaction, embed=embeds.details_embed(task))
        except Exception as exc:
            await _report(interaction, exc, f"Details on task {self.task_id}")


DYNAMIC_ITEMS = (AgainButton, AnimateButton, DetailsButton)


def result_view(
    task: TaskRecord, *, succeeded: bool, direct_message: bool = False
) -> discord.ui.View:
    """The buttons of a result post. A direct message gets Details only: Again and Animate
    start tasks, which only the guild's channel, limits and moderators may govern."""
    view = discord.ui.View(timeout=None)
    if not direct_message:
        view.add_item(AgainButton(task.id))
        if succeeded and task.kind == TaskKind.IMAGE:
            view.add_item(AnimateButton(task.id))
    view.add_item(DetailsButton(task.id))
    return view


def nearest_video_ratio(aspect_ratio: str | None) -> str:
    """Kling videos come in three shapes: pick the closest to the image's."""
    if aspect_ratio in VIDEO_ASPECT_RATIOS:
        return aspect_ratio  # type: ignore[return-value]
    try:
        w, h = (float(x) for x in (aspect_ratio or "16:9").split(":"))
    except ValueError:
        return "16:9"
    ratio = w / h
    return min(VIDEO_ASPECT_RATIOS, key=lambda r: abs(_ratio(r) - ratio))


def _ratio(text: str) -> float:
    w, h = text.split(":")
    return float(w) / float(h)


class AnimateModal(discord.ui.Modal):
    """Asks for the video prompt; mode and duration start at the guild's defaults."""

    def __init__(self, task: TaskRecord, defaults: GenerationDefaults | None = None) -> None:
        super().__init__(
            title=f"Animate {task.short_ref}",
            timeout=900,
            custom_id=f"kling:animate-modal:{task.id}",
        )
        # The fields' start values (an emptied field means the guild's default again).
        preset = (defaults or GenerationDefaults()).video_options(
            mode=None, duration=None, aspect_ratio=None
        )
        self.prompt: discord.ui.TextInput[AnimateModal] = discord.ui.TextInput(
            label="Prompt: what should happen in the video?",
            custom_id="prompt",
            style=discord.TextStyle.paragraph,
            default=embeds.short(task.params.get("prompt"), 2500) or None,
            max_length=2500,
            required=True,
        )
        self.mode: discord.ui.TextInput[AnimateModal] = discord.ui.TextInput(
            label="Mode: std or pro",
            custom_id="mode",
            default=preset["mode"],
            required=False,
            max_length=3,
        )
        self.duration: discord.ui.TextInput[AnimateModal] = discord.ui.TextInput(
            label="Duration in seconds: 5 or 10",
            custom_id="duration",
            default=preset["duration"],
            required=False,
            max_length=2,
        )
        self.add_item(self.prompt)
        self.add_item(self.mode)
        self.add_item(self.duration)

    # No on_submit: ``on_animate_modal_submit`` answers every submission, this process's
    # modals and those opened before a restart alike (discord.py forgets those).


def _modal_values(components: list[dict[str, Any]]) -> dict[str, str]:
    """The text inputs of a modal submission, by custom_id, in action rows or labels."""
    values: dict[str, str] = {}
    for component in components:
        if "custom_id" in component and "value" in component:
            values[component["custom_id"]] = str(component["value"])
        nested = component.get("components") or []
        if "component" in component:
            nested = [*nested, component["component"]]
        values.update(_modal_values(nested))
    return values


async def on_animate_modal_submit(interaction: discord.Interaction[KlingBot]) -> None:
    """The Animate modal's submission: a video task from the image task's results."""
    if interaction.type is not discord.InteractionType.modal_submit:
        return
    data: dict[str, Any] = interaction.data or {}  # type: ignore[assignment]
    match = ANIMATE_MODAL_ID.fullmatch(str(data.get("custom_id", "")))
    if match is None:
        return
    task_id = int(match["id"])
    try:
        await _submit_animation(interaction, task_id, _modal_values(data.get("components") or []))
    except Exception as exc:
        await _report(interaction, exc, f"Animate of task {task_id}")


async def _submit_animation(
    interaction: discord.Interaction[KlingBot], task_id: int, fields: dict[str, str]
) -> None:
    bot = interaction.client
    task = await _load_task(interaction, task_id)
    await _require_generation_rights(interaction, task)
    defaults = (await guild_config(bot, interaction.guild_id)).defaults
    preset = defaults.video_options(mode=None, duration=None, aspect_ratio=None)
    mode = (fields.get("mode") or preset["mode"]).strip().lower()
    duration = (fields.get("duration") or preset["duration"]).strip().rstrip("s").strip()
    prompt = (fields.get("prompt") or "").strip()
    if mode not in ("std", "pro"):
        raise Refused(f"Mode must be std or pro, not “{mode}”.")
    if duration not in ("5", "10"):
        raise Refused(f"Duration must be 5 or 10 seconds, not “{duration}”.")
    if not prompt:
        raise Refused("A video needs a prompt: say what should happen in it.")
    await interaction.response.defer(thinking=True)
    paths = bot.tracker.result_paths(task)[:MAX_ANIMATE_IMAGES]
    try:
        if not paths:
            raise FileNotFoundError
        datas = await asyncio.gather(*(asyncio.to_thread(p.read_bytes) for p in paths))
    except FileNotFoundError:
        days = f"{bot.settings.retention_days:g}"
        raise Refused(
            f"The result images of {task.short_ref} were deleted after {days} days: "
            "press Again to make new ones first."
        ) from None
    items = [(f"image{i + 1}", data) for i, data in enumerate(datas)]
    # The image's shape matters more than a default shape.
    aspect_ratio = nearest_video_ratio(task.params.get("aspect_ratio"))
    params: dict[str, Any] = {
        "prompt": prompt,
        **GenerationDefaults().video_options(
            mode=mode, duration=duration, aspect_ratio=aspect_ratio
        ),
    }
    await bot.submit_request(interaction, TaskKind.VIDEO, params, items)
