"""Bytes of solid-colour images, made with Pillow, for requests and uploads."""

from __future__ import annotations

import io

from PIL import Image


def _image_bytes(fmt: str, width: int, height: int, color: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, format=fmt)
    return out.getvalue()


def make_png(
    width: int = 400, height: int = 400, color: tuple[int, int, int] = (200, 50, 50)
) -> bytes:
    return _image_bytes("PNG", width, height, color)


def make_jpeg(
    width: int = 400, height: int = 400, color: tuple[int, int, int] = (50, 50, 200)
) -> bytes:
    return _image_bytes("JPEG", width, height, color)


def png_bytes(size: tuple[int, int] = (400, 400), colour: str = "red") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def webp_bytes(size: tuple[int, int] = (400, 300)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, "blue").save(buf, "WEBP")
    return buf.getvalue()
