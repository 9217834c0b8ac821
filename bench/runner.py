"""One benchmark scenario end to end: a fake Discord and the Kling simulator in this process,
the bot (or the baseline client) as a subprocess, measured from the outside.

Clocks: the simulator stamps ``SimTask.done_at`` with ``time.time()``; the fake Discord stamps
``Recorded.time`` with ``time.monotonic()``, converted here to wall time with one offset taken at
the start of the scenario. Latency is "completed at the simulator" to "its message recorded by
the fake Discord" for each task.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import re
import signal
import socket
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench import report, strategies
from bot.tasks.store import task_rows
from kling_sim.simulator import Faults, KlingSimulator, SimulatorConfig
from testing.fake_discord import FakeDiscord

TOKEN = "bench-bot-token"
ROOT = Path(__file__).resolve().parent.parent
FOOTER_ID = re.compile(r"Task #(\d+)")
CHANNEL_POST = re.compile(r"/channels/\d+/messages")
# Discord allows a bot about 5 messages per 5 s in one channel, so results land in many channels
# (as they do for a bot in many servers): one channel per TASKS_PER_CHANNEL tasks.
TASKS_PER_CHANNEL = 5
CHANNELS_PER_GUILD = 100
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Timing:
    """Real-world durations (seconds), all divided by ``factor`` for the run."""

    factor: float = 10.0
    queued_seconds: float = 2.0  # "submitted" at Kling before processing starts
    # A task runs (queue + processing) a uniform random time in [low, 2 * low], where
    # low = max(min_task_seconds, tasks * seconds_per_task): long enough that every task is still
    # running when the last one has been submitted (the burst through Discord takes time), and
    # spread so that completions arrive over a window rather than all at once.
    min_task_seconds: float = 30.0
    seconds_per_task: float = 0.15
    client_interval: float = 5.0  # the baseline's poll interval
    # The bot's production defaults.
    poll_first_delay: float = 5.0
    poll_max_interval: float = 60.0
    poll_interval_with_callbacks: float = 120.0

    def scaled(self, seconds: float) -> float:
        return seconds / self.factor

    def task_range(self, tasks: int) -> tuple[float, float]:
        """(shortest, longest) task, real seconds."""
        low = max(self.min_task_seconds, tasks * self.seconds_per_task)
        return low, 2 * low


class SpreadConfig(SimulatorConfig):
    """Simulator settings whose ``processing_seconds`` is drawn anew for every task (the
    simulator reads it once per create), from a seeded generator."""

    def __init__(self, low: float, high: float, seed: int, **settings: Any) -> None:
        self._low, self._high, self._rng = low, high, random.Random(seed)
        super().__init__(seed=seed, **settings)

    @property  # type: ignore[override]
    def processing_seconds(self) -> float:
        return self._rng.uniform(self._low, self._high)

    @processing_seconds.setter
    def processing_seconds(self, value: float) -> None:
        pass  # the dataclass __init__ assigns the default; the range above decides


# --- measuring a process from outside -----------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads) from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of ``pid`` in kB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Watch:
    """Samples a process's memory and the simulator's pending tasks every ``every`` s."""

    def __init__(self, pid: int, sim: KlingSimulator, every: float = 0.1) -> None:
        self.pid, self.sim, self.every = pid, sim, every
        self.max_pending = 0
        self.rss_at_max_pending_kb = 0
        self.hwm_kb = 0
        self.cpu = 0.0
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        with contextlib.suppress(OSError):
            mem = memory_kb(self.pid)
            self.cpu = cpu_seconds(self.pid)
            self.hwm_kb = max(self.hwm_kb, mem.get("VmHWM", 0))
            now = time.time()
            pending = sum(1 for task in self.sim.tasks.values() if task.done_at > now)
            if pending >= self.max_pending:
                self.max_pending = pending
                self.rss_at_max_pending_kb = mem.get("VmRSS", 0)

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.every)

    def __enter__(self) -> Watch:
        self._task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
        self.sample()


# --- the world around the measured process -------------------------------------------------------


class World:
    """A fake Discord with one guild and channel, and a simulator, both on loopback."""

    def __init__(self, timing: Timing, tasks: int, *, drop_callbacks: bool, seed: int = 1) -> None:
        self.timing = timing
        self.fake = FakeDiscord(token=TOKEN)
        low, high = (timing.scaled(t - timing.queued_seconds) for t in timing.task_range(tasks))
        config = SpreadConfig(
            low,
            high,
            seed,
            submitted_seconds=timing.scaled(timing.queued_seconds),
            faults=Faults(callback_drop_rate=1.0 if drop_callbacks else 0.0),
            media_size=64,  # the smallest result image: the figures are about tracking
        )
        self.sim = KlingSimulator(config)
        self.list_first_pages = 0  # list calls asking for page 1: one per poll cycle that lists
        self.sim.app.middlewares.append(self._count_cycles)
        self.channel_ids: list[int] = []
        # Recorded.time is monotonic; this turns it into time.time().
        self.wall_offset = time.time() - time.monotonic()

    @web.middleware
    async def _count_cycles(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.method == "GET" and request.query.get("pageNum") == "1":
            self.list_first_pages += 1
        return await handler(request)

    def add_channels(self, count: int) -> None:
        """``count`` text channels, in guilds of at most ``CHANNELS_PER_GUILD``."""
        while len(self.channel_ids) < count:
            size = min(CHANNELS_PER_GUILD, count - len(self.channel_ids))
            guild = self.fake.add_guild(channels=[f"generation-{i}" for i in range(size)])
            self.channel_ids += list(guild.channels)

    async def __aenter__(self) -> World:
        await self.fake.start()
        await self.sim.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.sim.close()
        await self.fake.close()

    def posts(self) -> list[Any]:
        """The bot-token posts in the channel that succeeded, in the order recorded."""
        return [
            r
            for r in self.fake.requests
            if r.method == "POST" and r.status == 200 and CHANNEL_POST.fullmatch(r.path)
        ]

    def calls(self) -> dict[str, int]:
        calls = self.sim.calls
        kling = {k: v for k, v in calls.items() if k.split("_")[0] in ("create", "get", "list")}
        return {
            "creates": sum(v for k, v in kling.items() if k.startswith("create")),
            "gets": sum(v for k, v in kling.items() if k.startswith("get")),
            "lists": sum(v for k, v in kling.items() if k.startswith("list")),
            "kling": sum(kling.values()),
            "downloads": calls.get("result", 0),
            "callbacks_sent": calls.get("callback_sent", 0),
            "list_cycles": self.list_first_pages,
        }

    def latencies(self, posted_at: dict[str, float]) -> list[float]:
        """Seconds from each task's completion at the simulator to its post (external id ->
        wall time of the post)."""
        out = []
        for task in self.sim.tasks.values():
            at = posted_at.get(task.external_task_id or "")
            if at is not None:
                out.append(at - task.done_at)
        return out

    def wall(self, monotonic: float) -> float:
        return monotonic + self.wall_offset


def _summary(
    world: World, n: int, strategy: str, callbacks: str, watch: Watch, latencies: list[float]
) -> dict[str, Any]:
    calls = world.calls()
    p50, p99 = report.percentile(latencies, 50), report.percentile(latencies, 99)
    return {
        "tasks": n,
        "strategy": strategy,
        "callbacks": callbacks,
        "delivered": len(latencies),
        "kling_calls_per_task": calls["kling"] / n,
        "status_calls": calls["gets"] + calls["lists"],
        "calls": calls,
        "downloads": calls["downloads"],
        "lists_per_cycle": calls["lists"] / calls["list_cycles"] if calls["list_cycles"] else None,
        "latency_p50_ms": None if p50 is None else p50 * 1000,
        "latency_p99_ms": None if p99 is None else p99 * 1000,
        "latency_max_ms": max(latencies) * 1000 if latencies else None,
        "cpu_seconds": watch.cpu,
        "peak_rss_mb": watch.hwm_kb / 1024,
        "max_pending": watch.max_pending,
        "rss_at_max_pending_mb": watch.rss_at_max_pending_kb / 1024,
    }


async def _stop(process: asyncio.subprocess.Process, grace: float = 15.0) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(process.wait(), grace)
        except TimeoutError:
            process.kill()
            await process.wait()


def _log_problems(log: Path) -> list[str]:
    text = log.read_text(errors="replace")
    lines = text.splitlines()
    bad = [line for line in lines if "Traceback" in line or " ERROR " in line]
    return bad[:20]


async def _wait_until(check: Any, limit: float, what: str, step: float = 0.05) -> None:
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {limit:.0f} s waiting for {what}")
        await asyncio.sleep(step)


async def _healthy(port: int, limit: float) -> None:
    deadline = time.monotonic() + limit
    async with aiohttp.ClientSession() as session:
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                    if response.status == 200:
                        return
            if time.monotonic() > deadline:
                raise TimeoutError("the bot did not become healthy")
            await asyncio.sleep(0.1)


# --- scenarios -----------------------------------------------------------------------------------


async def run_ours(n: int, *, callbacks: bool, timing: Timing, workdir: Path) -> dict[str, Any]:
    """The bot as a subprocess, tasks through slash commands, results posted in the channel."""
    port = free_port()
    data = workdir / "data"
    async with World(timing, n, drop_callbacks=not callbacks) as world:
        world.add_channels(math.ceil(n / TASKS_PER_CHANNEL))
        env = {
            **os.environ,
            "DISCORD_TOKEN": TOKEN,
            "DISCORD_API_BASE": world.fake.api_base,
            "DISCORD_GATEWAY_URL": world.fake.gateway_url,
            "KLING_PROVIDER": "simulator",
            "KLING_BASE_URL": world.sim.base_url,
            "DATA_DIR": str(data),
            "DATABASE_URL": f"sqlite:///{data / 'bot.db'}",
            "WEBHOOK_HOST": "127.0.0.1",
            "WEBHOOK_PORT": str(port),
            # Always configured: "lost" means Kling's callbacks never arrive, as when the
            # listener is unreachable; the bot cannot tell the difference.
            "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
            "WEBHOOK_SECRET": "bench-webhook-secret-0123456789abcdef",
            "POLL_FIRST_DELAY": str(timing.scaled(timing.poll_first_delay)),
            "POLL_MAX_INTERVAL": str(timing.scaled(timing.poll_max_interval)),
            "POLL_INTERVAL_WITH_CALLBACKS": str(timing.scaled(timing.poll_interval_with_callbacks)),
            "LOG_LEVEL": "INFO",
            "PYTHONPATH": str(ROOT),
        }
        log = workdir / "bot.log"
        with log.open("wb") as out:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bot", "run", cwd=workdir, env=env, stdout=out, stderr=out
            )
        try:
            await world.fake.wait_until_ready(timeout=30)
            await _healthy(port, limit=30)
            with Watch(process.pid, world.sim) as watch:
                submit = await strategies.submit_via_discord(
                    world.fake,
                    lambda: world.calls()["creates"],
                    n,
                    world.channel_ids,
                    limit=60 + n * 0.1,
                )
                created = world.calls()["creates"]
                drain = timing.scaled(timing.task_range(n)[1]) + 60 + n * 0.05
                with contextlib.suppress(TimeoutError):  # what did arrive is still measured
                    await _wait_until(lambda: len(world.posts()) >= created, drain, "posts")
                await asyncio.sleep(2.0)  # would a duplicate post follow?
        finally:
            await _stop(process)
        ids = {
            row["id"]: row["external_task_id"] for row in task_rows(f"sqlite:///{data / 'bot.db'}")
        }
        posted_at: dict[str, float] = {}
        for rec in world.posts():
            footers = [
                (e.get("footer") or {}).get("text") or "" for e in rec.json.get("embeds", [])
            ]
            match = next((m for f in footers if (m := FOOTER_ID.search(f))), None)
            if match is not None:
                posted_at.setdefault(ids[int(match[1])], world.wall(rec.time))
        result = _summary(
            world, n, "ours", "working" if callbacks else "lost", watch, world.latencies(posted_at)
        )
        result["submit_seconds"] = submit
        result["not_created"] = n - created  # commands the bot did not turn into tasks
        result["posts"] = len(world.posts())
        result["log_problems"] = _log_problems(log)
        result["exit_code"] = process.returncode
        return result


async def run_baseline(n: int, *, timing: Timing, workdir: Path) -> dict[str, Any]:
    """Per-task polling every ``client_interval`` (scaled), as its own process."""
    async with World(timing, n, drop_callbacks=True) as world:
        world.add_channels(math.ceil(n / TASKS_PER_CHANNEL))
        interval = timing.scaled(timing.client_interval)
        limit = timing.scaled(timing.task_range(n)[1]) + 50 + n * 0.05
        args = [
            "--n", str(n), "--interval", str(interval), "--kling-url", world.sim.base_url,
            "--api-base", world.fake.api_base, "--token", TOKEN,
            "--channels", ",".join(map(str, world.channel_ids)), "--timeout", str(limit),
        ]  # fmt: skip
        log = workdir / "baseline.log"
        with log.open("wb") as err:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.strategies", *args,
                cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=err,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )  # fmt: skip
        try:
            with Watch(process.pid, world.sim) as watch:
                drain = timing.scaled(timing.task_range(n)[1]) + 60 + n * 0.05
                await _wait_until(lambda: len(world.posts()) >= n, drain, "baseline posts")
        finally:
            stdout = b""
            if process.returncode is None:
                with contextlib.suppress(TimeoutError):
                    stdout, _ = await asyncio.wait_for(process.communicate(), 30)
            await _stop(process)
        posted_at: dict[str, float] = {}
        for rec in world.posts():
            content = (rec.json or {}).get("content", "")
            if content.startswith("baseline "):
                posted_at.setdefault(content.split()[1], world.wall(rec.time))
        result = _summary(world, n, "per-task poll", "n/a", watch, world.latencies(posted_at))
        first = min((t.created_at for t in world.sim.tasks.values()), default=0.0)
        last = max((t.created_at for t in world.sim.tasks.values()), default=0.0)
        result["submit_seconds"] = last - first
        result["posts"] = len(world.posts())
        result["client_summary"] = stdout.decode(errors="replace").strip()
        result["log_problems"] = _log_problems(log)
        result["exit_code"] = process.returncode
        return result


async def run_scenario(kind: str, n: int, timing: Timing) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="kling-bench-") as tmp:
        workdir = Path(tmp)
        started, ticks = time.monotonic(), report.cpu_ticks()
        if kind == "baseline":
            result = await run_baseline(n, timing=timing, workdir=workdir)
        else:
            result = await run_ours(
                n, callbacks=kind == "ours-callbacks", timing=timing, workdir=workdir
            )
        result["wall_seconds"] = time.monotonic() - started
        result["cpu_steal_percent"] = report.steal_percent(ticks, report.cpu_ticks())
        return result


def timing_dict(timing: Timing) -> dict[str, Any]:
    return asdict(timing)
