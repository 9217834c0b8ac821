"""Hardening of member images: decode memory is bounded per process, nothing is downloaded
for a request refused on its cheap checks, and a valid PNG passes whatever its colour type.

The memory bound is measured on a real child process (peak RSS); the order of the checks is
observed through the real bot against testing/fake_discord/, whose CDN records every GET.
"""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageFile

from bot.app import open_app
from bot.discord.bot import KlingBot
from bot.kling.images import prepare_image, prepare_images
from bot.tasks.store import Stores
from kling_sim.simulator import KlingSimulator
from testing.fake_discord import FakeDiscord, FakeInteraction
from testing.images import make_png
from testing.paths import REPO_ROOT
from testing.settings import settings_for

TOKEN = "fake-bot-token"
RED = (255, 0, 0)


def encode(im: Image.Image, fmt: str, **params: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def forbid_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decoding(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)


# --- point 13: a valid PNG passes byte-identical whatever its colour type --------------------


def palette_png() -> bytes:
    """The issue's case: a 640x480 palette (mode P) PNG, which was re-encoded (5.7 KB in,
    36.8 KB out) although it meets every rule."""
    im = Image.new("RGB", (640, 480), RED)
    im.paste((0, 0, 255), (0, 0, 320, 480))
    return encode(im.quantize(16), "PNG")


def transparent_palette_png() -> bytes:
    im = Image.new("P", (640, 480), 0)
    im.putpalette([*RED, 0, 0, 255])
    im.paste(1, (0, 0, 320, 480))
    return encode(im, "PNG", transparency=1)


VALID_PNGS: dict[str, Callable[[], bytes]] = {
    "P": palette_png,
    "P+tRNS": transparent_palette_png,
    "1": lambda: encode(Image.new("1", (640, 480), 1), "PNG"),
    "L": lambda: encode(Image.new("L", (640, 480), 90), "PNG"),
    "LA": lambda: encode(Image.new("LA", (640, 480), (90, 128)), "PNG"),
    "RGBA": lambda: encode(Image.new("RGBA", (640, 480), (*RED, 128)), "PNG"),
    "I;16": lambda: encode(Image.new("I;16", (640, 480), 40_000), "PNG"),
}


@pytest.mark.parametrize("mode", list(VALID_PNGS))
async def test_valid_png_passes_byte_identical_whatever_its_colour_type(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = VALID_PNGS[mode]()
    assert Image.open(io.BytesIO(data)).mode == mode.removesuffix("+tRNS")
    forbid_decoding(monkeypatch)  # judged from the header: the pixels are never decoded
    for prepared in (prepare_image(data, "subject1"), *await prepare_images([("subject1", data)])):
        assert prepared.data == data
        assert (prepared.format, prepared.width, prepared.height) == ("png", 640, 480)
        assert prepared.changes == ()


def test_palette_png_is_not_inflated() -> None:
    data = palette_png()
    assert len(prepare_image(data, "subject1").data) == len(data) < 10_000


def test_animated_png_is_still_converted_to_its_first_frame() -> None:
    # An APNG is a PNG only to decoders that show its default image: Kling's rules mean one
    # picture, so the first frame is sent, as for an animated GIF.
    frames = [Image.new("RGB", (400, 300), colour) for colour in (RED, (0, 0, 255))]
    data = encode(frames[0], "PNG", save_all=True, append_images=frames[1:])
    prepared = prepare_image(data, "subject1")
    assert prepared.data != data
    assert "used the first of 2 frames of the animated PNG" in prepared.changes


# --- point 9: decoding memory is bounded per process ----------------------------------------


async def test_images_are_decoded_one_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    decoding, most, lock = 0, 0, threading.Lock()
    real_load = ImageFile.ImageFile.load

    def counted_load(self: ImageFile.ImageFile) -> Any:
        nonlocal decoding, most
        with lock:
            decoding += 1
            most = max(most, decoding)
        time.sleep(0.05)  # long enough for decodes in parallel threads to overlap
        try:
            return real_load(self)
        finally:
            with lock:
                decoding -= 1

    monkeypatch.setattr(ImageFile.ImageFile, "load", counted_load)
    webps = [(f"subject{i}", encode(Image.new("RGB", (400, 300), RED), "WEBP")) for i in range(4)]
    prepared = await prepare_images(webps)
    assert all(p.format == "jpeg" and p.changed for p in prepared)
    assert most == 1


# The child prepares the files given on its command line, all at once through the real path,
# and reports its peak resident memory (ru_maxrss is in KiB on Linux).
MEASURE = """
import asyncio, json, resource, sys
from pathlib import Path
from bot.kling.images import prepare_images
items = [(f"image{i}", Path(p).read_bytes()) for i, p in enumerate(sys.argv[1:], 1)]
prepared = asyncio.run(prepare_images(items))
print(json.dumps({
    "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "changes": [p.changes for p in prepared],
}))
"""


def forty_megapixel_files(directory: Path) -> list[Path]:
    """Six small files that each declare 40 megapixels and each must be decoded to be fixed:
    phone portraits (EXIF orientation 6), CMYK JPEGs and panoramas wider than 2.5:1."""
    exif = Image.Exif()
    exif[0x0112] = 6
    files = {
        "portrait.jpg": lambda: encode(Image.new("RGB", (8000, 5000), RED), "JPEG", exif=exif),
        "print.jpg": lambda: encode(Image.new("CMYK", (8000, 5000), (0, 255, 255, 0)), "JPEG"),
        "panorama.png": lambda: encode(Image.new("RGB", (12_000, 3333), RED), "PNG"),
    }
    paths = []
    for name, make in files.items():
        data = make()
        assert len(data) < 2 * 1024 * 1024
        for copy in (1, 2):
            path = directory / f"{copy}-{name}"
            path.write_bytes(data)
            paths.append(path)
    return paths


@pytest.mark.slow
def test_decoding_six_forty_megapixel_images_at_once_stays_under_400_mb(tmp_path: Path) -> None:
    # Bound: images are decoded one at a time, and no step of a fix holds more than two
    # 4-byte-per-pixel copies: 2 x 160 MB = 305 MiB, plus ~30 MiB of interpreter and Pillow.
    # Measured: 353 MiB; before (all six decoded at once in six threads) 1,841 MiB.
    paths = forty_megapixel_files(tmp_path)
    run = subprocess.run(
        [sys.executable, "-c", MEASURE, *map(str, paths)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    report = json.loads(run.stdout)
    assert all(report["changes"]), report["changes"]  # every one really was decoded
    assert report["peak_mib"] < 400, f"peak RSS {report['peak_mib']:.0f} MiB"


# --- point 9: cheap checks before any download, through the real bot ------------------------


@dataclass
class Running:
    fake: FakeDiscord
    stores: Stores
    guild_id: int


@pytest.fixture
async def running(simulator: KlingSimulator) -> AsyncIterator[Running]:
    fake = FakeDiscord(token=TOKEN)
    await fake.start()
    guild = fake.add_guild(channels=("generation",))
    settings = settings_for(
        simulator,
        discord_token=TOKEN,
        discord_api_base=fake.api_base,
        discord_gateway_url=fake.gateway_url,
    )
    try:
        with fake.patch_discord_py():
            async with open_app(settings) as app:
                bot = KlingBot(
                    settings=app.settings,
                    tracker=app.core,
                    start_webhook=False,
                    guild_ready_timeout=0.05,
                )
                run = asyncio.create_task(bot.start(TOKEN))
                try:
                    await fake.wait_until_ready()
                    await asyncio.wait_for(bot.wait_until_ready(), 5)
                    yield Running(fake, app.stores, guild.id)
                finally:
                    await bot.close()
                    await run
    finally:
        await fake.close()


async def image_command(
    running: Running, prompt: str = "a red cube on a table", **attachments: Any
) -> FakeInteraction:
    return await running.fake.send_slash_command(
        "kling",
        subcommand="image",
        options={"prompt": prompt},
        attachments=attachments or {"subject1": ("cube.png", make_png())},
    )


async def refusal(running: Running, interaction: FakeInteraction) -> str:
    """The ephemeral follow-up that answers a refused (deferred) command."""
    await running.fake.wait_for_callback(interaction)
    deadline = time.monotonic() + 10
    while not running.fake.followups(interaction):
        assert time.monotonic() < deadline, "no follow-up"
        await asyncio.sleep(0.02)
    message = running.fake.followups(interaction)[0]
    assert message.ephemeral, message.content
    return message.content


def downloads(running: Running, filename: str = ".*") -> list[Any]:
    return running.fake.requests_to("GET", rf".*/attachments/\d+/{filename}")


def huge_photo(fake: FakeDiscord) -> dict[str, Any]:
    """A small file Discord reports as 12,000x9,000 (Discord measures images on upload)."""
    attachment = fake.add_attachment("cat.webp", encode(Image.new("RGB", (400, 300)), "WEBP"))
    return {**attachment, "width": 12_000, "height": 9000}


@pytest.mark.parametrize(
    "case", ["blocked word", "channel not allowed", "reported dimensions", "content type"]
)
async def test_cheap_refusals_download_nothing(running: Running, case: str) -> None:
    fake = running.fake
    attachments: dict[str, Any] = {"subject1": ("cube.png", make_png())}
    if case == "blocked word":
        await running.stores.guild_settings.set_guild_config(
            running.guild_id, {"blocked_words": ["cube"]}
        )
        expected = "blocked word “cube”"
    elif case == "channel not allowed":
        other = fake.add_channel(running.guild_id, name="elsewhere")
        await running.stores.guild_settings.set_guild_config(
            running.guild_id, {"allowed_channels": [other.id]}
        )
        expected = "not enabled in this channel"
    elif case == "reported dimensions":
        attachments["subject2"] = huge_photo(fake)
        expected = (
            "subject2 (cat.webp) is 12,000x9,000 pixels (108 megapixels), more than the 40 "
            "megapixels this bot can work on. Resize it and attach it again."
        )
    else:
        attachments["scene"] = ("notes.pdf", b"%PDF-1.7\n", "application/pdf")
        expected = (
            "scene (notes.pdf) is not an image (Discord says it is application/pdf). "
            "Attach a JPEG, PNG, WebP or GIF."
        )
    interaction = await image_command(running, **attachments)
    assert expected in await refusal(running, interaction)
    assert downloads(running) == []
    assert await running.stores.tasks.list_tasks() == []


async def test_member_over_the_daily_limit_downloads_nothing(running: Running) -> None:
    await running.stores.guild_settings.set_guild_config(running.guild_id, {"daily_limit": 1})
    first = await image_command(running, subject1=("first.png", make_png()))
    await running.fake.wait_for_callback(first)
    deadline = time.monotonic() + 10
    while not await running.stores.tasks.list_tasks():
        assert time.monotonic() < deadline, "the first task was never stored"
        await asyncio.sleep(0.02)
    assert downloads(running, r"first\.png")  # the fake does record attachment downloads

    second = await image_command(running, subject1=("second.png", make_png()))
    assert "limit of 1 tasks in 24 hours" in await refusal(running, second)
    assert downloads(running, r"second\.png") == []


async def test_image_refused_after_download_names_its_file(running: Running) -> None:
    interaction = await image_command(
        running, subject1=("cube.png", make_png()), subject3=("photo.png", b"not an image")
    )
    message = await refusal(running, interaction)
    assert message.startswith("subject3 (photo.png): this file is not an image"), message
