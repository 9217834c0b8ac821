"""The Kling layer's place in the house: it sits on ``bot.config`` alone (no circle), never
loads Discord, the task core or the simulator, and none of its modules is over 400 lines."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from testing.paths import REPO_ROOT

MAX_LINES = 400


def loaded_after(code: str) -> set[str]:
    """The modules a fresh interpreter has loaded after running ``code``."""
    script = textwrap.dedent(code) + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return set(json.loads(result.stdout.splitlines()[-1]))


def ours(modules: set[str], *packages: str) -> set[str]:
    """The loaded modules that are ``packages`` or inside them."""
    return {m for m in modules for p in packages if m == p or m.startswith(p + ".")}


def test_the_settings_load_nothing_of_the_kling_layer() -> None:
    modules = loaded_after("import bot.config")
    assert ours(modules, "bot.kling", "bot.tasks", "bot.discord", "discord", "kling_sim") == set()


def test_the_kling_layer_loads_neither_discord_nor_the_task_core_nor_the_simulator() -> None:
    modules = loaded_after(
        """
        import pkgutil, importlib, bot.kling
        for info in pkgutil.walk_packages(bot.kling.__path__, "bot.kling."):
            importlib.import_module(info.name)
        """
    )
    assert "bot.kling.images.conversion" in modules  # the walk found the subpackages
    assert ours(modules, "discord", "bot.tasks", "bot.discord", "bot.cli", "cogs") == set()
    assert ours(modules, "kling_sim", "av") == set()


def test_the_command_line_loads_the_simulator_and_discord_only_when_asked() -> None:
    modules = loaded_after("import bot.cli")
    assert ours(modules, "kling_sim", "av", "discord", "bot.discord") == set()


def test_the_simulator_package_loads_no_video_encoder() -> None:
    modules = loaded_after("import kling_sim, kling_sim.simulator")
    assert "kling_sim.results" in modules
    assert ours(modules, "av", "discord", "bot.tasks", "bot.discord") == set()


@pytest.mark.parametrize("folder", ["bot/kling", "bot/cli", "kling_sim"])
def test_no_module_is_over_400_lines(folder: str) -> None:
    paths = sorted((REPO_ROOT / folder).rglob("*.py"))
    assert paths
    sizes = {str(p.relative_to(REPO_ROOT)): len(p.read_text().splitlines()) for p in paths}
    assert {path: n for path, n in sizes.items() if n > MAX_LINES} == {}
