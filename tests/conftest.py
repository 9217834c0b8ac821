"""Fixtures shared by every test folder (plain helpers live in the ``testing`` package).

* ``simulator``: a started ``KlingSimulator`` with fast durations (submitted 0.05 s,
  processing 0.2 s, seed 1234); closed after the test. Change ``simulator.config`` freely.
* ``world``: the whole bot against the fake Discord and a simulator
  (``testing.discord_world.World``; the bot starts with ``world.start_bot()``). Used by
  tests/e2e and by the tasks tests that need a real delivery, so it lives here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from kling_sim.simulator import KlingSimulator, SimulatorConfig

if TYPE_CHECKING:
    from testing.discord_world import World


@pytest.fixture
async def simulator() -> AsyncIterator[KlingSimulator]:
    sim = KlingSimulator(SimulatorConfig(submitted_seconds=0.05, processing_seconds=0.2, seed=1234))
    await sim.start()
    try:
        yield sim
    finally:
        await sim.close()


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    # Imported here: only the tests that use it need the Discord side importable.
    from testing.discord_world import open_world

    async with open_world(tmp_path) as w:
        yield w
