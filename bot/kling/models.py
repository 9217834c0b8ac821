"""Kling's request and response bodies.

Requests are strict: a bad value fails here, before any credit is spent. Responses are lenient:
relays send ``code`` as a string, add fields and leave optional ones out, and all of that parses.
One ``KlingTask`` model serves create, query, list and callback bodies.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bot.kling.options import (
    DEFAULT_IMAGE_ASPECT_RATIO,
    DEFAULT_IMAGE_COUNT,
    DEFAULT_IMAGE_MODEL,
    DEFAULT_VIDEO_ASPECT_RATIO,
    DEFAULT_VIDEO_DURATION,
    DEFAULT_VIDEO_MODE,
    DEFAULT_VIDEO_MODEL,
    IMAGE_COUNT_MAX,
    IMAGE_COUNT_MIN,
    MAX_EXTERNAL_TASK_ID_CHARS,
    MAX_INPUT_IMAGES,
    MAX_PROMPT_CHARS,
    ImageAspectRatio,
    ImageModel,
    VideoAspectRatio,
    VideoDuration,
    VideoMode,
    VideoModel,
)


class TaskKind(StrEnum):
    IMAGE = "image"
    VIDEO = "video"


class TaskStatus(StrEnum):
    SUBMITTED = "submitted"
    PROCESSING = "processing"
    SUCCEED = "succeed"
    FAILED = "failed"

    @property
    def is_terminal(self) -> bool:
        return self in (TaskStatus.SUCCEED, TaskStatus.FAILED)


# --- requests (strict) -------------------------------------------------------------------------


def strip_required_prompt(value: Any) -> Any:
    """Stripped before the length check, so that a prompt of only spaces counts as missing."""
    return value.strip() if isinstance(value, str) else value


def _no_data_uri(images: list[str]) -> list[str]:
    for value in images:
        if not value:
            raise ValueError("an image is empty")
        if value.startswith("data:"):
            raise ValueError("images must be a URL or raw base64 without a 'data:' prefix")
    return images


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)

    prompt: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
    negative_prompt: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
    watermark: bool | None = None
    callback_url: str | None = None
    external_task_id: str | None = Field(default=None, max_length=MAX_EXTERNAL_TASK_ID_CHARS)


class ImageTaskRequest(_Request):
    """A multi-image to image task. Images are URLs or raw base64 strings."""

    model_name: ImageModel = DEFAULT_IMAGE_MODEL
    subject_images: list[str] = Field(min_length=1, max_length=MAX_INPUT_IMAGES)
    scene_image: str | None = None
    style_image: str | None = None
    n: int = Field(default=DEFAULT_IMAGE_COUNT, ge=IMAGE_COUNT_MIN, le=IMAGE_COUNT_MAX)
    aspect_ratio: ImageAspectRatio = DEFAULT_IMAGE_ASPECT_RATIO

    _check_subjects = field_validator("subject_images")(_no_data_uri)

    @field_validator("scene_image", "style_image")
    @classmethod
    def _check_optional(cls, value: str | None) -> str | None:
        return None if value is None else _no_data_uri([value])[0]

    @property
    def slots(self) -> int:
        """Kling's concurrency slots this task holds while it runs."""
        return self.n


class VideoTaskRequest(_Request):
    """A multi-image to video task. The prompt is required."""

    model_name: VideoModel = DEFAULT_VIDEO_MODEL
    images: list[str] = Field(min_length=1, max_length=MAX_INPUT_IMAGES)
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    mode: VideoMode = DEFAULT_VIDEO_MODE
    duration: VideoDuration = DEFAULT_VIDEO_DURATION
    aspect_ratio: VideoAspectRatio = DEFAULT_VIDEO_ASPECT_RATIO

    _check_images = field_validator("images")(_no_data_uri)

    _strip_prompt = field_validator("prompt", mode="before")(strip_required_prompt)

    @property
    def slots(self) -> int:
        return 1


TaskRequest = ImageTaskRequest | VideoTaskRequest


# --- responses (lenient) -----------------------------------------------------------------------


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", coerce_numbers_to_str=True)

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, value: Any) -> Any:
        # Relays send null where they have nothing ("message": null, "images": null): treat it
        # as the field left out, so its default ("", [], False, None) applies.
        if isinstance(value, dict):
            return {key: item for key, item in value.items() if item is not None}
        return value


class ImageResult(_Lenient):
    index: int | None = None
    url: str | None = None
    watermark_url: str | None = None


class VideoResult(_Lenient):
    id: str | None = None
    url: str | None = None
    watermark_url: str | None = None
    duration: str | None = None


class TaskResult(_Lenient):
    images: list[ImageResult] = Field(default_factory=list)
    videos: list[VideoResult] = Field(default_factory=list)


class TaskInfo(_Lenient):
    external_task_id: str | None = None


class WatermarkInfo(_Lenient):
    enabled: bool = False


class KlingTask(_Lenient):
    """A task as Kling describes it in create, query, list and callback bodies."""

    task_id: str
    task_status: TaskStatus
    task_status_msg: str | None = None
    task_info: TaskInfo = Field(default_factory=TaskInfo)
    final_unit_deduction: str | None = None
    watermark_info: WatermarkInfo | None = None
    created_at: int | None = None
    updated_at: int | None = None
    task_result: TaskResult | None = None

    @field_validator("task_status", mode="before")
    @classmethod
    def _status_case(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("task_info", "task_result", "watermark_info", mode="before")
    @classmethod
    def _empty_objects(cls, value: Any, info: Any) -> Any:
        # Some relays send "" for objects that have nothing in them yet (null is dropped above).
        if value == "":
            return TaskInfo() if info.field_name == "task_info" else None
        return value

    @property
    def external_task_id(self) -> str | None:
        return self.task_info.external_task_id

    @property
    def is_terminal(self) -> bool:
        return self.task_status.is_terminal

    def result_urls(self) -> list[str]:
        """The download URLs of every result, images and videos, in Kling's order."""
        if self.task_result is None:
            return []
        items: list[ImageResult | VideoResult] = [
            *self.task_result.images,
            *self.task_result.videos,
        ]
        return [item.url for item in items if item.url]


class Envelope(_Lenient):
    """``{"code", "message", "request_id", "data"}`` around every answer but callbacks."""

    code: int
    message: str = ""
    request_id: str | None = None
    data: Any = None

    @field_validator("code", mode="before")
    @classmethod
    def _code_as_text(cls, value: Any) -> Any:
        return value.strip() if isinstance(value, str) else value
