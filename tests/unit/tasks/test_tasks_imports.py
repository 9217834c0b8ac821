"""``bot/tasks`` is the task lifecycle only: it must import nothing from the Discord side, and
nothing of the simulator (``kling_sim``), which the bot loads only when simulating."""

from __future__ import annotations

import subprocess
import sys

from testing.paths import REPO_ROOT

# In a fresh interpreter, so that no other test's imports hide (or fake) a dependency.
PROBE = """
import importlib, pkgutil, sys
import bot.tasks, bot.app
names = sorted(m.name for m in pkgutil.iter_modules(bot.tasks.__path__, "bot.tasks."))
for name in names:
    importlib.import_module(name)
def discordish(module):
    return any(module == top or module.startswith(top + ".")
               for top in ("discord", "bot.discord", "cogs", "kling_sim"))
print(" ".join(names))
print(" ".join(sorted(m for m in sys.modules if discordish(m))))
"""


def test_bot_tasks_imports_nothing_from_discord() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    imported, discord_modules = [*result.stdout.splitlines(), "", ""][:2]
    modules = (
        "admission callbacks cancel claims core creates delivery_book events failures files "
        "intake limits metrics models poller queue_view requests results resume retention "
        "schedule settle statuses store webhook"
    ).split()
    expected = {f"bot.tasks.{name}" for name in modules}
    assert expected <= set(imported.split())  # every module was really imported
    assert discord_modules == ""
