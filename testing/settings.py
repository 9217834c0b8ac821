"""``Settings`` for the bot pointed at a running simulator, in a fresh temporary directory."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from typing import Any

from bot.config import SIMULATOR_ACCESS_KEY, SIMULATOR_SECRET_KEY, Settings
from kling_sim.simulator import KlingSimulator


def settings_for(simulator: KlingSimulator, **overrides: Any) -> Settings:
    """Settings for the bot against ``simulator``; ``overrides`` win over every default here.

    A fresh temporary data directory and database (removed at exit) and fast polling.
    """
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
