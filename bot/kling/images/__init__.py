"""Turn a member's attachment into an image Kling accepts, and say what was changed.

Kling takes JPEG or PNG, at most 10 MB, at least 300 px a side, aspect ratio within
1:2.5..2.5:1, as raw base64. Files that already comply pass through byte for byte
without decoding (``inspection``); anything else is decoded, fixed and re-encoded
(``conversion``). What Kling accepts and how a refusal reads live in ``rules``.

Decoding costs memory that the file size does not hint at (a 100 KB PNG can hold 40 megapixels,
160 MB decoded), so ``prepare_images`` decodes one image at a time for the whole process.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

from PIL import Image, UnidentifiedImageError

from bot.kling.images.conversion import convert
from bot.kling.images.inspection import Undecoded, inspect
from bot.kling.images.rules import (
    KLING_RULES,
    MAX_BYTES,
    MAX_PIXELS,
    MAX_RATIO,
    MIN_SIDE,
    ImageFit,
    ImageRejected,
    PreparedImage,
    Rules,
    damaged,
    not_an_image,
    too_many_pixels,
)

__all__ = [
    "MAX_BYTES",
    "MAX_PIXELS",
    "MAX_RATIO",
    "MIN_SIDE",
    "ImageFit",
    "ImageRejected",
    "PreparedImage",
    "prepare_image",
    "prepare_images",
]

log = logging.getLogger(__name__)

_BOMB = (Image.DecompressionBombError, Image.DecompressionBombWarning)

# Pixels are decoded in this one thread, whatever the number of commands or images: memory
# is bounded by one image (at most MAX_PIXELS), and what one decode frees the next one reuses
# (glibc keeps memory a thread freed in that thread's arena, so N threads would keep N peaks).
_DECODER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="image-decode")


def prepare_image(
    data: bytes,
    label: str,
    *,
    fit: ImageFit = "pad",
    max_bytes: int = MAX_BYTES,
    min_side: int = MIN_SIDE,
    max_ratio: float = MAX_RATIO,
    max_pixels: int = MAX_PIXELS,
) -> PreparedImage:
    """One input, decoded in the calling thread (tests, benchmarks); see prepare_images."""
    rules = Rules(max_bytes, min_side, max_ratio, max_pixels)
    inspected = _inspect(data, label, rules)
    if isinstance(inspected, PreparedImage):
        return inspected
    return _fix(inspected, label, fit, rules)


async def prepare_images(
    items: Sequence[tuple[str, bytes]], *, fit: ImageFit = "pad"
) -> list[PreparedImage]:
    """Prepare several inputs off the event loop; raises the first ImageRejected (input order).

    Headers are read in parallel, so a file that complies never waits; decoding happens one
    image at a time in the process's decode thread."""
    results = await asyncio.gather(
        *(_prepare_off_loop(data, label, fit) for label, data in items), return_exceptions=True
    )
    prepared: list[PreparedImage] = []
    for result in results:  # "first" in input order, so the message does not depend on timing
        if isinstance(result, BaseException):
            raise result
        prepared.append(result)
    return prepared


async def _prepare_off_loop(data: bytes, label: str, fit: ImageFit) -> PreparedImage:
    inspected = await asyncio.to_thread(_inspect, data, label, KLING_RULES)
    if isinstance(inspected, PreparedImage):
        return inspected
    fix = functools.partial(_fix, inspected, label, fit, KLING_RULES)
    return await asyncio.get_running_loop().run_in_executor(_DECODER, fix)


def _inspect(data: bytes, label: str, rules: Rules) -> PreparedImage | Undecoded:
    with _member_errors(label, data, rules):
        return inspect(data, label, rules)


def _fix(undecoded: Undecoded, label: str, fit: ImageFit, rules: Rules) -> PreparedImage:
    with _member_errors(label, undecoded.data, rules), undecoded.image:
        return convert(undecoded, label, fit, rules)


@contextlib.contextmanager
def _member_errors(label: str, data: bytes, rules: Rules) -> Iterator[None]:
    """Pillow raises many types for bad data; members need one clear message."""
    try:
        yield
    except ImageRejected:
        raise
    except UnidentifiedImageError:
        raise not_an_image(label, data) from None
    except _BOMB:  # Pillow's own, far higher limit
        raise too_many_pixels(label, rules.max_pixels) from None
    except Exception as exc:
        log.info("rejecting %s as damaged: %r", label, exc)
        raise damaged(label) from None
