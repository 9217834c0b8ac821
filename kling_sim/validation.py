"""What the simulator accepts in a create body, flavour by flavour, as Kling checks it.

Each check raises ``ApiError`` in Kling's words (code 1201 names the field), so a request the
bot builds wrongly fails here as it would at Kling, before any credit. The allowed values are
``bot.kling.options``', the same ones the bot offers.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Mapping
from typing import Any

from PIL import Image

from bot.kling.options import (
    DEFAULT_IMAGE_ASPECT_RATIO,
    DEFAULT_IMAGE_COUNT,
    DEFAULT_IMAGE_MODEL,
    DEFAULT_VIDEO_ASPECT_RATIO,
    DEFAULT_VIDEO_DURATION,
    DEFAULT_VIDEO_MODE,
    DEFAULT_VIDEO_MODEL,
    IMAGE_ASPECT_RATIOS,
    IMAGE_COUNT_MAX,
    IMAGE_COUNT_MIN,
    IMAGE_MODELS,
    MAX_INPUT_IMAGES,
    MAX_PROMPT_CHARS,
    VIDEO_ASPECT_RATIOS,
    VIDEO_DURATIONS,
    VIDEO_MODELS,
    VIDEO_MODES,
)

MAX_IMAGE_BYTES = 10 * 1024 * 1024
MIN_IMAGE_SIDE = 300
MAX_IMAGE_RATIO = 2.5


class ApiError(Exception):
    """An answer in Kling's error envelope."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def invalid(message: str) -> ApiError:
    """Kling's "a parameter is wrong" answer."""
    return ApiError(400, 1201, message)


def validate_image(body: dict[str, Any], flavour: str) -> dict[str, Any]:
    """The checked fields of an image create body on ``flavour``'s path, else ApiError."""
    spec = _common(body)
    _choice(body, "model_name", IMAGE_MODELS, DEFAULT_IMAGE_MODEL)
    spec["prompt"] = _text(body, "prompt")
    low = 2 if flavour == "cometapi" else 1
    spec["images"] = _image_list(body, "subject_image_list", "subject_image", flavour, low)
    spec["scene"] = _image(body.get("scene_image"), "scene_image")
    if body.get("scence_image"):
        if flavour == "official":
            # Kling would silently ignore it; failing loudly catches the gateway spelling.
            raise invalid("scence_image: unknown field on the official API; use scene_image")
        spec["scene"] = spec["scene"] or _image(body["scence_image"], "scence_image")
    spec["style"] = _image(body.get("style_image"), "style_image")
    n = body.get("n", DEFAULT_IMAGE_COUNT)
    if n is None:
        n = DEFAULT_IMAGE_COUNT
    if isinstance(n, bool) or not isinstance(n, int) or not IMAGE_COUNT_MIN <= n <= IMAGE_COUNT_MAX:
        raise invalid(f"n: {n!r} must be an integer from {IMAGE_COUNT_MIN} to {IMAGE_COUNT_MAX}")
    spec["n"] = n
    spec["aspect_ratio"] = _choice(
        body, "aspect_ratio", IMAGE_ASPECT_RATIOS, DEFAULT_IMAGE_ASPECT_RATIO
    )
    spec.update(duration=None, mode=None)
    return spec


def validate_video(body: dict[str, Any], flavour: str) -> dict[str, Any]:
    """The checked fields of a video create body, else ApiError."""
    spec = _common(body)
    _choice(body, "model_name", VIDEO_MODELS, DEFAULT_VIDEO_MODEL)
    spec["images"] = _image_list(body, "image_list", "image", flavour, 1)
    spec["prompt"] = _text(body, "prompt", required=True)
    spec["mode"] = _choice(body, "mode", VIDEO_MODES, DEFAULT_VIDEO_MODE)
    spec["duration"] = _choice(body, "duration", VIDEO_DURATIONS, DEFAULT_VIDEO_DURATION)
    spec["aspect_ratio"] = _choice(
        body, "aspect_ratio", VIDEO_ASPECT_RATIOS, DEFAULT_VIDEO_ASPECT_RATIO
    )
    spec.update(n=1, scene=None, style=None)
    return spec


def page_param(query: Mapping[str, str], name: str, default: int, high: int) -> int:
    """A list's ``pageNum``/``pageSize`` query parameter, 1..``high``."""
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= high:
        raise invalid(f"{name}: {raw!r} must be an integer from 1 to {high}")
    return value


def _text(body: dict[str, Any], name: str, *, required: bool = False) -> str:
    value = body.get(name)
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise invalid(f"{name}: must be a string")
    if len(value) > MAX_PROMPT_CHARS:
        raise invalid(f"{name}: {len(value)} characters, at most {MAX_PROMPT_CHARS} allowed")
    if required and not value.strip():
        raise invalid(f"{name}: is required")
    return value


def _choice(body: dict[str, Any], name: str, allowed: tuple[str, ...], default: str) -> str:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, str):
        kind = type(value).__name__
        raise invalid(
            f"{name}: must be a string, one of {', '.join(allowed)} (got {kind} {value!r})"
        )
    if value not in allowed:
        raise invalid(f"{name}: {value!r} is not one of {', '.join(allowed)}")
    return value


def _image(value: Any, where: str, *, required: bool = False) -> str | None:
    """Check one input image (URL or raw base64 JPEG/PNG); "" or None means absent."""
    if value is None or value == "":
        if required:
            raise invalid(f"{where}: is required and must not be empty")
        return None
    if not isinstance(value, str):
        raise invalid(f"{where}: must be a string (an image URL or raw base64)")
    if value.startswith("data:"):
        raise invalid(f"{where}: base64 must not have a 'data:' prefix; send the raw base64 only")
    if value.startswith(("http://", "https://")):
        return value  # Kling fetches URLs later; the simulator does not fetch at all.
    if len(value) * 3 // 4 > MAX_IMAGE_BYTES + 3:
        raise invalid(f"{where}: image is larger than 10 MB")
    try:
        raw = base64.b64decode("".join(value.split()), validate=True)
        with Image.open(io.BytesIO(raw)) as image:
            fmt, (w, h) = image.format, image.size
    except (binascii.Error, ValueError, OSError):
        raise invalid(f"{where}: not an http(s) URL nor raw base64 of a JPEG/PNG image") from None
    if len(raw) > MAX_IMAGE_BYTES:
        raise invalid(f"{where}: image is {len(raw) / 2**20:.1f} MB, at most 10 MB allowed")
    if fmt not in ("JPEG", "PNG"):
        raise invalid(f"{where}: format {fmt} is not supported; use jpg, jpeg or png")
    if min(w, h) < MIN_IMAGE_SIDE:
        raise invalid(f"{where}: image is {w}x{h}; width and height must be at least 300 px")
    if max(w / h, h / w) > MAX_IMAGE_RATIO:
        raise invalid(f"{where}: image is {w}x{h}; aspect ratio must be within 1:2.5..2.5:1")
    return value


def _image_list(
    body: dict[str, Any], name: str, key: str, flavour: str, low: int
) -> tuple[str, ...]:
    items = body.get(name)
    if not isinstance(items, list):
        raise invalid(f"{name}: is required, a list of {low} to {MAX_INPUT_IMAGES} images")
    if not low <= len(items) <= MAX_INPUT_IMAGES:
        raise invalid(f"{name}: must hold {low} to {MAX_INPUT_IMAGES} images, got {len(items)}")
    images = []
    for i, item in enumerate(items):
        if isinstance(item, dict):
            images.append(_image(item.get(key), f"{name}[{i}].{key}", required=True))
        elif isinstance(item, str) and flavour != "official":
            images.append(_image(item, f"{name}[{i}]", required=True))  # seed 001's shape
        else:
            raise invalid(f'{name}[{i}]: must be an object {{"{key}": "<url or base64>"}}')
    return tuple(img for img in images if img)


def _common(body: dict[str, Any]) -> dict[str, Any]:
    watermark = body.get("watermark_info")
    if watermark is not None and not (
        isinstance(watermark, dict) and isinstance(watermark.get("enabled", False), bool)
    ):
        raise invalid('watermark_info: must be {"enabled": true|false}')
    callback = body.get("callback_url") or None
    if callback is not None and not (
        isinstance(callback, str) and callback.startswith(("http://", "https://"))
    ):
        raise invalid("callback_url: must be an http(s) URL")
    external = body.get("external_task_id")
    if external is not None and not isinstance(external, str):
        raise invalid("external_task_id: must be a string")
    _text(body, "negative_prompt")
    return {
        "watermark": bool(watermark and watermark.get("enabled")),
        "callback_url": callback,
        "external_task_id": external or None,
    }
