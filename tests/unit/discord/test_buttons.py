"""The restart-safe task buttons share one base: the task id comes from the custom_id, and each
button's template matches only its own action."""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

import pytest

from bot.discord.buttons import (
    TASK_BUTTONS,
    AgainButton,
    AnimateButton,
    DetailsButton,
    TaskButton,
    result_view,
)
from bot.kling.models import TaskKind


def template(cls: type[TaskButton]) -> re.Pattern[str]:
    return cls.__discord_ui_compiled_template__


@pytest.mark.parametrize(
    ("cls", "action"),
    [(AgainButton, "again"), (AnimateButton, "animate"), (DetailsButton, "details")],
)
async def test_each_button_names_its_task_in_the_custom_id(
    cls: type[TaskButton], action: str
) -> None:
    assert issubclass(cls, TaskButton) and cls in TASK_BUTTONS
    button = cls(12)
    assert button.custom_id == f"kling:{action}:12"
    match = template(cls).fullmatch(button.custom_id)
    assert match is not None
    again = await cls.from_custom_id(None, None, match)  # type: ignore[arg-type]
    assert isinstance(again, cls) and again.task_id == 12
    others = [other for other in TASK_BUTTONS if other is not cls]
    assert all(template(other).fullmatch(button.custom_id) is None for other in others)


def task(kind: TaskKind) -> Any:
    return SimpleNamespace(id=3, kind=kind)


def labels(view: Any) -> list[str]:
    return [item.item.label for item in view.children]


async def test_a_result_post_offers_what_its_task_allows() -> None:
    assert labels(result_view(task(TaskKind.IMAGE), succeeded=True)) == [
        "Again",
        "Animate",
        "Details",
    ]
    assert labels(result_view(task(TaskKind.VIDEO), succeeded=True)) == ["Again", "Details"]
    assert labels(result_view(task(TaskKind.IMAGE), succeeded=False)) == ["Again", "Details"]
    direct = result_view(task(TaskKind.IMAGE), succeeded=True, direct_message=True)
    assert labels(direct) == ["Details"]
