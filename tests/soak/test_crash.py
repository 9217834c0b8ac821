"""Crash suite: the real bot process, SIGKILLed again and again, still delivers every task once.

The bot runs as ``python -m bot run`` (``testing/bot_process.py``) against a fake Discord and a
Kling simulator that live in the test process, so both survive every restart and see every
request. Members send ``/kling image`` (mostly) and ``/kling video`` through the fake's gateway
while the bot is killed with SIGKILL and started again, over and over. Each kill is one of:

* ``random``: after a random uptime, wherever the bot happens to be;
* ``after_create``: the simulator kills the bot the moment it has created a task, before the
  bot hears the answer (the "did my create reach Kling?" window: a blind retry would charge
  twice);
* ``after_post``: the fake kills the bot the moment it stored a result post, before the bot
  could record the delivery (the "posted but not marked" window: delivery must find its own
  post in the channel history instead of posting again);
* ``after_failed_post``: the fake answers a result post with 500 and kills the bot, so the next
  attempt has begun delivery but nothing is in the channel (the history check must not mistake
  anything else, e.g. the member's live status message, for the post).

An armed kill that found no moment within a few seconds falls back to a plain kill.

Then the bot runs until every accepted task is final, and the suite checks, per task:

* accepted = a task row exists. An interaction the bot never acknowledged (it was dead) or
  acknowledged but never turned into a task (killed between the deferral and the insert) is
  not a task: Discord shows the member "interaction failed" / "thinking" and nothing was
  charged. Both are counted, reported, and must each lie right next to a kill;
* every accepted task is ``delivered``, with exactly one post in its channel carrying its
  results (every image or the video, byte for byte what was downloaded), or its failure;
* the simulator created each task exactly once (sim tasks by external id), each row points at
  its own Kling task, and nothing was refused as a duplicate (no double charge);
* the bot's log holds no traceback, unhandled or never-retrieved exception, or ERROR line.

Parameters (environment): ``CRASH_TASKS`` (default 200) tasks, at least ``CRASH_KILLS``
(default 24) kills, ``CRASH_SEED`` (default 20261122), ``CRASH_VIDEO_SHARE`` (default 0.15).
A larger run: ``CRASH_TASKS=1000 CRASH_KILLS=120 .venv/bin/python -m pytest -q
tests/soak/test_crash.py -s`` (the figures are printed with ``-s``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import random
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import unused_port

from bot.kling.models import TaskKind
from kling_sim.simulator import Faults, KlingSimulator, SimTask, SimulatorConfig
from testing.bot_process import (
    START_TIMEOUT,
    TOKEN,
    BotProcess,
    bot_env,
    delivery_error_words,
    failure_words,
    read_tasks,
    task_posts,
    unexpected_log_lines,
    unlimited_members,
    wait_all_final,
)
from testing.fake_discord import FakeDiscord, FakeInteraction, Recorded
from testing.images import make_png

pytestmark = pytest.mark.slow

TASKS = int(os.environ.get("CRASH_TASKS", "200"))
KILLS = int(os.environ.get("CRASH_KILLS", "24"))
SEED = int(os.environ.get("CRASH_SEED", "20261122"))
VIDEO_SHARE = float(os.environ.get("CRASH_VIDEO_SHARE", "0.15"))
SEND_INTERVAL = 0.25  # between two members' commands while the bot is up
ARMED_FOR = 4.0  # seconds an armed kill waits for its moment before it becomes a plain kill
DRAIN_TIMEOUT = 30.0 + TASKS * 0.3  # every accepted task final after the last restart
NEAR_KILL = 6.0  # an interaction lost to a kill was sent at most this long before it
# A command the bot could not acknowledge within Discord's 3 s (just restarted, on a busy
# runner) fails for the member ("interaction failed") and is logged: not a task, not a bug of
# the crash handling. Counted and reported; the log line is allowed only with that cause.
TOO_LATE = r"command /kling \w+ failed[\s\S]*error code: 10062"
KINDS = ("random", "after_create", "after_post", "after_failed_post")
POST_PATH = re.compile(r"/channels/\d+/messages")


class HookedSimulator(KlingSimulator):
    """The simulator, with a hook called the moment a task exists (before the answer)."""

    def __init__(self, config: SimulatorConfig) -> None:
        super().__init__(config)
        self.after_create: Callable[[SimTask], None] | None = None

    async def _create(self, request: Any, kind: TaskKind, flavour: str) -> dict[str, Any]:
        data = await super()._create(request, kind, flavour)
        hook = self.after_create
        if hook is not None:
            hook(self.tasks[data["task_id"]])
        return data


@dataclass
class Killer:
    """Kills the bot at random moments or at the next moment of an armed kind."""

    bot: BotProcess
    fake: FakeDiscord
    sim: HookedSimulator
    armed: str | None = None
    fired: collections.Counter[str] = field(default_factory=collections.Counter)
    kill_times: list[float] = field(default_factory=list)  # on the fake's clock
    _done: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.fake.request_hooks.append(self._on_discord)
        self.sim.after_create = self._on_create
        self._fault: Any = None

    def arm(self, kind: str) -> None:
        self._done.clear()
        self.armed = kind
        if kind == "after_failed_post":
            self._fault = self.fake.fail_next("POST", POST_PATH.pattern, 500)

    def fire(self, kind: str) -> None:
        self.armed = None
        if self._fault is not None:
            self._fault.remaining = 0  # never leave a fault behind for the next incarnation
            self._fault = None
        if self.bot.kill():
            self.fired[kind] += 1
            self.kill_times.append(self.fake.now())
        self._done.set()

    async def wait_fired(self, timeout: float) -> bool:  # noqa: ASYNC109
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._done.wait(), timeout)
            return True
        return False

    def _on_discord(self, rec: Recorded) -> None:
        if rec.method != "POST" or not POST_PATH.fullmatch(rec.path):
            return
        if self.armed == "after_post" and rec.status == 200:
            self.fire("after_post")
        elif self.armed == "after_failed_post" and rec.status == 500:
            self.fire("after_failed_post")

    def _on_create(self, task: SimTask) -> None:
        if self.armed == "after_create":
            self.fire("after_create")


@dataclass
class Run:
    fake: FakeDiscord
    sim: HookedSimulator
    bot: BotProcess
    workdir: Path
    guild_id: int
    channel_ids: list[int]


@contextlib.asynccontextmanager
async def crash_world(tmp_path: Path) -> AsyncIterator[Run]:
    fake = FakeDiscord(token=TOKEN)
    await fake.start()
    guild = fake.add_guild(channels=("gen-a", "gen-b", "gen-c"))
    sim = HookedSimulator(
        SimulatorConfig(
            submitted_seconds=0.2,
            processing_seconds=0.6,
            seed=SEED,
            media_size=96,
            faults=Faults(task_failure_rate=0.05),
        )
    )
    await sim.start()
    # No per-member limits: the suite is about crashes, not about refusing busy members.
    await unlimited_members(tmp_path / "bot.db", guild.id)
    env = bot_env(fake, sim.base_url, tmp_path, webhook_port=unused_port())
    bot = BotProcess(env, workdir=tmp_path)
    try:
        yield Run(fake, sim, bot, tmp_path, guild.id, list(guild.channels))
    finally:
        if bot.alive:
            bot.kill()
            await bot.wait_dead()
        await sim.close()
        await fake.close()


async def send_commands(run: Run, rng: random.Random, count: int) -> list[FakeInteraction]:
    """Members' /kling image and /kling video commands, one every SEND_INTERVAL while the bot
    is connected (a command sent just before a kill is part of the test)."""
    users = [run.fake.add_user(name=f"member{i}") for i in range(12)]
    sent: list[FakeInteraction] = []
    for i in range(count):
        await run.fake.wait_until_ready(timeout=START_TIMEOUT)
        user = rng.choice(users)
        channel_id = rng.choice(run.channel_ids)
        colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        picture = make_png(400, 400, colour)
        if rng.random() < VIDEO_SHARE:
            interaction = await run.fake.send_slash_command(
                "kling",
                subcommand="video",
                options={"prompt": f"crash video {i}", "duration": "5", "aspect_ratio": "1:1"},
                attachments={"image1": ("frame.png", picture)},
                channel_id=channel_id,
                user=user,
            )
        else:
            interaction = await run.fake.send_slash_command(
                "kling",
                subcommand="image",
                options={"prompt": f"crash image {i}", "count": rng.randint(1, 3)},
                attachments={"subject1": ("subject.png", picture)},
                channel_id=channel_id,
                user=user,
            )
        sent.append(interaction)
        await asyncio.sleep(SEND_INTERVAL)
    return sent


def near_kill(kill_times: list[float], at: float) -> bool:
    return any(at - 0.5 <= kill <= at + NEAR_KILL for kill in kill_times)


async def test_sigkill_anywhere_delivers_every_task_exactly_once(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    began = time.monotonic()
    async with crash_world(tmp_path) as run:
        killer = Killer(run.bot, run.fake, run.sim)
        await run.bot.start(run.fake)
        sender = asyncio.create_task(send_commands(run, random.Random(SEED + 1), TASKS))
        cycle = 0
        try:
            while not sender.done() or cycle < KILLS:
                # Every kind once first, then at random.
                kind = KINDS[cycle] if cycle < len(KINDS) else rng.choice(KINDS)
                if kind == "random":
                    await asyncio.sleep(rng.uniform(0.3, 3.5))
                    killer.fire("random")
                else:
                    await asyncio.sleep(rng.uniform(0.2, 1.5))
                    killer.arm(kind)
                    if not await killer.wait_fired(ARMED_FOR):
                        killer.fire(f"{kind} (fallback: random)")
                await run.bot.wait_dead()
                cycle += 1
                await run.bot.start(run.fake)
            interactions = await sender
        finally:
            sender.cancel()
        kill_phase = time.monotonic() - began
        await wait_all_final(run.bot, run.workdir / "bot.db", DRAIN_TIMEOUT)
        await asyncio.sleep(1.0)  # anything still to come (a stray second post) lands now
        await run.bot.stop()
        rows = read_tasks(run.workdir / "bot.db")
        elapsed = time.monotonic() - began

        # --- accepted vs. lost to a kill before acceptance ---------------------------------
        acknowledged = [i for i in interactions if i.acknowledged]
        too_late = [i for i in interactions if not i.acknowledged and i.callbacks]
        unanswered = [i for i in interactions if not i.acknowledged and not i.callbacks]
        assert all(i.callback_type == 5 for i in acknowledged)  # a public deferral each
        # Status messages (the deferred replies) name their task in the footer.
        task_of: dict[int, int] = {}
        for interaction in acknowledged:
            original = run.fake.original_message(interaction)
            for embed in original.embeds if original else []:
                found = re.match(r"Task #(\d+)", (embed.get("footer") or {}).get("text") or "")
                if found:
                    task_of[interaction.id] = int(found[1])
        deferred_only = [i for i in acknowledged if i.id not in task_of]
        by_id = {r["id"]: r for r in rows}
        assert len(set(task_of.values())) == len(task_of), "two commands showed the same task"
        for interaction_id, task_id in task_of.items():
            interaction = next(i for i in acknowledged if i.id == interaction_id)
            row = by_id[task_id]
            assert (row["channel_id"], row["user_id"]) == (
                interaction.channel_id,
                interaction.user_id,
            ), task_id
        # Each task comes from one deferred command; the rest were killed before the insert.
        assert len(rows) <= len(acknowledged), "a task without a deferred interaction"
        lost_before_task = len(acknowledged) - len(rows)
        for interaction in unanswered + deferred_only:
            assert near_kill(killer.kill_times, interaction.created_at), (
                f"interaction {interaction.id} was not turned into a task, and no kill explains "
                f"it (sent at {interaction.created_at:.2f}, kills at "
                f"{[round(k, 2) for k in killer.kill_times]})\n{run.bot.log_tail()}"
            )
        # (A deferral whose status message never showed its task while the task exists was
        # killed between the insert and the first edit: acceptance is the row, so it counts.)
        accepted = rows
        assert len(accepted) >= 0.8 * TASKS, (
            f"only {len(accepted)} of {TASKS} commands became tasks: kills are too frequent "
            "for the suite to mean much"
        )

        # --- delivered exactly once, with the results ---------------------------------------
        posts = task_posts(run.fake)
        states = collections.Counter(row["state"] for row in accepted)
        not_delivered = [
            (r["id"], r["state"], delivery_error_words(r))
            for r in accepted
            if r["state"] != "delivered"
        ]
        assert not not_delivered, f"tasks not delivered: {not_delivered}"
        lost = [r["id"] for r in accepted if not posts.get(r["id"])]
        duplicated = {tid: len(ms) for tid, ms in posts.items() if len(ms) > 1}
        unknown = sorted(set(posts) - {r["id"] for r in accepted})
        assert not lost, f"tasks marked delivered with no post in their channel: {lost}"
        assert not duplicated, f"tasks posted more than once: {duplicated}"
        assert not unknown, f"posts for tasks that do not exist: {unknown}"
        succeeded = failed = 0
        for row in accepted:
            (message,) = posts[row["id"]]
            assert message.channel_id == row["channel_id"], row["id"]
            assert f"<@{row['user_id']}>" in message.content
            if row["kling_status"] == "succeed":
                succeeded += 1
                files = json.loads(row["result_files"])
                expected = json.loads(row["params"]).get("n", 1) if row["kind"] == "image" else 1
                assert len(files) == expected == len(message.attachments), row["id"]
                for path, attachment in zip(files, message.attachments, strict=True):
                    data = (run.workdir / "data" / path).read_bytes()
                    assert attachment.data == data, (row["id"], path)
                    assert attachment.filename.startswith(f"kling-{row['id']}")
            else:
                failed += 1
                assert "failed" in message.content and not message.attachments, row["id"]
                assert failure_words(row), row["id"]

        # --- Kling: every task created once, no double charge --------------------------------
        by_external = collections.Counter(t.external_task_id for t in run.sim.tasks.values())
        twice = {ext: n for ext, n in by_external.items() if n > 1}
        assert not twice, f"tasks created more than once at Kling: {twice}"
        external_of_row = {r["external_task_id"]: r for r in accepted}
        strays = [ext for ext in by_external if ext not in external_of_row]
        assert not strays, f"Kling tasks no task row knows: {strays}"
        for row in accepted:
            refused_twice = "already exists" in failure_words(row)
            assert not refused_twice, f"task {row['id']} was sent to Kling twice"
            if row["kling_task_id"] is None:
                assert row["external_task_id"] not in by_external, row["id"]
                continue
            sim_task = run.sim.tasks[row["kling_task_id"]]
            assert sim_task.external_task_id == row["external_task_id"], row["id"]
        created_at_kling = sum(by_external.values())

        # --- the logs -----------------------------------------------------------------------
        problems = unexpected_log_lines(run.bot.log_text(), [TOO_LATE])
        assert not problems, "\n".join(problems[:40])

        history_reads = run.fake.requests_to("GET", r"/channels/\d+/messages")
        print(
            f"\ncrash suite: {len(interactions)} commands, {len(acknowledged)} deferred, "
            f"{len(unanswered)} never answered (bot dead), {len(too_late)} answered after the "
            f"3 s deadline, {lost_before_task} deferred but killed before the task existed; "
            f"{len(accepted)} tasks accepted "
            f"({dict(states)}; {succeeded} with results, {failed} failed at Kling), "
            f"{created_at_kling} created at Kling; {run.bot.kills} kills "
            f"({dict(killer.fired)}), {run.bot.starts} starts "
            f"(start {min(run.bot.start_seconds):.1f}-{max(run.bot.start_seconds):.1f} s); "
            f"{len(history_reads)} history reads; duplicates 0, lost 0; "
            f"kill phase {kill_phase:.0f} s, total {elapsed:.0f} s"
        )
        assert run.bot.kills >= KILLS
        assert killer.fired["after_post"] >= 1 and killer.fired["after_create"] >= 1
        assert killer.fired["after_failed_post"] >= 1
        # The "posted, not yet recorded" window was really exercised: a repeated delivery
        # looked at the channel history and found its own post instead of posting again.
        assert history_reads, "no delivery was ever repeated after a kill"
