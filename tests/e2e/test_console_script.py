"""The installed ``kling-bot`` console script (the entry point pyproject.toml declares) starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

# Installed next to the interpreter that runs the tests (e.g. .venv/bin/kling-bot).
SCRIPT = Path(sys.executable).parent / ("kling-bot.exe" if os.name == "nt" else "kling-bot")


def run_script(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert SCRIPT.is_file(), f"{SCRIPT} is missing: install the project (pip install -e .)"
    # A clean environment: no KLING_*/DISCORD_* variables leak in, and cwd has no .env.
    env = {"PATH": os.environ.get("PATH", os.defpath), "HOME": str(cwd), "LANG": "C.UTF-8"}
    return subprocess.run(
        [str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def test_help_exits_0(tmp_path: Path) -> None:
    result = run_script("--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: kling-bot")
    assert "run" in result.stdout


def test_run_without_discord_token_is_one_line_and_exit_3(tmp_path: Path) -> None:
    result = run_script("run", cwd=tmp_path)
    assert result.returncode == 3
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("kling-bot: DISCORD_TOKEN is not set")
