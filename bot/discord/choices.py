"""The choices of the slash commands' options, from the one definition in ``bot.kling.options``.

Models and aspect ratios are shown as their values; modes and durations with words.
"""

from __future__ import annotations

from discord.app_commands import Choice

from bot.discord.localized import choice, described, plain_choices
from bot.kling.options import (
    IMAGE_ASPECT_RATIOS,
    IMAGE_MODELS,
    VIDEO_ASPECT_RATIOS,
    VIDEO_DURATIONS,
    VIDEO_MODES,
)
from bot.tasks.models import TaskState

IMAGE_RATIO_CHOICES = plain_choices(IMAGE_ASPECT_RATIOS)
VIDEO_RATIO_CHOICES = plain_choices(VIDEO_ASPECT_RATIOS)
MODEL_CHOICES = plain_choices(IMAGE_MODELS)
MODE_CHOICES: list[Choice[str]] = [choice(f"choice.mode.{mode}", mode) for mode in VIDEO_MODES]
DURATION_CHOICES: list[Choice[str]] = [
    Choice(name=described("choice.duration", count=int(seconds)), value=seconds)
    for seconds in VIDEO_DURATIONS
]
STATE_CHOICES = plain_choices(tuple(state.value for state in TaskState))
