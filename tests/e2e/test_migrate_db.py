"""``kling-bot migrate-db`` as an operator runs it: a SQLite database into PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bot.kling.models import TaskKind
from bot.tasks.models import Origin
from bot.tasks.store import open_store, task_rows
from testing.paths import REPO_ROOT


def kling_bot(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KLING_", "DATABASE_"))}
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        cwd=cwd,
        env={**env, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_migrate_db_copies_everything_once_and_never_prints_the_password(
    tmp_path: Path, postgres_url: str
) -> None:
    source = f"sqlite:///{tmp_path / 'bot.db'}"
    async with open_store(source) as stores:
        for n in range(3):
            await stores.tasks.create(
                kind=TaskKind.IMAGE,
                provider="simulator",
                simulated=True,
                external_task_id=f"ext-{n}",
                params={"prompt": "a cat"},
                input_labels=["subject1"],
                slots=1,
                origin=Origin(channel_id=7, user_id=1, guild_id=3),
                callback_token=None,
            )
        await stores.guild_settings.set_guild_config(3, {"language": "ja"})
    # A password in the URL (trust authentication ignores it): it must not be printed.
    with_password = postgres_url.replace("://", "://postgres:s3cret-pw@", 1)
    if "@" in postgres_url.split("://", 1)[1]:
        with_password = postgres_url

    done = kling_bot("migrate-db", "--from", source, "--to", with_password, cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    assert "Copied 3 tasks and the settings of 1 server into" in done.stdout
    assert "new tasks start at #" in done.stdout
    assert "s3cret-pw" not in done.stdout + done.stderr
    assert [row["external_task_id"] for row in task_rows(postgres_url)] == [
        "ext-0",
        "ext-1",
        "ext-2",
    ]

    again = kling_bot("migrate-db", "--from", source, "--to", with_password, cwd=tmp_path)
    assert again.returncode == 3
    assert "already holds rows in tasks" in again.stderr and "s3cret-pw" not in again.stderr
    assert len(task_rows(postgres_url)) == 3  # nothing merged


def test_migrate_db_needs_both_databases(tmp_path: Path) -> None:
    done = kling_bot("migrate-db", "--from", f"sqlite:///{tmp_path / 'x.db'}", cwd=tmp_path)
    assert done.returncode == 2 and "--to" in done.stderr
