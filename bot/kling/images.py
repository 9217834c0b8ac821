"""Turn a member's attachment into an image Kling accepts, and say what was changed.

Kling takes JPEG or PNG, at most 10 MB, at least 300 px a side, aspect ratio within
1:2.5..2.5:1, as raw base64. Files that already comply pass through byte for byte
without decoding; anything else is decoded, fixed and re-encoded.

Decoding costs memory that the file size does not hint at (a 100 KB PNG can hold 40 megapixels,
160 MB decoded), so ``prepare_images`` decodes one image at a time for the whole process.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import logging
import math
import re
import struct
from base64 import b64encode
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal, NamedTuple

from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

ImageFit = Literal["pad", "crop"]

MAX_BYTES = 10 * 1024 * 1024
MIN_SIDE = 300
MAX_RATIO = 2.5
MAX_PIXELS = 40_000_000
_ORIENTATION = 0x0112
_JPEG_QUALITIES = (92, 85, 75, 60)
_PNG_IEND = b"IEND"
_NAMES = {"WEBP": "WebP", "MPO": "JPEG"}  # MPO is a phone JPEG with extra frames appended
_NOT_IMAGES = {b"%PDF": "a PDF", b"PK\x03\x04": "a ZIP archive", b"\x1aE\xdf\xa3": "a video"}
_BOMB = (Image.DecompressionBombError, Image.DecompressionBombWarning)
# Inside a JPEG scan, 0xFF is followed by 0x00 (stuffing), RST0..7 or 0xFF (fill); anything else
# is the marker that ends the scan.
_JPEG_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_JPEG_EOI, _JPEG_SOS = 0xD9, 0xDA
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RST0..7: no length field


class _Rules(NamedTuple):
    max_bytes: int
    min_side: int
    ratio: float
    max_pixels: int

    def ratio_ok(self, w: int, h: int) -> bool:
        return 1 / self.ratio <= w / h <= self.ratio


_RULES = _Rules(MAX_BYTES, MIN_SIDE, MAX_RATIO, MAX_PIXELS)


@dataclass(frozen=True, slots=True)
class PreparedImage:
    label: str
    data: bytes
    format: Literal["jpeg", "png"]
    width: int
    height: int
    changes: tuple[str, ...]

    @property
    def changed(self) -> bool:
        return bool(self.changes)

    def base64(self) -> str:
        return b64encode(self.data).decode("ascii")

    @property
    def extension(self) -> str:
        return "jpg" if self.format == "jpeg" else "png"


class ImageRejected(ValueError):
    """An input that cannot be used. str(e) is one clear sentence for a member:
    which input, what is wrong, what to do."""

    def __init__(self, label: str, reason: str, hint: str) -> None:
        self.label, self.reason, self.hint = label, reason, hint
        super().__init__(f"{label}: {reason}. {hint}")


# Pixels are decoded in this one thread, whatever the number of commands or images: memory
# is bounded by one image (at most MAX_PIXELS), and what one decode frees the next one reuses
# (glibc keeps memory a thread freed in that thread's arena, so N threads would keep N peaks).
_DECODER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="image-decode")


@dataclass(slots=True)
class _Undecoded:
    """An input that must be decoded to be fixed: its header read, its pixels not yet."""

    image: Image.Image
    data: bytes  # without any trailer after a JPEG's end
    changes: tuple[str, ...]


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
    rules = _Rules(max_bytes, min_side, max_ratio, max_pixels)
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
    inspected = await asyncio.to_thread(_inspect, data, label, _RULES)
    if isinstance(inspected, PreparedImage):
        return inspected
    fix = functools.partial(_fix, inspected, label, fit, _RULES)
    return await asyncio.get_running_loop().run_in_executor(_DECODER, fix)


@contextlib.contextmanager
def _member_errors(label: str, data: bytes, rules: _Rules) -> Iterator[None]:
    """Pillow raises many types for bad data; members need one clear message."""
    try:
        yield
    except ImageRejected:
        raise
    except UnidentifiedImageError:
        raise _not_an_image(label, data) from None
    except _BOMB:  # Pillow's own, far higher limit
        raise _too_big(label, "", rules.max_pixels) from None
    except Exception as exc:
        log.info("rejecting %s as damaged: %r", label, exc)
        raise ImageRejected(
            label, "the image data is cut off or damaged", "Re-export it and attach it again."
        ) from None


def _inspect(data: bytes, label: str, rules: _Rules) -> PreparedImage | _Undecoded:
    """The file as it is when it complies, judged from its header; else what decoding needs."""
    if not data:
        raise ImageRejected(label, "the file is empty", "Attach the image again.")
    with _member_errors(label, data, rules):
        im = Image.open(io.BytesIO(data))  # reads the header only
        if im.width * im.height > rules.max_pixels:
            raise _too_big(label, f"{im.width:,}x{im.height:,} pixels, ", rules.max_pixels)
        data, changes = _without_jpeg_trailer(im, data)
        if not _complies(im, data, rules):
            return _Undecoded(im, data, changes)
        fmt: Literal["jpeg", "png"] = "png" if im.format == "PNG" else "jpeg"
        im.close()
        return PreparedImage(label, data, fmt, im.width, im.height, changes)


def _fix(undecoded: _Undecoded, label: str, fit: ImageFit, rules: _Rules) -> PreparedImage:
    data = undecoded.data
    with _member_errors(label, data, rules), undecoded.image as im:
        return _convert(im, data, label, fit, rules, list(undecoded.changes))


# --- fast path: header and metadata only, never pixels ---------------------------------


def _orientation(im: Image.Image, data: bytes) -> int | None:
    """EXIF orientation 1..8 (1 = upright), or None if only decoding can tell."""
    # PngImageFile.getexif() decodes the whole image to look for an eXIf chunk after IDAT,
    # so PNGs use the base method (header chunks only) and a late eXIf means "decode first".
    try:
        if im.format == "PNG":
            if "exif" not in im.info and b"eXIf" in _png_chunks(data):
                return None
            exif = Image.Image.getexif(im)
        else:
            exif = im.getexif()
        value = int(exif.get(_ORIENTATION, 1))
    except Exception:  # a broken EXIF block should not cost the member their image
        log.debug("ignoring unreadable EXIF", exc_info=True)
        return 1
    return value if 2 <= value <= 8 else 1


def _png_chunks(data: bytes) -> set[bytes]:
    """Chunk types of a structurally complete PNG (IEND last); empty if cut short."""
    types, pos = set(), 8
    while pos + 12 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        pos += 12 + length
        types.add(kind)
        if kind == _PNG_IEND:
            return types if pos == len(data) else set()
    return set()


def _intact(im: Image.Image, data: bytes) -> bool:
    """Cheap truncation check: a JPEG ends with EOI (maybe zero-padded), a PNG with IEND."""
    if im.format == "PNG":
        return _PNG_IEND in _png_chunks(data)
    if im.format in ("JPEG", "MPO"):
        return data[-4096:].rstrip(b"\0").endswith(b"\xff\xd9")
    return True  # other formats are always decoded, which finds any damage


def _jpeg_end(data: bytes) -> int | None:
    """Offset just past the EOI marker that ends the JPEG's main image, or None if the
    segments run out first (the file is cut short) or make no sense."""
    pos = 2  # after SOI
    while pos + 2 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
        elif marker == _JPEG_EOI:
            return pos + 2
        elif marker in _JPEG_STANDALONE:
            pos += 2
        else:
            # A segment with a length; EXIF thumbnails (their own SOI..EOI) are skipped whole.
            if pos + 4 > len(data):
                return None
            (length,) = struct.unpack_from(">H", data, pos + 2)
            pos += 2 + length
            if marker == _JPEG_SOS:
                scan_end = _JPEG_SCAN_END.search(data, pos)
                if scan_end is None:
                    return None
                pos = scan_end.start()
    return None


def _without_jpeg_trailer(im: Image.Image, data: bytes) -> tuple[bytes, tuple[str, ...]]:
    """A complete JPEG with bytes after its end (a phone's motion-photo video, say) keeps its
    image bytes exactly and loses the rest, which Kling has no use for and which would count
    against the size limit."""
    if im.format not in ("JPEG", "MPO") or _intact(im, data):
        return data, ()
    end = _jpeg_end(data)
    if end is None:  # really cut short: decoding decides whether it can be repaired
        return data, ()
    extra = len(data) - end
    return data[:end], (f"removed {extra} bytes of extra data after the end of the image",)


def _complies(im: Image.Image, data: bytes, rules: _Rules) -> bool:
    """Whether the bytes can go to Kling as they are, judged from headers and metadata.

    Any PNG colour type and bit depth (palette, grey, alpha, 16-bit): the PNG standard makes
    every decoder read them all. An animated PNG is not one picture, so it is not. A JPEG only
    as greyscale or YCbCr, the two that JFIF defines: Adobe's CMYK/YCCK JPEGs are an extension
    that decoders often get wrong (inverted colours), so they are converted to RGB here.
    """
    w, h = im.size
    if im.format == "PNG":
        right_kind = not getattr(im, "is_animated", False)
    else:
        right_kind = im.format in ("JPEG", "MPO") and im.mode in ("RGB", "L")
    return (
        right_kind
        and len(data) <= rules.max_bytes
        and min(w, h) >= rules.min_side
        and rules.ratio_ok(w, h)
        and _intact(im, data)
        and _orientation(im, data) == 1
    )


# --- slow path: decode, fix, re-encode --------------------------------------------------


def _convert(
    im: Image.Image,
    data: bytes,
    label: str,
    fit: ImageFit,
    rules: _Rules,
    changes: list[str],
) -> PreparedImage:
    source = _NAMES.get(im.format or "", im.format or "image")
    if im.format != "MPO" and getattr(im, "n_frames", 1) > 1:
        changes.append(f"used the first of {im.n_frames} frames of the animated {source}")
    sixteen_bit = (
        im.mode == "I" or im.mode.startswith("I;16") or (im.format == "PNG" and data[24] == 16)
    )
    if im.mode == "CMYK":
        changes.append("converted CMYK colours to RGB")
    orientation = _orientation(im, data)
    im.load()  # raises if pixel data is missing; a lost trailer alone is repairable
    if not _intact(im, data):
        changes.append("repaired the end of the file, which was missing")
    if orientation is None:  # a PNG whose eXIf chunk only loading reveals
        orientation = _orientation(im, data)
    if orientation != 1:
        ImageOps.exif_transpose(im, in_place=True)  # in place: one copy fewer at a time
        changes.append("rotated it upright as its EXIF orientation asks")
    if sixteen_bit:
        changes.append("reduced 16-bit colour to 8-bit")
        if im.mode not in ("RGB", "RGBA"):  # Pillow already scales 48/64-bit PNGs to 8-bit
            im = _replaced(im, im.convert("I"))
            im = _replaced(im, im.point(lambda v: v / 257, "L"))  # scale, don't clip
    im = _rgb(im)
    im = _fit_ratio(im, fit, rules, changes)
    w, h = im.size
    if min(w, h) < (short := rules.min_side):
        size = _scaled_size(w, h, short / min(w, h), rules)
        im = _replaced(im, im.resize(size, Image.Resampling.LANCZOS))
        changes.append(
            f"scaled up from {w}x{h} to {im.width}x{im.height} "
            f"(Kling needs at least {short} px a side)"
        )
    out, fmt, im = _encode(im, label, rules, changes)
    target = "PNG" if fmt == "png" else "JPEG"
    if source != target:
        changes.insert(0, f"converted {source} to {target}")
    if not changes:  # a PNG or JPEG that was only too big a file
        changes.append(f"re-saved it to fit under {rules.max_bytes / 1024 / 1024:g} MB")
    return PreparedImage(label, out, fmt, im.width, im.height, tuple(changes))


def _replaced(old: Image.Image, new: Image.Image) -> Image.Image:
    """``new``, with ``old``'s pixels freed at once rather than when the last reference goes:
    at 40 megapixels each copy is 160 MB."""
    if new is not old:
        old.close()
    return new


def _shrunk(im: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``im`` scaled down to ``size``, one axis at a time. Pillow's resize does the same two
    passes but holds the source, its intermediate and the result at once; here the source is
    freed before the second pass, so no more than two copies are ever held."""
    im = _replaced(im, im.resize((size[0], im.height), Image.Resampling.LANCZOS))
    return _replaced(im, im.resize(size, Image.Resampling.LANCZOS))


def _scaled_size(w: int, h: int, scale: float, rules: _Rules) -> tuple[int, int]:
    """``(w, h)`` times ``scale``, rounded, with the long side capped so that rounding cannot
    push a ratio just inside the limit over it (1500x600 must not become 1143x457)."""
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    if nw >= nh:
        return min(nw, math.floor(nh * rules.ratio)), nh
    return nw, min(nh, math.floor(nw * rules.ratio))


def _rgb(im: Image.Image) -> Image.Image:
    """RGBA if any pixel is see-through, else RGB."""
    if im.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in im.info:
        im = _replaced(im, im.convert("RGBA"))
        if im.getchannel("A").getextrema()[0] < 255:
            return im
    return im if im.mode == "RGB" else _replaced(im, im.convert("RGB"))


def _fit_ratio(im: Image.Image, fit: ImageFit, rules: _Rules, changes: list[str]) -> Image.Image:
    w, h = im.size
    if rules.ratio_ok(w, h):
        return im
    ratio = rules.ratio
    wide = w / h > ratio
    if fit == "crop":
        nw, nh = (math.floor(h * ratio), h) if wide else (w, math.floor(w * ratio))
        box = ((w - nw) // 2, (h - nh) // 2)
        changes.append(
            f"cropped the centre {nw}x{nh} out of {w}x{h} "
            f"(Kling needs a ratio between 1:{ratio:g} and {ratio:g}:1)"
        )
        return _replaced(im, im.crop((*box, box[0] + nw, box[1] + nh)))

    def padded(w: int, h: int) -> tuple[int, int]:
        return (w, math.ceil(w / ratio)) if wide else (math.ceil(h / ratio), h)

    nw, nh = padded(w, h)
    if nw * nh > rules.max_pixels:  # a padded panorama can be huge; shrink it to bound memory
        scale = math.sqrt(rules.max_pixels / (nw * nh))
        im = _shrunk(im, (max(1, int(w * scale)), max(1, int(h * scale))))
        nw, nh = padded(*im.size)
    # Transparent bars keep a cut-out subject clean; opaque photos get neutral grey.
    fill = (0, 0, 0, 0) if im.mode == "RGBA" else (128, 128, 128)
    canvas = Image.new(im.mode, (nw, nh), fill)
    canvas.paste(im, ((nw - im.width) // 2, (nh - im.height) // 2))
    im.close()
    changes.append(
        f"padded from {w}x{h} to {nw}x{nh} "
        f"(Kling needs a ratio between 1:{ratio:g} and {ratio:g}:1)"
    )
    return canvas


def _save(im: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def _encode(
    im: Image.Image, label: str, rules: _Rules, changes: list[str]
) -> tuple[bytes, Literal["jpeg", "png"], Image.Image]:
    # Output format: PNG only when the image really has see-through pixels and the PNG fits
    # under the limit; everything else is a JPEG (quality 92, transparency flattened on white),
    # which keeps photos small and is what Kling handles best.
    max_bytes, min_side = rules.max_bytes, rules.min_side
    limit = f"{max_bytes / 1024 / 1024:g} MB"
    if im.mode == "RGBA":
        png = _save(im, "PNG", optimize=True)
        if len(png) <= max_bytes:
            return png, "png", im
        flat = Image.new("RGB", im.size, (255, 255, 255))
        flat.paste(im, mask=im.getchannel("A"))
        im = _replaced(im, flat)
        changes.append(f"flattened transparency onto white to fit under {limit}")
    for quality in _JPEG_QUALITIES:
        out = _save(im, "JPEG", quality=quality)
        if len(out) <= max_bytes:
            if quality != _JPEG_QUALITIES[0]:
                changes.append(f"compressed harder (JPEG quality {quality}) to fit under {limit}")
            return out, "jpeg", im
    start = im.size
    while len(out) > max_bytes:
        w, h = im.size
        if min(w, h) <= min_side:
            raise ImageRejected(
                label,
                f"it cannot fit under {limit} without going below {min_side} px a side",
                "Attach a smaller or less detailed image.",
            )
        # File size tracks pixel count, so aim straight for the limit, with a 10% margin.
        scale = max(math.sqrt(max_bytes / len(out)) * 0.9, min_side / min(w, h))
        im = _shrunk(im, _scaled_size(w, h, scale, rules))
        out = _save(im, "JPEG", quality=_JPEG_QUALITIES[-1])
    changes.append(
        f"scaled down from {start[0]}x{start[1]} to {im.width}x{im.height} to fit under {limit}"
    )
    return out, "jpeg", im


# --- messages ----------------------------------------------------------------------------


def _not_an_image(label: str, data: bytes) -> ImageRejected:
    kind = next((k for magic, k in _NOT_IMAGES.items() if data.startswith(magic)), None)
    if kind is None and data[4:8] == b"ftyp":
        kind = "a video or HEIC photo"
    if kind is None and not any(b < 9 or 13 < b < 32 for b in data[:1024]):
        kind = "text"  # no control bytes: plain text in any ASCII-compatible encoding
    looks = f" (it looks like {kind})" if kind else " Kling can use"
    reason = f"this file is not an image{looks}"
    return ImageRejected(label, reason, "Attach a JPEG, PNG, WebP or GIF.")


def _too_big(label: str, dims: str, max_pixels: int) -> ImageRejected:
    return ImageRejected(
        label,
        f"the image is too large ({dims}over the {max_pixels / 1e6:g} megapixel limit)",
        "Resize it and attach it again.",
    )
