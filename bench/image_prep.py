"""Image preparation: valid 8 MB PNG and JPEG inputs (pass through, header checks only) against
inputs that must be decoded and re-encoded. Time per image, in this process, best of rounds."""

from __future__ import annotations

import io
import random
from typing import Any

from PIL import Image

from bench.report import best_seconds
from bot.kling.images import prepare_image

TARGET_BYTES = 8 * 1024 * 1024


def _noise(width: int, height: int, seed: int) -> Image.Image:
    """Content that does not compress away: seeded random noise."""
    return Image.frombytes(
        "RGB", (width, height), random.Random(seed).randbytes(width * height * 3)
    )


def _encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def _sized(fmt: str, **params: Any) -> bytes:
    """A ``fmt`` file just under 8 MB, found by growing a square of noise."""
    side, data = 1024, b""
    while True:
        candidate = _encode(_noise(side, side, side), fmt, **params)
        if len(candidate) > TARGET_BYTES:
            return data or candidate
        data, side = candidate, int(side * 1.15)


def inputs() -> list[tuple[str, str, bytes]]:
    """(name, expected path, bytes): two valid 8 MB inputs, then inputs needing conversion."""
    png = _sized("PNG", compress_level=1)
    jpeg = _sized("JPEG", quality=95)
    photo = Image.open(io.BytesIO(jpeg))
    photo.load()
    wide = photo.resize((photo.width * 3, photo.height))  # ratio 3:1, outside 1:2.5..2.5:1
    return [
        ("PNG, valid", "pass-through", png),
        ("JPEG, valid", "pass-through", jpeg),
        ("WebP (same photo)", "convert", _encode(photo, "WEBP", quality=90)),
        ("JPEG, EXIF rotated", "convert", _rotated(jpeg)),
        ("JPEG, 3:1 panorama", "convert", _encode(wide, "JPEG", quality=90)),
    ]


def _rotated(jpeg: bytes) -> bytes:
    image = Image.open(io.BytesIO(jpeg))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    return _encode(image, "JPEG", quality=95, exif=exif.tobytes())


def run(rounds: int = 5) -> list[dict[str, Any]]:
    rows = []
    for name, expected, data in inputs():
        prepared = prepare_image(data, "subject1")
        path = "pass-through" if not prepared.changed and prepared.data is data else "convert"
        seconds = best_seconds(lambda data=data: prepare_image(data, "subject1"), rounds)
        rows.append(
            {
                "input": name,
                "bytes": len(data),
                "expected": expected,
                "path": path,
                "changes": list(prepared.changes),
                "ms_per_image": seconds * 1000,
            }
        )
    return rows


def speedup(rows: list[dict[str, Any]]) -> float | None:
    """Slowest pass-through against the fastest conversion."""
    passing = [r["ms_per_image"] for r in rows if r["path"] == "pass-through"]
    converting = [r["ms_per_image"] for r in rows if r["path"] == "convert"]
    if not passing or not converting:
        return None
    return min(converting) / max(passing)
