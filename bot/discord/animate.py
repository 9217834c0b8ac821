"""The Animate modal: a video from an image task's results.

Its submissions are handled by ``on_animate_modal_submit`` (an ``on_interaction`` listener),
which reads the task id from the modal's ``custom_id`` and the fields from the interaction, so
a modal a member opened before a restart still works after it (discord.py forgets those).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import discord

from bot.discord.checks import Refused
from bot.discord.context import DiscordApp, app_of, locale_of
from bot.discord.errors import report_error
from bot.discord.guild_config import GenerationDefaults, load_guild_config
from bot.discord.submission import build_params, submit
from bot.discord.task_access import load_task, require_generation_rights
from bot.discord.words import one_of_words, short
from bot.kling.models import TaskKind
from bot.kling.options import (
    DEFAULT_VIDEO_ASPECT_RATIO,
    MAX_INPUT_IMAGES,
    MAX_PROMPT_CHARS,
    VIDEO_ASPECT_RATIOS,
    VIDEO_DURATIONS,
    VIDEO_IMAGE_LABELS,
    VIDEO_MODES,
)
from bot.tasks.models import TaskRecord
from bot.text import t

ANIMATE_MODAL_ID = re.compile(r"kling:animate-modal:(?P<id>[0-9]+)")


def nearest_video_ratio(aspect_ratio: str | None) -> str:
    """Kling videos come in fewer shapes than images: pick the closest to the image's."""
    if aspect_ratio in VIDEO_ASPECT_RATIOS:
        return aspect_ratio
    try:
        ratio = _ratio(aspect_ratio or DEFAULT_VIDEO_ASPECT_RATIO)
    except ValueError:
        return DEFAULT_VIDEO_ASPECT_RATIO
    return min(VIDEO_ASPECT_RATIOS, key=lambda r: abs(_ratio(r) - ratio))


def _ratio(text: str) -> float:
    w, h = text.split(":")
    return float(w) / float(h)


class AnimateModal(discord.ui.Modal):
    """Asks for the video prompt; mode and duration start at the guild's defaults."""

    def __init__(
        self,
        task: TaskRecord,
        defaults: GenerationDefaults | None = None,
        *,
        locale: str | None = None,
    ) -> None:
        super().__init__(
            title=t("modal.animate.title", locale, task=task.short_ref),
            timeout=900,
            custom_id=f"kling:animate-modal:{task.id}",
        )
        # The fields' start values (an emptied field means the guild's default again).
        preset = (defaults or GenerationDefaults()).video_options(
            mode=None, duration=None, aspect_ratio=None
        )
        self.prompt: discord.ui.TextInput[AnimateModal] = discord.ui.TextInput(
            label=t("modal.animate.prompt", locale),
            custom_id="prompt",
            style=discord.TextStyle.paragraph,
            default=short(task.params.get("prompt"), MAX_PROMPT_CHARS) or None,
            max_length=MAX_PROMPT_CHARS,
            required=True,
        )
        self.mode: discord.ui.TextInput[AnimateModal] = discord.ui.TextInput(
            label=t("modal.animate.mode", locale, modes=one_of_words(VIDEO_MODES, locale)),
            custom_id="mode",
            default=preset["mode"],
            required=False,
            max_length=max(len(mode) for mode in VIDEO_MODES),
        )
        durations = one_of_words(VIDEO_DURATIONS, locale)
        self.duration: discord.ui.TextInput[AnimateModal] = discord.ui.TextInput(
            label=t("modal.animate.duration", locale, durations=durations),
            custom_id="duration",
            default=preset["duration"],
            required=False,
            max_length=max(len(duration) for duration in VIDEO_DURATIONS),
        )
        self.add_item(self.prompt)
        self.add_item(self.mode)
        self.add_item(self.duration)

    # No on_submit: ``on_animate_modal_submit`` answers every submission, this process's
    # modals and those opened before a restart alike.


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


async def on_animate_modal_submit(interaction: discord.Interaction[Any]) -> None:
    """The Animate modal's submission: a video task from the image task's results."""
    if interaction.type is not discord.InteractionType.modal_submit:
        return
    data: dict[str, Any] = interaction.data or {}  # type: ignore[assignment]
    match = ANIMATE_MODAL_ID.fullmatch(str(data.get("custom_id", "")))
    if match is None:
        return
    task_id = int(match["id"])
    try:
        fields = _modal_values(data.get("components") or [])
        await _submit_animation(app_of(interaction), interaction, task_id, fields)
    except Exception as exc:
        await report_error(interaction, exc, f"animate of task {task_id}")


async def _submit_animation(
    app: DiscordApp, interaction: discord.Interaction[Any], task_id: int, fields: dict[str, str]
) -> None:
    task = await load_task(app, task_id)
    await require_generation_rights(app, interaction, task)
    defaults = (await load_guild_config(app, interaction.guild_id)).defaults
    preset = defaults.video_options(mode=None, duration=None, aspect_ratio=None)
    mode = (fields.get("mode") or preset["mode"]).strip().lower()
    duration = (fields.get("duration") or preset["duration"]).strip().rstrip("s").strip()
    prompt = (fields.get("prompt") or "").strip()
    locale = locale_of(interaction)
    if mode not in VIDEO_MODES:
        raise Refused("refused.bad_mode", modes=one_of_words(VIDEO_MODES, locale), value=mode)
    if duration not in VIDEO_DURATIONS:
        words = one_of_words(VIDEO_DURATIONS, locale)
        raise Refused("refused.bad_duration", durations=words, value=duration)
    if not prompt:
        raise Refused("refused.video_needs_prompt")
    await interaction.response.defer(thinking=True)
    images = await _result_images(app, task)
    # The image's shape matters more than a default shape.
    aspect_ratio = nearest_video_ratio(task.params.get("aspect_ratio"))
    options = GenerationDefaults().video_options(
        mode=mode, duration=duration, aspect_ratio=aspect_ratio
    )
    params = build_params(TaskKind.VIDEO, prompt=prompt, **options)
    await submit(app, interaction, params, images)


async def _result_images(app: DiscordApp, task: TaskRecord) -> list[tuple[str, bytes]]:
    """The image task's results, as the video's inputs (as many as a video takes)."""
    paths = app.tracker.result_paths(task)[:MAX_INPUT_IMAGES]
    try:
        if not paths:
            raise FileNotFoundError
        datas = await asyncio.gather(*(asyncio.to_thread(p.read_bytes) for p in paths))
    except FileNotFoundError:
        days = f"{app.settings.retention_days:g}"
        raise Refused("refused.results_deleted", task=task.short_ref, days=days) from None
    return list(zip(VIDEO_IMAGE_LABELS, datas, strict=False))
