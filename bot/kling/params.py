"""What a member chose for a task, typed: one model per kind of request, images aside.

A task's parameters travel from the command (slash command, button, CLI) through the store to
Kling's request body as these models. ``None`` means "not chosen": the bot's or Kling's default
applies. The store keeps ``params.model_dump(exclude_none=True)`` as JSON (the same shape the
rows have always had) and reads it back with ``params_for``. ``build_request`` joins the
parameters with the images into the body Kling is sent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bot.kling.errors import KlingInvalidRequest
from bot.kling.models import (
    ImageTaskRequest,
    TaskKind,
    TaskRequest,
    VideoTaskRequest,
    strip_required_prompt,
)
from bot.kling.options import (
    IMAGE_COUNT_MAX,
    IMAGE_COUNT_MIN,
    IMAGE_ROLE_LABELS,
    MAX_PROMPT_CHARS,
    SUBJECT_LABELS,
    ImageAspectRatio,
    ImageModel,
    VideoAspectRatio,
    VideoDuration,
    VideoMode,
    VideoModel,
)
from bot.text import t

__all__ = [
    "ImageParams",
    "TaskParams",
    "VideoParams",
    "build_request",
    "params_for",
]


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: ClassVar[TaskKind]
    prompt: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
    negative_prompt: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)

    def stored(self) -> dict[str, Any]:
        """The JSON object kept in the task's row: the options chosen, ``None`` left out."""
        return self.model_dump(exclude_none=True)


class ImageParams(_Params):
    """A multi-image to image task's options."""

    kind: ClassVar[TaskKind] = TaskKind.IMAGE
    model_name: ImageModel | None = None
    n: int | None = Field(default=None, ge=IMAGE_COUNT_MIN, le=IMAGE_COUNT_MAX)
    aspect_ratio: ImageAspectRatio | None = None

    @property
    def slots(self) -> int:
        """Kling's concurrency slots the task holds while it runs: one per image."""
        return self.n or 1


class VideoParams(_Params):
    """A multi-image to video task's options. The prompt is required."""

    kind: ClassVar[TaskKind] = TaskKind.VIDEO
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    # Rows have always recorded the (only) video model, so it is kept when read back.
    model_name: VideoModel | None = None
    mode: VideoMode | None = None
    duration: VideoDuration | None = None
    aspect_ratio: VideoAspectRatio | None = None

    _strip_prompt = field_validator("prompt", mode="before")(strip_required_prompt)

    @property
    def slots(self) -> int:
        return 1


TaskParams = ImageParams | VideoParams

_PARAMS_BY_KIND: dict[TaskKind, type[ImageParams] | type[VideoParams]] = {
    TaskKind.IMAGE: ImageParams,
    TaskKind.VIDEO: VideoParams,
}


def params_for(kind: TaskKind | str, data: Mapping[str, Any]) -> TaskParams:
    """The typed parameters of a ``kind`` task from their stored JSON object.

    Raises pydantic's ``ValidationError`` for values the model refuses.
    """
    return _PARAMS_BY_KIND[TaskKind(kind)].model_validate(dict(data))


def build_request(
    params: TaskParams,
    images: Sequence[tuple[str, str]],
    *,
    external_task_id: str | None = None,
    callback_url: str | None = None,
) -> TaskRequest:
    """Kling's request body from the parameters and ``(label, base64)`` images.

    Image tasks take ``subject1..4``, ``scene`` and ``style``; video tasks ``image1..4``, sent
    in the order given. Raises ``KlingInvalidRequest`` for an unknown label and pydantic's
    ``ValidationError`` for what the request model refuses (no subject image, say).
    """
    options = params.model_dump(exclude_none=True)
    extra: dict[str, Any] = {"external_task_id": external_task_id, "callback_url": callback_url}
    if isinstance(params, ImageParams):
        by_label = dict(images)
        unknown = set(by_label) - set(IMAGE_ROLE_LABELS) - set(SUBJECT_LABELS)
        if unknown:
            raise KlingInvalidRequest(
                t("kling.request.unknown_labels", labels=", ".join(sorted(unknown)))
            )
        subjects = [data for label, data in images if label in SUBJECT_LABELS]
        return ImageTaskRequest(
            subject_images=subjects,
            scene_image=by_label.get("scene"),
            style_image=by_label.get("style"),
            **options,
            **extra,
        )
    return VideoTaskRequest(images=[data for _, data in images], **options, **extra)
