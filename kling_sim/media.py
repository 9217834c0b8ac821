"""Result media for the Kling simulator: real PNGs and real H.264 MP4s, made from the request.

Every picture is composed the same way: the scene image (decoded from the request's base64) or a
gradient seeded by the task and index, the subject images pasted along the bottom, the prompt
written across the top and a large "SIMULATED" label, so nobody mistakes it for Kling's work.
Images given as URLs are drawn as labelled placeholder cards (the simulator fetches nothing).

The functions here are synchronous and CPU-bound; the simulator runs them with
``asyncio.to_thread`` and caches what they return. Output depends only on the inputs, so a cache
entry may be dropped and made again.

The video encoder (PyAV, which bundles FFmpeg) is an optional dependency, the ``video-sim``
extra: images need only Pillow, and ``video_encoder_missing`` tells whether videos can be made.
"""

from __future__ import annotations

import base64
import binascii
import colorsys
import hashlib
import io
import logging
import os
import tempfile
import textwrap
import threading
from dataclasses import dataclass
from types import ModuleType

from PIL import Image, ImageDraw, ImageFont

log = logging.getLogger(__name__)

VIDEO_EXTRA = "video-sim"

VIDEO_FPS = 10
# Small, even sizes (yuv420p needs even sides) keep a 5 s encode near 0.1 s.
VIDEO_SIZES: dict[str, tuple[int, int]] = {
    "16:9": (480, 270),
    "9:16": (270, 480),
    "1:1": (360, 360),
}
# The video frame pans over a picture this much larger than the frame.
PAN_MARGIN = 1.25


@dataclass(frozen=True, slots=True)
class MediaSpec:
    """What one result file shows. ``subjects``/``scene``/``style`` are URLs or raw base64."""

    task_id: str
    index: int
    aspect_ratio: str
    prompt: str = ""
    subjects: tuple[str, ...] = ()
    scene: str | None = None
    style: str | None = None
    watermark: bool = False


def ratio_size(aspect_ratio: str, long_side: int) -> tuple[int, int]:
    """Width and height (both even) of ``aspect_ratio`` such as ``"16:9"`` with that long side."""
    w, h = (int(part) for part in aspect_ratio.split(":"))
    if w >= h:
        width, height = long_side, round(long_side * h / w)
    else:
        width, height = round(long_side * w / h), long_side
    return max(2, width - width % 2), max(2, height - height % 2)


def video_size(aspect_ratio: str) -> tuple[int, int]:
    return VIDEO_SIZES.get(aspect_ratio) or ratio_size(aspect_ratio, 480)


_fonts = threading.local()


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    # One cache per thread: renders run in worker threads, and sharing a FreeType face across
    # threads is not documented as safe.
    cache: dict[int, ImageFont.ImageFont | ImageFont.FreeTypeFont]
    cache = _fonts.__dict__.setdefault("by_size", {})
    if size not in cache:
        try:
            cache[size] = ImageFont.load_default(size=size)
        except Exception:  # Pillow without FreeType: the bitmap font still draws.
            cache[size] = ImageFont.load_default()
    return cache[size]


def _decode(value: str | None) -> Image.Image | None:
    """The picture in raw base64 ``value``; None for URLs and anything unreadable."""
    if not value or value.startswith(("http://", "https://")):
        return None
    try:
        image = Image.open(io.BytesIO(base64.b64decode(value, validate=False)))
        image.load()
        return image.convert("RGB")
    except (binascii.Error, OSError, ValueError):
        return None


def _hue(task_id: str, index: int) -> float:
    digest = hashlib.blake2b(f"{task_id}/{index}".encode(), digest_size=2).digest()
    return int.from_bytes(digest, "big") / 65536


def _gradient(size: tuple[int, int], hue: float) -> Image.Image:
    # A 2-pixel image stretched with bilinear filtering is a cheap smooth gradient.
    top = tuple(round(c * 255) for c in colorsys.hsv_to_rgb(hue, 0.55, 0.95))
    bottom = tuple(round(c * 255) for c in colorsys.hsv_to_rgb((hue + 0.3) % 1, 0.7, 0.35))
    seed = Image.new("RGB", (1, 2))
    seed.putpixel((0, 0), top)
    seed.putpixel((0, 1), bottom)
    return seed.resize(size, Image.Resampling.BILINEAR)


def _cover(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Scale and centre-crop ``image`` to fill ``size``."""
    scale = max(size[0] / image.width, size[1] / image.height)
    scaled = image.resize(
        (max(size[0], round(image.width * scale)), max(size[1], round(image.height * scale))),
        Image.Resampling.BILINEAR,
    )
    left, top = (scaled.width - size[0]) // 2, (scaled.height - size[1]) // 2
    return scaled.crop((left, top, left + size[0], top + size[1]))


def _card(label: str, size: tuple[int, int], hue: float) -> Image.Image:
    color = tuple(round(c * 255) for c in colorsys.hsv_to_rgb(hue, 0.35, 0.85))
    card = Image.new("RGB", size, color)
    draw = ImageDraw.Draw(card)
    draw.rectangle((0, 0, size[0] - 1, size[1] - 1), outline=(40, 40, 40), width=2)
    draw.text((6, 6), label, fill=(20, 20, 20), font=_font(max(10, size[1] // 8)))
    return card


def compose(spec: MediaSpec, size: tuple[int, int]) -> Image.Image:
    """The picture for ``spec`` at ``size``: scene or gradient, subjects, prompt, label."""
    width, height = size
    hue = _hue(spec.task_id, spec.index)
    scene = _decode(spec.scene)
    canvas = _cover(scene, size) if scene is not None else _gradient(size, hue)
    if scene is not None:
        # Tint each index differently so that n results are visibly distinct.
        tint = _gradient(size, hue)
        canvas = Image.blend(canvas, tint, 0.25)
    draw = ImageDraw.Draw(canvas)

    # Subjects in a row along the bottom third.
    count = max(1, len(spec.subjects))
    slot_w = width // (count + 1)
    thumb = (max(8, min(slot_w, height // 3)), max(8, min(slot_w, height // 3)))
    gap = (width - thumb[0] * count) // (count + 1)
    for i, subject in enumerate(spec.subjects):
        picture = _decode(subject)
        tile = (
            _cover(picture, thumb) if picture is not None else _card(f"subject {i + 1}", thumb, hue)
        )
        x = gap + i * (thumb[0] + gap)
        canvas.paste(tile, (x, height - thumb[1] - max(4, height // 20)))
    style = _decode(spec.style)
    if style is not None:
        corner = (max(8, width // 6), max(8, width // 6))
        canvas.paste(_cover(style, corner), (width - corner[0] - 4, 4))

    # Prompt across the top, wrapped; then the label in the middle.
    font_size = max(10, min(width, height) // 22)
    chars = max(10, int(width / (font_size * 0.55)))
    lines = textwrap.wrap(spec.prompt or "(no prompt)", chars)[:4]
    y = 6
    for line in lines:
        draw.text(
            (8, y),
            line,
            fill=(255, 255, 255),
            font=_font(font_size),
            stroke_width=2,
            stroke_fill=(0, 0, 0),
        )
        y += font_size + 4
    label_size = max(14, min(width, height) // 8)
    label = f"SIMULATED #{spec.index}"
    label_w = draw.textlength(label, font=_font(label_size))
    draw.text(
        ((width - label_w) / 2, height / 2 - label_size),
        label,
        fill=(255, 235, 59),
        font=_font(label_size),
        stroke_width=3,
        stroke_fill=(0, 0, 0),
    )
    if spec.watermark:
        mark = "Kling AI (simulated watermark)"
        draw.text((8, height - font_size - 4), mark, fill=(255, 255, 255), font=_font(font_size))
    return canvas


def render_png(spec: MediaSpec, long_side: int = 512) -> bytes:
    """A PNG of ``spec`` at the requested aspect ratio."""
    image = compose(spec, ratio_size(spec.aspect_ratio, long_side))
    out = io.BytesIO()
    # Level 1: several times faster than the default, and size hardly matters here.
    image.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def _video_encoder() -> ModuleType | None:
    """PyAV, or None when it is not installed (imported on first use: it loads FFmpeg)."""
    try:
        import av
    except ImportError:
        return None
    return av


def video_encoder_missing() -> bool:
    return _video_encoder() is None


def render_mp4(spec: MediaSpec, seconds: int = 5, fps: int = VIDEO_FPS) -> bytes:
    """A playable H.264 MP4 (yuv420p, ``fps``) panning over the composed picture.

    Raises ``RuntimeError`` when PyAV is not installed (the simulator refuses video tasks
    before that: see ``video_encoder_missing``).
    """
    av = _video_encoder()
    if av is None:
        raise RuntimeError(f"PyAV is not installed (the {VIDEO_EXTRA} extra)")
    width, height = video_size(spec.aspect_ratio)
    big = compose(spec, (round(width * PAN_MARGIN), round(height * PAN_MARGIN)))
    span_x, span_y = big.width - width, big.height - height
    frames = max(1, seconds * fps)
    font = _font(max(10, height // 18))
    # The MP4 muxer rewrites the file for +faststart (index first, so players stream it), which
    # needs a real path rather than a BytesIO.
    fd, path = tempfile.mkstemp(suffix=".mp4", prefix="klingsim-")
    os.close(fd)
    try:
        with av.open(path, mode="w", format="mp4", options={"movflags": "+faststart"}) as out:
            stream = out.add_stream(
                "libx264", rate=fps, options={"preset": "ultrafast", "crf": "28"}
            )
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for i in range(frames):
                t = i / max(1, frames - 1)
                x, y = round(span_x * t), round(span_y * t)
                frame_image = big.crop((x, y, x + width, y + height))
                ImageDraw.Draw(frame_image).text(
                    (width - 70, height - 20), f"{i / fps:4.1f}s", fill=(255, 255, 255), font=font
                )
                for packet in stream.encode(av.VideoFrame.from_image(frame_image)):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
        with open(path, "rb") as fh:
            return fh.read()
    finally:
        try:
            os.unlink(path)
        except OSError:
            log.debug("could not remove %s", path)
