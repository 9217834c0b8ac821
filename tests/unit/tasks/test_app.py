"""The composition root (bot/app.py): what it builds, that it closes it all, and that the bot
never loads the simulator unless it simulates."""

from __future__ import annotations

import asyncio
import subprocess
import sys

from bot.app import open_app, open_kling
from bot.kling.models import TaskKind
from bot.kling.params import ImageParams
from bot.tasks.models import TaskState
from kling_sim.simulator import KlingSimulator
from testing.paths import REPO_ROOT
from testing.settings import settings_for
from testing.tracker_harness import origin, subject

PROBE = """
import importlib, pkgutil, sys
import bot, bot.tasks
for name in ["bot.app", "bot.discord.runner", "bot.discord.bot", "bot.config"] + sorted(
    m.name for m in pkgutil.iter_modules(bot.tasks.__path__, "bot.tasks.")
):
    importlib.import_module(name)
print(" ".join(sorted(m for m in sys.modules if m == "kling_sim" or m.startswith("kling_sim."))))
"""


def test_the_bot_does_not_import_the_simulator_until_it_simulates() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


async def test_open_app_builds_a_working_core_and_closes_everything(
    simulator: KlingSimulator,
) -> None:
    settings = settings_for(simulator)
    async with open_app(settings) as app:
        assert app.core.settings is app.settings and app.core.client is app.client
        assert app.core.tasks is app.stores.tasks
        assert app.core.guild_settings is app.stores.guild_settings
        await app.core.start()
        record = await app.core.submit(
            TaskKind.IMAGE, ImageParams(prompt="a cat"), [subject()], origin()
        )
        for _ in range(200):
            done = await app.core.tasks.get(record.id)
            if done is not None and done.state is TaskState.SUCCEED:
                break
            await asyncio.sleep(0.05)
        assert done is not None and done.state is TaskState.SUCCEED
        # The client reports its calls to the core's metrics (the composition root wires it).
        assert app.core.metrics.kling_calls[("create_image", "0")] == 1
        stores, session = app.stores, app.session
    assert session.closed
    assert not await stores.ping()  # closed with the app


async def test_simulate_starts_a_simulator_in_process_whatever_the_settings_name(
    simulator: KlingSimulator,
) -> None:
    # Settings that name a real-looking Kling: --simulate must never send anything there.
    settings = settings_for(simulator, kling_base_url="https://api.example.invalid")
    async with open_app(settings, simulate=True) as app:
        assert app.settings.simulated
        assert app.settings.kling_base_url is not None
        assert app.settings.kling_base_url.startswith("http://127.0.0.1:")
        assert app.settings.kling_base_url != simulator.base_url
    async with open_kling(settings, simulate=True) as (simulated, client, session):
        assert simulated.kling_base_url and simulated.kling_base_url.startswith("http://127.0.0.1")
        assert not session.closed
        listed = await client.list_tasks(TaskKind.IMAGE, page=1, page_size=10)
        assert listed == []  # a fresh simulator of its own
    assert session.closed
