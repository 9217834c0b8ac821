"""What Kling accepts as an input image, what a prepared image is, and how a refusal reads.

Shared by the header-only check (``inspection``) and the decode-and-fix path (``conversion``);
every sentence comes from the text catalogue (``kling.po``).
"""

from __future__ import annotations

from base64 import b64encode
from dataclasses import dataclass
from typing import Literal, NamedTuple

from bot.text import t

ImageFit = Literal["pad", "crop"]
ImageFormat = Literal["jpeg", "png"]

MAX_BYTES = 10 * 1024 * 1024
MIN_SIDE = 300
MAX_RATIO = 2.5
MAX_PIXELS = 40_000_000


class Rules(NamedTuple):
    max_bytes: int
    min_side: int
    ratio: float
    max_pixels: int

    def ratio_ok(self, w: int, h: int) -> bool:
        return 1 / self.ratio <= w / h <= self.ratio

    def size_limit(self) -> str:
        """The file size limit in words: "10 MB"."""
        return t("kling.image.megabytes", size=f"{self.max_bytes / 1024 / 1024:g}")

    def ratio_limit(self) -> str:
        """Why a ratio was changed, in words."""
        return t("kling.image.ratio_limit", ratio=f"{self.ratio:g}")


KLING_RULES = Rules(MAX_BYTES, MIN_SIDE, MAX_RATIO, MAX_PIXELS)


@dataclass(frozen=True, slots=True)
class PreparedImage:
    label: str
    data: bytes
    format: ImageFormat
    width: int
    height: int
    changes: tuple[str, ...]  # what was done to the file, one sentence each

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
        super().__init__(t("kling.image.rejected", label=label, reason=reason, hint=hint))


_NOT_IMAGES = {
    b"%PDF": "kling.image.kind.pdf",
    b"PK\x03\x04": "kling.image.kind.zip",
    b"\x1aE\xdf\xa3": "kling.image.kind.video",
}


def empty_file(label: str) -> ImageRejected:
    return ImageRejected(label, t("kling.image.empty"), t("kling.image.hint.attach_again"))


def damaged(label: str) -> ImageRejected:
    return ImageRejected(label, t("kling.image.damaged"), t("kling.image.hint.re_export"))


def not_an_image(label: str, data: bytes) -> ImageRejected:
    key = next((k for magic, k in _NOT_IMAGES.items() if data.startswith(magic)), None)
    if key is None and data[4:8] == b"ftyp":
        key = "kling.image.kind.video_or_heic"
    if key is None and not any(b < 9 or 13 < b < 32 for b in data[:1024]):
        key = "kling.image.kind.text"  # no control bytes: plain text in any ASCII encoding
    if key is None:
        reason = t("kling.image.not_an_image")
    else:
        reason = t("kling.image.not_an_image_but", kind=t(key))
    return ImageRejected(label, reason, t("kling.image.hint.formats"))


def too_many_pixels(
    label: str, max_pixels: int, size: tuple[int, int] | None = None
) -> ImageRejected:
    megapixels = f"{max_pixels / 1e6:g}"
    if size is None:
        reason = t("kling.image.too_large", megapixels=megapixels)
    else:
        width, height = (f"{side:,}" for side in size)
        reason = t("kling.image.too_large_size", width=width, height=height, megapixels=megapixels)
    return ImageRejected(label, reason, t("kling.image.hint.resize"))


def cannot_fit(label: str, rules: Rules) -> ImageRejected:
    reason = t("kling.image.cannot_fit", limit=rules.size_limit(), min_side=rules.min_side)
    return ImageRejected(label, reason, t("kling.image.hint.smaller"))
