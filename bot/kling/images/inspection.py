"""The fast path: judge an input from its header and metadata, never its pixels.

A file that already complies goes to Kling byte for byte; anything else is handed to
``conversion`` as an ``Undecoded`` image. Reading a header is cheap, so this runs in parallel
for every input, while decoding is kept to one image at a time.
"""

from __future__ import annotations

import io
import logging
import re
import struct
from dataclasses import dataclass

from PIL import Image

from bot.kling.images.rules import ImageFormat, PreparedImage, Rules, empty_file, too_many_pixels
from bot.text import t

log = logging.getLogger(__name__)

_ORIENTATION = 0x0112
_PNG_IEND = b"IEND"
# Inside a JPEG scan, 0xFF is followed by 0x00 (stuffing), RST0..7 or 0xFF (fill); anything else
# is the marker that ends the scan.
_JPEG_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_JPEG_EOI, _JPEG_SOS = 0xD9, 0xDA
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RST0..7: no length field


@dataclass(slots=True)
class Undecoded:
    """An input that must be decoded to be fixed: its header read, its pixels not yet."""

    image: Image.Image
    data: bytes  # without any trailer after a JPEG's end
    changes: tuple[str, ...]


def inspect(data: bytes, label: str, rules: Rules) -> PreparedImage | Undecoded:
    """The file as it is when it complies, judged from its header; else what decoding needs.

    Pillow's own errors propagate: the caller turns them into one message for the member.
    """
    if not data:
        raise empty_file(label)
    im = Image.open(io.BytesIO(data))  # reads the header only
    if im.width * im.height > rules.max_pixels:
        raise too_many_pixels(label, rules.max_pixels, im.size)
    data, changes = _without_jpeg_trailer(im, data)
    if not _complies(im, data, rules):
        return Undecoded(im, data, changes)
    fmt: ImageFormat = "png" if im.format == "PNG" else "jpeg"
    im.close()
    return PreparedImage(label, data, fmt, im.width, im.height, changes)


def orientation(im: Image.Image, data: bytes) -> int | None:
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


def intact(im: Image.Image, data: bytes) -> bool:
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
    if im.format not in ("JPEG", "MPO") or intact(im, data):
        return data, ()
    end = _jpeg_end(data)
    if end is None:  # really cut short: decoding decides whether it can be repaired
        return data, ()
    extra = len(data) - end
    return data[:end], (t("kling.image.change.trailer_removed", extra=extra),)


def _complies(im: Image.Image, data: bytes, rules: Rules) -> bool:
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
        and intact(im, data)
        and orientation(im, data) == 1
    )
