"""The PostgreSQL scenarios: the bot as one process, or as one ``run`` and two ``worker``s.

The same world as ``runner.run_ours`` (a fake Discord and the simulator in this process, tasks
as ``/kling image`` slash commands), but the database is PostgreSQL, a throwaway cluster
started here (``testing.postgres``, or ``PG_TEST_URL``), and with several processes Kling's
callbacks reach them through a round-robin balancer (``testing.balancer``) in front of their
webhook listeners, as a load balancer at ``PUBLIC_BASE_URL`` would. Each process has its own
DATA_DIR, as on separate machines. CPU and memory are summed over the processes (peak memory
is the sum of each one's peak).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bench import strategies
from bench.runner import (
    FOOTER_ID,
    ROOT,
    TASKS_PER_CHANNEL,
    TOKEN,
    Timing,
    Watch,
    World,
    _healthy,
    _log_problems,
    _stop,
    _summary,
    _wait_until,
    free_port,
)
from bot.tasks.store import task_rows
from testing.balancer import RoundRobin
from testing.postgres import ThrowawayCluster, create_database

SCENARIOS = {"pg-1-process": 1, "pg-3-processes": 3}


@contextlib.asynccontextmanager
async def postgres_database() -> AsyncIterator[str]:
    given = os.environ.get("PG_TEST_URL")
    cluster = None if given else ThrowawayCluster.start()
    server = given or (cluster.url if cluster else "")
    try:
        yield await create_database(server)
    finally:
        if cluster is not None:
            cluster.stop()


class Processes:
    """Several measured processes, watched as one (CPU and peak memory summed)."""

    def __init__(self, watches: list[Watch]) -> None:
        self.watches = watches

    @property
    def cpu(self) -> float:
        return sum(w.cpu for w in self.watches)

    @property
    def hwm_kb(self) -> int:
        return sum(w.hwm_kb for w in self.watches)

    @property
    def max_pending(self) -> int:
        return max(w.max_pending for w in self.watches)

    @property
    def rss_at_max_pending_kb(self) -> int:
        return sum(w.rss_at_max_pending_kb for w in self.watches)


async def run_postgres(n: int, *, processes: int, timing: Timing, workdir: Path) -> dict[str, Any]:
    ports = [free_port() for _ in range(processes)]
    async with (
        postgres_database() as database_url,
        World(timing, n, drop_callbacks=False) as world,
        RoundRobin([f"http://127.0.0.1:{port}" for port in ports]) as balancer,
    ):
        world.add_channels(math.ceil(n / TASKS_PER_CHANNEL))
        base = {
            **os.environ,
            "DISCORD_TOKEN": TOKEN,
            "DISCORD_API_BASE": world.fake.api_base,
            "DISCORD_GATEWAY_URL": world.fake.gateway_url,
            "KLING_PROVIDER": "simulator",
            "KLING_BASE_URL": world.sim.base_url,
            "DATABASE_URL": database_url,
            "WEBHOOK_HOST": "127.0.0.1",
            "PUBLIC_BASE_URL": balancer.url,
            "WEBHOOK_SECRET": "bench-webhook-secret-0123456789abcdef",
            "POLL_FIRST_DELAY": str(timing.scaled(timing.poll_first_delay)),
            "POLL_MAX_INTERVAL": str(timing.scaled(timing.poll_max_interval)),
            "POLL_INTERVAL_WITH_CALLBACKS": str(timing.scaled(timing.poll_interval_with_callbacks)),
            "LOG_LEVEL": "INFO",
            "PYTHONPATH": str(ROOT),
        }
        started: list[asyncio.subprocess.Process] = []
        logs: list[Path] = []
        try:
            for index, port in enumerate(ports):
                command = "run" if index == 0 else "worker"
                env = {**base, "WEBHOOK_PORT": str(port), "DATA_DIR": str(workdir / f"data{index}")}
                log = workdir / f"{command}{index}.log"
                logs.append(log)
                with log.open("wb") as out:
                    process = await asyncio.create_subprocess_exec(
                        *(sys.executable, "-m", "bot", command),
                        cwd=workdir,
                        env=env,
                        stdout=out,
                        stderr=out,
                    )
                started.append(process)
            await world.fake.wait_until_ready(timeout=60)
            for port in ports:
                await _healthy(port, limit=60)
            watches = [Watch(p.pid, world.sim) for p in started]
            with contextlib.ExitStack() as stack:
                for watch in watches:
                    stack.enter_context(watch)
                submit = await strategies.submit_via_discord(
                    world.fake,
                    lambda: world.calls()["creates"],
                    n,
                    world.channel_ids,
                    limit=60 + n * 0.1,
                )
                created = world.calls()["creates"]
                drain = timing.scaled(timing.task_range(n)[1]) + 60 + n * 0.05
                with contextlib.suppress(TimeoutError):
                    await _wait_until(lambda: len(world.posts()) >= created, drain, "posts")
                await asyncio.sleep(2.0)  # would a duplicate post follow?
        finally:
            await asyncio.gather(*(_stop(p) for p in started))
        ids = {row["id"]: row["external_task_id"] for row in task_rows(database_url)}
        posted_at: dict[str, float] = {}
        for rec in world.posts():
            footers = [
                (e.get("footer") or {}).get("text") or "" for e in rec.json.get("embeds", [])
            ]
            match = next((m for f in footers if (m := FOOTER_ID.search(f))), None)
            if match is not None:
                posted_at.setdefault(ids[int(match[1])], world.wall(rec.time))
        label = f"ours, PostgreSQL, {processes} process{'es' if processes > 1 else ''}"
        result = _summary(
            world,
            n,
            label,
            "working",
            Processes(watches),
            world.latencies(posted_at),  # type: ignore[arg-type]
        )
        result["processes"] = processes
        result["submit_seconds"] = submit
        result["not_created"] = n - created
        result["posts"] = len(world.posts())
        result["duplicate_posts"] = len(world.posts()) - len(posted_at)
        result["callbacks_by_process"] = [balancer.served[b] for b in balancer.backends]
        result["log_problems"] = [line for log in logs for line in _log_problems(log)]
        result["exit_codes"] = [p.returncode for p in started]
        return result
