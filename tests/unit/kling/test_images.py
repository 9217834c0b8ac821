"""Tests for bot.kling.images: every image is generated here with Pillow."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import struct
import threading
import time
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from bot.kling import images
from bot.kling.images import ImageRejected, PreparedImage, prepare_image, prepare_images

RED, WHITE, BLUE = (255, 0, 0), (255, 255, 255), (0, 0, 255)


def encode(im: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def noise(w: int, h: int, mode: str = "RGB") -> Image.Image:
    return Image.frombytes(mode, (w, h), os.urandom(w * h * len(mode)))


def reopen(prepared: PreparedImage) -> Image.Image:
    im = Image.open(io.BytesIO(prepared.data))
    im.load()
    assert (im.width, im.height) == (prepared.width, prepared.height)
    assert im.format == {"jpeg": "JPEG", "png": "PNG"}[prepared.format]
    return im


def close(actual: tuple[int, ...], expected: tuple[int, ...], tol: int = 12) -> bool:
    return all(abs(a - e) <= tol for a, e in zip(actual, expected, strict=True))


def png_chunks(data: bytes) -> list[bytes]:
    out, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        out.append(data[pos : pos + 12 + length])
        pos += 12 + length
    return out


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_48_bit(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A 16-bit-per-channel RGB PNG, which Pillow can read but not write."""
    row = b"\0" + struct.pack(">3H", *rgb) * width  # filter type 0, then big-endian samples
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0))
        + png_chunk(b"IDAT", zlib.compress(row * height))
        + png_chunk(b"IEND", b"")
    )


def with_ihdr_size(png: bytes, width: int, height: int) -> bytes:
    """Rewrite the IHDR width/height (and its CRC) of a PNG, leaving the pixels alone."""
    body = bytearray(png[12:29])  # b"IHDR" + 13 bytes of fields
    struct.pack_into(">II", body, 4, width, height)
    return png[:12] + bytes(body) + struct.pack(">I", zlib.crc32(body)) + png[33:]


# --- pass-through -------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "expected"), [("PNG", "png"), ("JPEG", "jpeg")])
def test_compliant_image_passes_through_unchanged(fmt: str, expected: str) -> None:
    data = encode(Image.new("RGB", (640, 480), RED), fmt)
    prepared = prepare_image(data, "subject1")
    assert prepared.data is data
    assert prepared.changes == ()
    assert not prepared.changed
    assert (prepared.format, prepared.width, prepared.height) == (expected, 640, 480)
    assert prepared.extension == ("png" if expected == "png" else "jpg")


def test_pass_through_never_decodes_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[ImageFile.ImageFile] = []

    def no_decoding(self: ImageFile.ImageFile) -> None:
        decoded.append(self)  # recorded too, in case the error is swallowed somewhere
        raise AssertionError("pixels were decoded on the fast path")

    exif = Image.Exif()
    exif[0x0112] = 1
    inputs = [
        encode(Image.new("RGB", (640, 480), RED), "PNG"),
        encode(Image.new("RGBA", (480, 640), (0, 0, 255, 128)), "PNG"),
        encode(Image.new("RGB", (640, 480), RED), "PNG", exif=exif),
        encode(Image.new("RGB", (640, 480), RED), "JPEG", exif=exif),
        encode(Image.new("L", (300, 750), 90), "JPEG"),
    ]
    needs_work = encode(Image.new("RGB", (640, 480), RED), "WEBP")
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    for data in inputs:
        assert prepare_image(data, "subject1").data is data
    assert decoded == []
    # The patch really does bite whenever pixels are decoded.
    with pytest.raises(ImageRejected):
        prepare_image(needs_work, "subject1")


# --- conversion ---------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "name"), [("WEBP", "WebP"), ("BMP", "BMP"), ("TIFF", "TIFF")])
def test_other_formats_are_converted(fmt: str, name: str) -> None:
    prepared = prepare_image(encode(Image.new("RGB", (640, 480), RED), fmt), "scene")
    im = reopen(prepared)
    assert (prepared.format, im.size) == ("jpeg", (640, 480))
    assert prepared.changes == (f"converted {name} to JPEG",)
    assert close(im.getpixel((320, 240)), RED)


def test_animated_gif_uses_first_frame() -> None:
    frames = [Image.new("RGB", (400, 300), c) for c in (RED, BLUE, (0, 255, 0))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    prepared = prepare_image(data, "image2")
    im = reopen(prepared)
    assert im.size == (400, 300)
    assert close(im.getpixel((200, 150)), RED)
    assert "used the first of 3 frames of the animated GIF" in prepared.changes
    assert "converted GIF to JPEG" in prepared.changes


def test_exif_orientation_6_is_applied() -> None:
    im = Image.new("RGB", (400, 300), WHITE)
    im.paste(RED, (0, 0, 100, 100))  # marks the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    prepared = prepare_image(encode(im, "JPEG", exif=exif), "subject1")
    out = reopen(prepared)
    assert out.size == (300, 400)
    assert close(out.getpixel((250, 50)), RED)  # the marker is now top-right
    assert close(out.getpixel((50, 50)), WHITE)
    assert out.getexif().get(0x0112, 1) == 1  # not rotated twice by a viewer
    assert any("EXIF orientation" in c for c in prepared.changes)


def test_exif_after_png_pixel_data_is_still_honoured() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    chunks = png_chunks(encode(Image.new("RGB", (400, 300), WHITE), "PNG", exif=exif))
    exif_chunk = next(c for c in chunks if c[4:8] == b"eXIf")
    rest = [c for c in chunks if c is not exif_chunk]
    data = b"\x89PNG\r\n\x1a\n" + b"".join(rest[:-1]) + exif_chunk + rest[-1]
    assert Image.open(io.BytesIO(data)).info.get("exif") is None  # really after IDAT
    prepared = prepare_image(data, "subject1")
    assert (prepared.width, prepared.height) == (300, 400)


def test_cmyk_jpeg_becomes_rgb() -> None:
    data = encode(Image.new("CMYK", (400, 300), (0, 255, 255, 0)), "JPEG")
    prepared = prepare_image(data, "subject1")
    im = reopen(prepared)
    assert im.mode == "RGB"
    assert close(im.getpixel((200, 150)), RED)
    assert "converted CMYK colours to RGB" in prepared.changes


def test_16_bit_png_is_scaled_not_clipped() -> None:
    # A valid 16-bit PNG passes as it is; this one is too small, so it is re-encoded.
    im = Image.new("I;16", (200, 150), 65535)
    im.paste(128 * 257, (100, 0, 200, 150))  # clipping would turn this white too
    data = encode(im, "PNG")
    assert data[24] == 16
    prepared = prepare_image(data, "subject1")
    out = reopen(prepared).convert("L")
    assert out.size == (400, 300)
    assert abs(out.getpixel((100, 150)) - 255) <= 2
    assert abs(out.getpixel((300, 150)) - 128) <= 2
    assert "reduced 16-bit colour to 8-bit" in prepared.changes


def test_48_bit_png_is_reduced_to_8_bit_when_re_encoded() -> None:
    data = png_48_bit(200, 150, (0x8080, 0, 0xFFFF))  # too small: must be re-encoded
    assert Image.open(io.BytesIO(data)).mode == "RGB"  # the mode alone hides the depth
    prepared = prepare_image(data, "subject1")
    assert prepared.data is not data
    assert "reduced 16-bit colour to 8-bit" in prepared.changes
    assert close(reopen(prepared).getpixel((200, 150)), (128, 0, 255), tol=4)


def test_valid_48_bit_png_passes_through() -> None:
    data = png_48_bit(400, 300, (0x8080, 0, 0xFFFF))
    prepared = prepare_image(data, "subject1")
    assert prepared.data is data and prepared.changes == ()


def test_transparent_image_stays_png() -> None:
    im = Image.new("RGBA", (200, 150), (255, 0, 0, 255))
    im.paste((0, 0, 0, 0), (0, 0, 100, 150))
    prepared = prepare_image(encode(im, "WEBP", lossless=True), "subject1")
    out = reopen(prepared)
    assert (prepared.format, out.mode, out.size) == ("png", "RGBA", (400, 300))
    assert out.getpixel((50, 150))[3] == 0
    assert out.getpixel((350, 150)) == (255, 0, 0, 255)


def test_gif_transparency_survives() -> None:
    im = Image.new("P", (400, 300), 0)
    im.putpalette([*RED, *BLUE])
    im.paste(1, (0, 0, 200, 300))
    prepared = prepare_image(encode(im, "GIF", transparency=1), "subject1")
    out = reopen(prepared)
    assert prepared.format == "png"
    assert out.convert("RGBA").getpixel((100, 150))[3] == 0
    assert out.convert("RGBA").getpixel((300, 150)) == (*RED, 255)


def test_opaque_rgba_becomes_jpeg() -> None:
    data = encode(Image.new("RGBA", (640, 480), (0, 0, 255, 255)), "WEBP", lossless=True)
    prepared = prepare_image(data, "subject1")
    assert reopen(prepared).mode == "RGB"
    assert prepared.format == "jpeg"


def test_small_image_is_scaled_up() -> None:
    prepared = prepare_image(encode(Image.new("RGB", (200, 150), RED), "PNG"), "subject3")
    assert (reopen(prepared).size, prepared.format) == ((400, 300), "jpeg")
    assert "scaled up from 200x150 to 400x300 (Kling needs at least 300 px a side)" in (
        prepared.changes
    )


@pytest.mark.parametrize(
    ("size", "fit", "expected"),
    [
        ((3000, 500), "pad", (3000, 1200)),
        ((500, 3000), "pad", (1200, 3000)),
        ((3000, 500), "crop", (1250, 500)),
        ((500, 3000), "crop", (500, 1250)),
    ],
)
def test_extreme_ratio_is_fixed(
    size: tuple[int, int], fit: images.ImageFit, expected: tuple[int, int]
) -> None:
    im = Image.new("RGB", size, BLUE)
    im.paste(RED, (0, 0, size[0] // 2, size[1]))  # left half red, right half blue
    prepared = prepare_image(encode(im, "PNG"), "scene", fit=fit)
    out = reopen(prepared)
    assert abs(out.width - expected[0]) <= 1 and abs(out.height - expected[1]) <= 1
    assert 0.4 <= out.width / out.height <= 2.5
    assert close(out.getpixel((out.width // 2 - 20, out.height // 2)), RED)
    assert close(out.getpixel((out.width // 2 + 20, out.height // 2)), BLUE)
    corner = out.getpixel((5, 5))
    if fit == "pad":
        assert close(corner, (128, 128, 128))  # neutral bars, not stretched content
        assert any(c.startswith("padded from") for c in prepared.changes)
    else:
        assert close(corner, RED)  # picture right to the edge, no bars
        assert any(c.startswith("cropped the centre") for c in prepared.changes)


def test_oversized_file_is_recompressed() -> None:
    data = encode(noise(2000, 1900), "PNG", compress_level=1)
    assert len(data) > 10 * 1024 * 1024
    prepared = prepare_image(data, "subject1")
    out = reopen(prepared)
    assert len(prepared.data) <= 10 * 1024 * 1024
    assert min(out.size) >= 300
    assert prepared.format == "jpeg"


def test_oversized_file_is_scaled_down_when_compression_is_not_enough() -> None:
    data = encode(noise(1200, 900), "PNG", compress_level=1)
    prepared = prepare_image(data, "subject1", max_bytes=400_000)
    assert len(prepared.data) <= 400_000
    assert min(prepared.width, prepared.height) >= 300
    assert prepared.width < 1200
    assert any(c.startswith("scaled down from 1200x900") for c in prepared.changes)


def test_scaling_down_keeps_the_ratio_within_the_limit() -> None:
    # 1500x600 is exactly 2.5:1; plain rounding made it 1144x457 (2.503:1), which Kling refuses.
    data = encode(noise(1500, 600), "PNG", compress_level=1)
    prepared = prepare_image(data, "subject1", max_bytes=307_000)
    out = reopen(prepared)
    assert 1 / 2.5 <= out.width / out.height <= 2.5
    assert len(prepared.data) <= 307_000
    assert min(out.size) >= 300 and out.width < 1500
    assert any(c.startswith("scaled down from 1500x600") for c in prepared.changes)


def test_impossible_size_limit_is_rejected() -> None:
    data = encode(noise(600, 600), "PNG")
    with pytest.raises(ImageRejected, match=r"^subject4: .*cannot fit under") as caught:
        prepare_image(data, "subject4", max_bytes=20_000)
    assert caught.value.label == "subject4"


@given(
    w=st.integers(1, 1500),
    h=st.integers(1, 1500),
    fit=st.sampled_from(["pad", "crop"]),
)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_size_ends_up_within_the_rules(w: int, h: int, fit: images.ImageFit) -> None:
    prepared = prepare_image(encode(Image.new("RGB", (w, h), RED), "PNG"), "image1", fit=fit)
    out = reopen(prepared)
    assert min(out.size) >= 300
    assert 0.4 <= out.width / out.height <= 2.5
    assert prepared.changed == (min(w, h) < 300 or not 0.4 <= w / h <= 2.5)


# --- rejection ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "looks_like"),
    [
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", "a PDF"),
        (b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + bytes(40), "a ZIP archive"),
        (b"hello, this is my prompt\n", "text"),
    ],
)
def test_not_an_image_is_rejected(data: bytes, looks_like: str) -> None:
    with pytest.raises(ImageRejected) as caught:
        prepare_image(data, "subject2")
    assert str(caught.value) == (
        f"subject2: this file is not an image (it looks like {looks_like}). "
        "Attach a JPEG, PNG, WebP or GIF."
    )
    assert caught.value.label == "subject2"


def test_empty_input_is_rejected() -> None:
    with pytest.raises(ImageRejected, match=r"^scene: the file is empty\."):
        prepare_image(b"", "scene")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_image_is_rejected(fmt: str) -> None:
    data = encode(noise(600, 400), fmt)
    with pytest.raises(ImageRejected, match=r"^subject1: the image data is cut off or damaged"):
        prepare_image(data[: len(data) // 2], "subject1")


def test_missing_png_trailer_is_repaired_not_passed_through() -> None:
    data = encode(Image.new("RGB", (640, 480), RED), "PNG")
    assert data.endswith(b"IEND\xaeB`\x82")
    prepared = prepare_image(data[:-12], "subject1")
    assert prepared.data is not data
    assert "repaired the end of the file, which was missing" in prepared.changes
    reopen(prepared)


def with_app_segment(jpeg: bytes, payload: bytes) -> bytes:
    """``jpeg`` with an APP15 segment holding ``payload`` right after SOI (as an EXIF thumbnail
    sits there, with its own SOI..EOI)."""
    segment = b"\xff\xef" + struct.pack(">H", len(payload) + 2) + payload
    return jpeg[:2] + segment + jpeg[2:]


# Markers inside the trailer must not confuse the search for the image's own end.
MOTION_VIDEO = b"\x00\x00\x00\x18ftypmp42" + b"\x00\x01mdat\xff\xd9" * 2000 + b"moov"


@pytest.mark.parametrize(
    "make",
    [
        lambda: encode(noise(640, 480), "JPEG"),
        lambda: encode(noise(640, 480), "JPEG", progressive=True),  # many scans, markers between
        lambda: with_app_segment(encode(noise(640, 480), "JPEG"), b"thumb\xff\xd8\x00\xff\xd9end"),
    ],
    ids=["baseline", "progressive", "thumbnail-like-segment"],
)
def test_jpeg_with_data_after_its_end_keeps_the_image_bytes(
    monkeypatch: pytest.MonkeyPatch, make
) -> None:
    jpeg = make()
    # A phone's motion photo: the video is appended after the JPEG's EOI marker.
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("decoded"))
    prepared = prepare_image(jpeg + MOTION_VIDEO, "subject1")
    assert prepared.data == jpeg
    assert prepared.changes == (
        f"removed {len(MOTION_VIDEO)} bytes of extra data after the end of the image",
    )
    assert (prepared.format, prepared.width, prepared.height) == ("jpeg", 640, 480)


def test_jpeg_trailer_is_removed_before_the_other_rules() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    jpeg = encode(Image.new("RGB", (400, 300), RED), "JPEG", exif=exif)
    big_trailer = os.urandom(11 * 1024 * 1024)  # over 10 MB only because of the video
    prepared = prepare_image(jpeg + big_trailer, "subject1")
    out = reopen(prepared)
    assert out.size == (300, 400)
    assert len(prepared.data) < 1024 * 1024
    assert prepared.changes[0] == (
        f"removed {len(big_trailer)} bytes of extra data after the end of the image"
    )
    assert "rotated it upright as its EXIF orientation asks" in prepared.changes
    assert not any("scaled down" in c or "repaired" in c for c in prepared.changes)


def test_zero_padded_jpeg_still_passes_through() -> None:
    data = encode(Image.new("RGB", (640, 480), RED), "JPEG") + bytes(512)
    prepared = prepare_image(data, "subject1")
    assert prepared.data is data and prepared.changes == ()


def test_decompression_bomb_rejected_from_header() -> None:
    data = with_ihdr_size(encode(Image.new("L", (400, 300)), "PNG"), 50_000, 50_000)
    with pytest.raises(ImageRejected, match=r"^image3: the image is too large"):
        prepare_image(data, "image3")


def test_max_pixels_is_enforced() -> None:
    data = encode(Image.new("RGB", (640, 480)), "PNG")
    with pytest.raises(ImageRejected, match=r"^image1: .*too large \(640x480 pixels"):
        prepare_image(data, "image1", max_pixels=100_000)


def test_image_over_the_pixel_limit_is_refused_from_its_header(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = with_ihdr_size(encode(Image.new("L", (400, 300)), "PNG"), 9000, 5000)
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("decoded"))
    with pytest.raises(ImageRejected) as caught:
        prepare_image(data, "subject2")
    assert str(caught.value) == (
        "subject2: the image is too large (9,000x5,000 pixels, over the 40 megapixel limit). "
        "Resize it and attach it again."
    )


def test_unexpected_pillow_errors_become_rejections(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("decoder error -2")

    monkeypatch.setattr(ImageFile.ImageFile, "load", broken)
    with pytest.raises(ImageRejected, match=r"^scene: the image data is cut off or damaged"):
        prepare_image(encode(Image.new("RGB", (640, 480)), "BMP"), "scene")


# --- output helpers -----------------------------------------------------------------------


def test_base64_is_raw_and_round_trips() -> None:
    prepared = prepare_image(encode(Image.new("RGB", (200, 150), RED), "PNG"), "subject1")
    text = prepared.base64()
    assert not text.startswith("data:")
    assert "," not in text
    assert base64.b64decode(text, validate=True) == prepared.data


# --- async batch --------------------------------------------------------------------------


async def test_prepare_images_runs_pillow_off_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop_thread = threading.current_thread()
    seen: list[threading.Thread] = []
    real_open = Image.open

    def spy_open(*args: object, **kwargs: object) -> Image.Image:
        seen.append(threading.current_thread())
        time.sleep(0.2)  # would freeze the loop if it ran there
        return real_open(*args, **kwargs)

    monkeypatch.setattr(Image, "open", spy_open)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    red = encode(Image.new("RGB", (640, 480), RED), "PNG")
    small = encode(Image.new("RGB", (200, 150), BLUE), "WEBP")
    results = await prepare_images([("subject1", red), ("subject2", small)])
    task.cancel()
    assert [r.label for r in results] == ["subject1", "subject2"]
    assert results[0].data is red and results[1].changed
    assert len(seen) == 2 and loop_thread not in seen
    assert ticks >= 5  # the loop kept running while Pillow slept


async def test_prepare_images_raises_first_error_in_input_order() -> None:
    good = encode(Image.new("RGB", (640, 480), RED), "PNG")
    slow_bad = encode(noise(1500, 1000), "PNG")
    slow_bad = slow_bad[: len(slow_bad) // 2]  # fails only after decoding half of it
    with pytest.raises(ImageRejected) as caught:
        await prepare_images([("subject1", good), ("subject2", slow_bad), ("subject3", b"")])
    assert caught.value.label == "subject2"
    assert str(caught.value).startswith("subject2: the image data is cut off or damaged")
