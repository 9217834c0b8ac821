"""Shared test fixtures and helpers.

* ``simulator`` (fixture): a started ``KlingSimulator`` with fast durations (submitted 0.05 s,
  processing 0.2 s, seed 1234); closed after the test. Change ``simulator.config`` freely.
* ``make_png`` / ``make_jpeg`` (plain functions, ``from tests.conftest import make_png``):
  bytes of a solid-colour image of the given size.
* ``settings_for(simulator, **overrides)`` (plain function): ``bot.config.Settings`` pointed at
  the simulator, with a fresh temporary data directory and database and fast polling.
"""

from __future__ import annotations

import atexit
import io
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bot.config import SIMULATOR_ACCESS_KEY, SIMULATOR_SECRET_KEY, Settings
from kling_sim.simulator import KlingSimulator, SimulatorConfig


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


def settings_for(simulator: KlingSimulator, **overrides: Any) -> Settings:
    """Settings for the bot against ``simulator``; ``overrides`` win over every default here."""
    tmp = Path(tempfile.mkdtemp(prefix="kling-bot-test-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    values: dict[str, Any] = {
        "kling_provider": "simulator",
        "kling_base_url": simulator.base_url,
        "kling_access_key": SIMULATOR_ACCESS_KEY,
        "kling_secret_key": SIMULATOR_SECRET_KEY,
        "data_dir": tmp,
        "database_url": f"sqlite:///{tmp / 'kling-bot.db'}",
        "kling_request_timeout": 5.0,
        "kling_connect_timeout": 2.0,
        "poll_first_delay": 0.05,
        "poll_max_interval": 0.25,
        "poll_interval_with_callbacks": 0.5,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


@pytest.fixture
async def simulator() -> AsyncIterator[KlingSimulator]:
    sim = KlingSimulator(SimulatorConfig(submitted_seconds=0.05, processing_seconds=0.2, seed=1234))
    await sim.start()
    try:
        yield sim
    finally:
        await sim.close()
