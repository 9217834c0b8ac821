"""The real bot as a subprocess (``python -m bot run``, or ``worker``) against in-process fakes,
for the crash, fault and scale-out suites.

The test process owns Discord (``testing.fake_discord.FakeDiscord``) and Kling (a
``KlingSimulator``), so both outlive any number of bot restarts and see every request; the bot
only gets their addresses through the environment, exactly as an operator would configure a
proxy and ``kling-bot simulate``::

    env = bot_env(fake, sim.base_url, tmp_path, webhook_port=unused_port(), POLL_FIRST_DELAY="0.2")
    bot = BotProcess(env, workdir=tmp_path)
    await bot.start(fake)        # returns once the bot identified on the fake gateway
    bot.kill()                   # SIGKILL: no cleanup at all, like a power cut of the process
    await bot.start(fake)        # again, same database and files
    await bot.stop()             # SIGINT (clean shutdown), SIGKILL if it hangs
    problems = unexpected_log_lines(bot.log_text(), allowed=[...])

Each start appends the process's stdout and stderr to ``workdir/bot.log`` under a
``=== start N ===`` banner, so a failing test can show every incarnation's log.

``BotProcess(env, workdir=..., command="worker", log_name="worker.log")`` runs ``kling-bot
worker`` instead (``args=("--simulate",)`` adds arguments): it never reaches the gateway, so
``start`` returns once its webhook listener answers ``/healthz`` (by then the core has
resumed). Several processes may share a workdir with a log name each.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import aiohttp

from bot.config import SIMULATOR_ACCESS_KEY, SIMULATOR_SECRET_KEY
from bot.tasks.failures import describe_delivery_error, describe_failure
from bot.tasks.store import task_rows
from testing.fake_discord import FakeDiscord

TOKEN = "crash-suite-bot-token"
WEBHOOK_SECRET = "crash-suite-webhook-secret-0123456789abcdef"
START_TIMEOUT = 60.0  # a cold interpreter on a busy 2-core CI runner imports discord.py slowly

# Log lines that are always a bug, whatever the test: tracebacks, unhandled or never-retrieved
# task exceptions, ERROR/CRITICAL records.
PROBLEM = re.compile(
    r"Traceback \(most recent call last\)|Unhandled|Task exception was never retrieved"
    r"|\bERROR\b|\bCRITICAL\b|Unclosed|never awaited"
)

# Settings the tests choose; anything of the developer's shell with these prefixes is dropped.
_OWN_PREFIXES = ("DISCORD_", "KLING_", "WEBHOOK_", "POLL_", "DATA_DIR", "DATABASE_URL")
_OWN_NAMES = frozenset(
    {
        "PUBLIC_BASE_URL",
        "CALLBACK_CONFIRM",
        "TASK_MAX_AGE",
        "LOG_LEVEL",
        "RETENTION_DAYS",
        "LEASE_TIMEOUT",
    }
)


def bot_env(
    fake: FakeDiscord,
    kling_base_url: str,
    workdir: Path,
    *,
    webhook_port: int,
    callbacks: bool = True,
    **overrides: str,
) -> dict[str, str]:
    """The environment of a bot run against ``fake`` and the simulator at ``kling_base_url``,
    with its database and files under ``workdir``; ``overrides`` are more variables."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(_OWN_PREFIXES) and name not in _OWN_NAMES
    }
    env.update(
        DISCORD_TOKEN=fake.token or TOKEN,
        DISCORD_API_BASE=fake.api_base,
        DISCORD_GATEWAY_URL=fake.gateway_url,
        KLING_PROVIDER="simulator",
        KLING_BASE_URL=kling_base_url,
        KLING_ACCESS_KEY=SIMULATOR_ACCESS_KEY,
        KLING_SECRET_KEY=SIMULATOR_SECRET_KEY,
        KLING_REQUEST_TIMEOUT="5",
        KLING_CONNECT_TIMEOUT="2",
        DATA_DIR=str(workdir / "data"),
        DATABASE_URL=f"sqlite:///{workdir / 'bot.db'}",
        WEBHOOK_HOST="127.0.0.1",
        WEBHOOK_PORT=str(webhook_port),
        POLL_FIRST_DELAY="0.2",
        POLL_MAX_INTERVAL="1",
        POLL_INTERVAL_WITH_CALLBACKS="1",
        LOG_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
        PYTHONFAULTHANDLER="1",
    )
    if callbacks:
        env.update(
            PUBLIC_BASE_URL=f"http://127.0.0.1:{webhook_port}", WEBHOOK_SECRET=WEBHOOK_SECRET
        )
    env.update(overrides)
    return env


class BotProcess:
    """One bot at a time, started and killed as often as a test likes."""

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        workdir: Path,
        command: Literal["run", "worker"] = "run",
        args: Sequence[str] = (),
        log_name: str = "bot.log",
    ) -> None:
        self.env = dict(env)
        self.workdir = workdir
        self.command = command
        self.args = tuple(args)  # e.g. ("--simulate",)
        self.log_path = workdir / log_name
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.kills = 0
        self.start_seconds: list[float] = []

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def start(self, fake: FakeDiscord, timeout: float = START_TIMEOUT) -> None:  # noqa: ASYNC109
        """Start the bot and wait until it identified on the fake's gateway (a worker: until
        its listener answers): by then its ``setup_hook`` has run (tracker resumed, webhook
        listener bound)."""
        if self.alive:
            raise RuntimeError("the bot is already running")
        self.starts += 1
        identified = len(fake.identify_payloads)
        began = time.monotonic()
        with self.log_path.open("ab") as log:
            log.write(f"\n=== start {self.starts} ===\n".encode())
            log.flush()
            self.proc = subprocess.Popen(  # noqa: ASYNC220 - returns at once
                [sys.executable, "-m", "bot", self.command, *self.args],
                env=self.env,
                cwd=self.workdir,  # no stray .env from the developer's checkout
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = began + timeout
        while not await self._started(fake, identified):
            code = self.proc.poll()
            if code is not None:
                raise AssertionError(
                    f"the bot exited with {code} during start {self.starts}:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(
                    f"the bot did not reach the gateway within {timeout:g} s "
                    f"(start {self.starts}):\n{self.log_tail()}"
                )
            await asyncio.sleep(0.02)
        self.start_seconds.append(time.monotonic() - began)

    async def _started(self, fake: FakeDiscord, identified: int) -> bool:
        if self.command == "run":
            return len(fake.identify_payloads) > identified
        return await self.healthz() is not None

    async def healthz(self) -> tuple[int, dict[str, Any]] | None:
        """The listener's ``/healthz`` answer (status, body), or None if it does not answer."""
        url = f"http://127.0.0.1:{self.env['WEBHOOK_PORT']}/healthz"
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session,
                session.get(url) as response,
            ):
                return response.status, await response.json()
        return None

    def kill(self) -> bool:
        """SIGKILL the bot (no cleanup runs) and reap it; False if it was not running. Safe to
        call from a synchronous hook: the signal is sent at once."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return False
        os.kill(proc.pid, signal.SIGKILL)
        self.kills += 1
        return True

    async def wait_dead(self, timeout: float = 10.0) -> int:  # noqa: ASYNC109
        proc = self.proc
        assert proc is not None
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"bot process {proc.pid} still running after {timeout:g} s")
            await asyncio.sleep(0.01)
        return proc.returncode

    async def stop(
        self,
        timeout: float = 15.0,  # noqa: ASYNC109
        signal_number: signal.Signals = signal.SIGINT,
    ) -> int | None:
        """A clean stop (SIGINT, as Ctrl+C, or SIGTERM, as Docker); SIGKILL if it does not
        exit within ``timeout``."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return None if proc is None else proc.returncode
        proc.send_signal(signal_number)
        try:
            return await self.wait_dead(timeout)
        except AssertionError:
            self.kill()
            await self.wait_dead()
            raise

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


def unexpected_log_lines(text: str, allowed: Iterable[str | re.Pattern[str]] = ()) -> list[str]:
    """The first line of each log record in ``text`` that signals a bug (see ``PROBLEM``) and
    matches none of ``allowed``.

    A record is a timestamped line with the lines that follow it (its traceback), so an
    allowed pattern may require the exception too (see ``TOO_LATE`` in the crash suite)."""
    patterns = [re.compile(a) if isinstance(a, str) else a for a in allowed]
    records: list[list[str]] = []
    for line in text.splitlines():
        starts = re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", line) or line.startswith("===")
        if starts or not records:
            records.append([line])
        else:
            records[-1].append(line)
    problems = []
    for record in records:
        whole = "\n".join(record)
        if PROBLEM.search(whole) and not any(p.search(whole) for p in patterns):
            problems.append(next(line for line in record if PROBLEM.search(line)))
    return problems


def read_tasks(db_path: Path) -> list[dict[str, Any]]:
    """Every task row of the running bot's database, read-only (WAL: never blocks the bot)."""
    return task_rows(f"sqlite:///{db_path}")


def _as_record(row: Mapping[str, Any]) -> SimpleNamespace:
    """The failure columns of a row as a record has them (JSON parameters decoded)."""

    def params(column: str) -> dict[str, Any]:
        return json.loads(row.get(column) or "{}")

    return SimpleNamespace(
        failure_code=row.get("failure_code"),
        failure_params=params("failure_params"),
        failure_reason=row.get("failure_reason"),
        delivery_error_code=row.get("delivery_error_code"),
        delivery_error_params=params("delivery_error_params"),
        delivery_error=row.get("delivery_error"),
    )


def failure_words(row: Mapping[str, Any]) -> str:
    """Why the task of ``row`` failed, in the words a member reads ("" when it did not): the
    store keeps a code and its parameters (an older row, its sentence)."""
    return describe_failure(_as_record(row)) or ""


def delivery_error_words(row: Mapping[str, Any]) -> str:
    """Why the task of ``row`` could not be delivered, in words ("" when it was)."""
    return describe_delivery_error(_as_record(row)) or ""


FOOTER = re.compile(r"^Task #(\d+)(?: |$)")


def task_posts(fake: FakeDiscord) -> dict[int, list[Any]]:
    """The bot-token posts carrying a task's result footer, by task id, in every channel (DMs
    included). Interaction responses (the live status messages) are not posts: they carry the
    same footer but come from the interaction webhook."""
    posts: dict[int, list[Any]] = {}
    for channel_id in list(fake.channels):
        for message in fake.messages(channel_id):
            if message.interaction_id is not None or message.webhook_id is not None:
                continue
            ids = {
                int(m[1])
                for embed in message.embeds
                if (m := FOOTER.match((embed.get("footer") or {}).get("text") or ""))
            }
            for task_id in ids:
                posts.setdefault(task_id, []).append(message)
    return posts


FINAL_STATES = frozenset({"delivered", "undeliverable", "cancelled"})


async def unlimited_members(db_path: Path, guild_id: int) -> None:
    """No per-member limits in ``guild_id`` (the suites send many tasks per member)."""
    from bot.tasks.store import SqliteTaskStore

    async with SqliteTaskStore(db_path) as store:
        await store.set_guild_config(guild_id, {"max_active": 0, "daily_limit": 0})


async def wait_all_final(
    bot: BotProcess,
    db_path: Path,
    timeout: float,  # noqa: ASYNC109
    *,
    at_least: int = 0,
) -> list[dict[str, Any]]:
    """Poll the database until there are ``at_least`` tasks and every one is final; fails with
    the stuck states and the log's tail after ``timeout`` seconds, or if the bot died."""
    deadline = time.monotonic() + timeout
    while True:
        rows = read_tasks(db_path)
        if len(rows) >= at_least and all(row["state"] in FINAL_STATES for row in rows):
            return rows
        if time.monotonic() > deadline:
            stuck = {row["id"]: row["state"] for row in rows if row["state"] not in FINAL_STATES}
            raise AssertionError(
                f"{len(stuck)} of {len(rows)} tasks not final after {timeout:g} s: "
                f"{dict(list(stuck.items())[:20])}\n{bot.log_tail()}"
            )
        if not bot.alive:
            raise AssertionError(f"the bot exited on its own:\n{bot.log_tail()}")
        await asyncio.sleep(0.25)
