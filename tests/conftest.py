"""Fixtures shared by every test folder (plain helpers live in the ``testing`` package).

* ``simulator``: a started ``KlingSimulator`` with fast durations (submitted 0.05 s,
  processing 0.2 s, seed 1234); closed after the test. Change ``simulator.config`` freely.
* ``world``: the whole bot against the fake Discord and a simulator
  (``testing.discord_world.World``; the bot starts with ``world.start_bot()``). Used by
  tests/e2e and by the tasks tests that need a real delivery, so it lives here.
* ``postgres_server`` (session): the base URL of a PostgreSQL server: ``PG_TEST_URL`` if set,
  else a throwaway cluster the suite starts (``testing.postgres``) and removes at the end.
  Without PostgreSQL's binaries the tests that use it are skipped, saying what is missing;
  under ``CI=true`` that is a failure instead.
* ``postgres_url``: the URL of a fresh, empty database on that server, dropped after the test.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from kling_sim.simulator import KlingSimulator, SimulatorConfig
from testing.postgres import (
    PostgresUnavailable,
    ThrowawayCluster,
    create_database,
    drop_database,
    no_postgres,
)

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


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    given = os.environ.get("PG_TEST_URL")
    if given:
        yield given
        return
    try:
        cluster = ThrowawayCluster.start()
    except PostgresUnavailable as missing:
        no_postgres(missing)
    try:
        yield cluster.url
    finally:
        cluster.stop()


@pytest.fixture
async def postgres_url(postgres_server: str) -> AsyncIterator[str]:
    url = await create_database(postgres_server)
    try:
        yield url
    finally:
        await drop_database(postgres_server, url)
