"""The slow path: decode an input, fix what Kling would refuse, re-encode it, say what changed.

Runs in the process's one decode thread (see ``bot.kling.images``). At up to 40 megapixels each
copy of an image is 160 MB, so every step frees the pixels it replaces at once.
"""

from __future__ import annotations

import io
import math
from typing import cast

from PIL import Image, ImageOps

from bot.kling.images.inspection import Undecoded, intact, orientation
from bot.kling.images.rules import ImageFit, ImageFormat, PreparedImage, Rules, cannot_fit
from bot.text import t

_JPEG_QUALITIES = (92, 85, 75, 60)
_NAMES = {"WEBP": "WebP", "MPO": "JPEG"}  # MPO is a phone JPEG with extra frames appended


def convert(undecoded: Undecoded, label: str, fit: ImageFit, rules: Rules) -> PreparedImage:
    """The image decoded, fixed and re-encoded; Pillow's errors propagate to the caller."""
    im, data, changes = undecoded.image, undecoded.data, list(undecoded.changes)
    source = _NAMES.get(im.format or "", im.format or "image")
    frames: int = getattr(im, "n_frames", 1)
    if im.format != "MPO" and frames > 1:
        changes.append(t("kling.image.change.first_frame", frames=frames, source=source))
    sixteen_bit = (
        im.mode == "I" or im.mode.startswith("I;16") or (im.format == "PNG" and data[24] == 16)
    )
    if im.mode == "CMYK":
        changes.append(t("kling.image.change.cmyk"))
    turn = orientation(im, data)
    im.load()  # raises if pixel data is missing; a lost trailer alone is repairable
    if not intact(im, data):
        changes.append(t("kling.image.change.repaired_end"))
    if turn is None:  # a PNG whose eXIf chunk only loading reveals
        turn = orientation(im, data)
    if turn != 1:
        ImageOps.exif_transpose(im, in_place=True)  # in place: one copy fewer at a time
        changes.append(t("kling.image.change.rotated"))
    if sixteen_bit:
        changes.append(t("kling.image.change.eight_bit"))
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
            t("kling.image.change.scaled_up", size=_size(w, h), new_size=_size(*im.size),
              min_side=short)
        )  # fmt: skip
    out, fmt, im = _encode(im, label, rules, changes)
    target = "PNG" if fmt == "png" else "JPEG"
    if source != target:
        changes.insert(0, t("kling.image.change.converted", source=source, target=target))
    if not changes:  # a PNG or JPEG that was only too big a file
        changes.append(t("kling.image.change.resaved", limit=rules.size_limit()))
    return PreparedImage(label, out, fmt, im.width, im.height, tuple(changes))


def _size(w: int, h: int) -> str:
    return f"{w}x{h}"


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


def _scaled_size(w: int, h: int, scale: float, rules: Rules) -> tuple[int, int]:
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
        lowest_alpha, _ = cast(tuple[int, int], im.getchannel("A").getextrema())
        if lowest_alpha < 255:
            return im
    return im if im.mode == "RGB" else _replaced(im, im.convert("RGB"))


def _fit_ratio(im: Image.Image, fit: ImageFit, rules: Rules, changes: list[str]) -> Image.Image:
    w, h = im.size
    if rules.ratio_ok(w, h):
        return im
    ratio = rules.ratio
    wide = w / h > ratio
    if fit == "crop":
        nw, nh = (math.floor(h * ratio), h) if wide else (w, math.floor(w * ratio))
        box = ((w - nw) // 2, (h - nh) // 2)
        changes.append(
            t("kling.image.change.cropped", size=_size(w, h), new_size=_size(nw, nh),
              why=rules.ratio_limit())
        )  # fmt: skip
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
        t("kling.image.change.padded", size=_size(w, h), new_size=_size(nw, nh),
          why=rules.ratio_limit())
    )  # fmt: skip
    return canvas


def _save(im: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def _encode(
    im: Image.Image, label: str, rules: Rules, changes: list[str]
) -> tuple[bytes, ImageFormat, Image.Image]:
    # Output format: PNG only when the image really has see-through pixels and the PNG fits
    # under the limit; everything else is a JPEG (quality 92, transparency flattened on white),
    # which keeps photos small and is what Kling handles best.
    max_bytes, min_side = rules.max_bytes, rules.min_side
    limit = rules.size_limit()
    if im.mode == "RGBA":
        png = _save(im, "PNG", optimize=True)
        if len(png) <= max_bytes:
            return png, "png", im
        flat = Image.new("RGB", im.size, (255, 255, 255))
        flat.paste(im, mask=im.getchannel("A"))
        im = _replaced(im, flat)
        changes.append(t("kling.image.change.flattened", limit=limit))
    for quality in _JPEG_QUALITIES:
        out = _save(im, "JPEG", quality=quality)
        if len(out) <= max_bytes:
            if quality != _JPEG_QUALITIES[0]:
                changes.append(t("kling.image.change.compressed", quality=quality, limit=limit))
            return out, "jpeg", im
    start = im.size
    while len(out) > max_bytes:
        w, h = im.size
        if min(w, h) <= min_side:
            raise cannot_fit(label, rules)
        # File size tracks pixel count, so aim straight for the limit, with a 10% margin.
        scale = max(math.sqrt(max_bytes / len(out)) * 0.9, min_side / min(w, h))
        im = _shrunk(im, _scaled_size(w, h, scale, rules))
        out = _save(im, "JPEG", quality=_JPEG_QUALITIES[-1])
    changes.append(
        t("kling.image.change.scaled_down", size=_size(*start), new_size=_size(*im.size),
          limit=limit)
    )  # fmt: skip
    return out, "jpeg", im
