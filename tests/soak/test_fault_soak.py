"""Fault soak: the real bot process against a Kling and a Discord that keep failing.

The bot runs as ``python -m bot run`` (``testing/bot_process.py``) with callbacks on, against a
``KlingSimulator`` injecting, per request: 5xx (code 5000), 1302 (too many requests),
timeouts (the simulator hangs longer than ``KLING_REQUEST_TIMEOUT``), malformed 200 bodies and
lost create answers; per task: content-safety failures and expired results; per callback:
drops and duplicates; and an image/video concurrency limit the bot does not know about (1303).
The fake Discord meanwhile answers some requests with 429 (rate limits, with ``Retry-After``)
and 500, on result posts, status edits and interaction callbacks, and:

* channel ``locked`` has never allowed the bot to post: commands there are refused up front
  (ephemerally, naming the missing permissions) and never become tasks;
* channel ``revoked`` allowed posting when each command arrived, and lost the permission right
  after: its results go to the member by direct message (or, for a member who refuses DMs,
  nowhere) and the task ends ``undeliverable`` with that reason.

Checks: every task ends ``delivered`` (one post in its channel: the results, or the failure and
its reason) or ``undeliverable`` with a reason (only in ``revoked``, DM'd exactly once when the
member accepts DMs); nothing was created twice at Kling; every fault kind really happened; and
the bot's log has no traceback, unhandled or never-retrieved exception, and no ERROR line
other than the expected ones listed in ``EXPECTED_ERRORS``.

Parameters (environment): ``SOAK_TASKS`` (default 60), ``SOAK_SEED`` (default 7),
``SOAK_FAULT_SCALE`` (default 1.0, multiplies every rate). A longer soak:
``SOAK_TASKS=600 .venv/bin/python -m pytest -q tests/soak/test_fault_soak.py -s``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import os
import random
import re
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import unused_port

from bot.kling.models import TaskKind
from kling_sim.simulator import ApiError, Faults, KlingSimulator, SimulatorConfig
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

TASKS = int(os.environ.get("SOAK_TASKS", "60"))
SEED = int(os.environ.get("SOAK_SEED", "7"))
SCALE = float(os.environ.get("SOAK_FAULT_SCALE", "1.0"))
SEND_INTERVAL = 0.15
DRAIN_TIMEOUT = 60.0 + TASKS * 0.5
LOCKED_COMMANDS = 4

# ERROR lines that are the expected outcome of an injected fault, not a bug. Empty: none of the
# faults above should make the bot log an error (an undeliverable task is a WARNING).
EXPECTED_ERRORS: list[str] = []


class CountingSimulator(KlingSimulator):
    """The simulator, counting the faults it injected (so the test knows each kind happened)."""

    def __init__(self, config: SimulatorConfig) -> None:
        super().__init__(config)
        self.injected: collections.Counter[str] = collections.Counter()

    async def _request_faults(self) -> Any:
        try:
            response = await super()._request_faults()
        except ApiError as exc:
            self.injected[{5002: "timeout", 1302: "1302", 5000: "5xx"}.get(exc.code, "?")] += 1
            raise
        if response is not None:
            self.injected["malformed"] += 1
        return response

    def _check_slots(self, kind: TaskKind, slots: int, now: float) -> None:
        try:
            super()._check_slots(kind, slots, now)
        except ApiError:
            self.injected["1303"] += 1
            raise

    async def _create(self, request: Any, kind: TaskKind, flavour: str) -> Any:
        try:
            return await super()._create(request, kind, flavour)
        except ApiError as exc:
            if exc.message == "connection dropped":
                self.injected["lost create answer"] += 1
            raise

    def _roll(self, rate: float) -> bool:
        hit = super()._roll(rate)
        faults = self.config.faults
        if hit and rate in (faults.callback_drop_rate, faults.callback_duplicate_rate):
            self.injected["callback drop/duplicate"] += 1
        return hit


def fault_config() -> Faults:
    return Faults(
        server_error_rate=0.05 * SCALE,
        rate_limit_rate=0.05 * SCALE,
        timeout_rate=0.03 * SCALE,
        hang_seconds=2.0,  # longer than KLING_REQUEST_TIMEOUT=1: the bot gives up first
        malformed_rate=0.05 * SCALE,
        lost_create_response_rate=0.03 * SCALE,
        task_failure_rate=0.05 * SCALE,
        expired_result_rate=0.03 * SCALE,
        callback_drop_rate=0.3 * SCALE,
        callback_duplicate_rate=0.3 * SCALE,
    )


async def discord_chaos(fake: FakeDiscord, rng: random.Random, stop: asyncio.Event) -> None:
    """Keep 429s and 500s coming on the routes the bot uses for its work, 429 and 500 in turn.

    Discord hiccups, it does not refuse everything: a route gets its next fault only after a
    request on it went through, so no request meets a fault on every retry (which would make
    a result undeliverable by exhaustion, a different test)."""
    routes = [
        ("POST", r"/channels/\d+/messages", (429, 500)),  # result posts (and DMs)
        ("PATCH", r"/webhooks/\d+/[^/]+/messages/@original", (429, 500)),  # status edits
        ("POST", r"/interactions/\d+/[^/]+/callback", (429,)),  # deferrals: 429 only (3 s ack)
        ("POST", r"/users/@me/channels", (429,)),  # opening a DM
    ]
    turns = {path: itertools.cycle(statuses) for _, path, statuses in routes}
    patterns = {path: re.compile(path) for _, path, _ in routes}
    armed: dict[str, Any] = {}
    went_through = set(patterns)

    def on_request(rec: Recorded) -> None:
        for path, pattern in patterns.items():
            if rec.status < 400 and pattern.fullmatch(rec.path):
                went_through.add(path)

    fake.request_hooks.append(on_request)
    try:
        while not stop.is_set():
            method, path, _ = rng.choice(routes)
            rule = armed.get(path)
            if (rule is None or rule.remaining == 0) and path in went_through:
                went_through.discard(path)
                armed[path] = fake.fail_next(method, path, next(turns[path]), retry_after=0.2)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), rng.uniform(0.1, 0.5))
    finally:
        fake.request_hooks.remove(on_request)
        for rule in armed.values():
            rule.remaining = 0


async def send_commands(
    fake: FakeDiscord,
    rng: random.Random,
    channels: dict[str, int],
    users: list[Any],
) -> tuple[list[FakeInteraction], list[FakeInteraction]]:
    """TASKS commands in the open channels (and ``revoked`` while it still allowed posting),
    plus LOCKED_COMMANDS in ``locked``. Returns (work commands, locked-channel commands)."""
    work: list[FakeInteraction] = []
    locked: list[FakeInteraction] = []
    plan = ["work"] * TASKS + ["locked"] * LOCKED_COMMANDS
    rng.shuffle(plan)
    for i, what in enumerate(plan):
        await fake.wait_until_ready(timeout=START_TIMEOUT)
        name = "locked" if what == "locked" else rng.choice(["gen-a", "gen-b", "revoked"])
        channel_id = channels[name]
        if name == "revoked":
            fake.set_channel_permissions(channel_id, can_send=True)
        picture = make_png(400, 400, (rng.randrange(256), 90, 160))
        if rng.random() < 0.2:
            interaction = await fake.send_slash_command(
                "kling",
                subcommand="video",
                options={"prompt": f"soak video {i}", "duration": "5"},
                attachments={"image1": ("frame.png", picture)},
                channel_id=channel_id,
                user=rng.choice(users),
            )
        else:
            interaction = await fake.send_slash_command(
                "kling",
                subcommand="image",
                options={"prompt": f"soak image {i}", "count": rng.randint(1, 2)},
                attachments={"subject1": ("subject.png", picture)},
                channel_id=channel_id,
                user=rng.choice(users),
            )
        if name == "revoked":
            fake.set_channel_permissions(channel_id, can_send=False)  # gone right after
        (locked if name == "locked" else work).append(interaction)
        await asyncio.sleep(SEND_INTERVAL)
    return work, locked


async def test_every_task_ends_delivered_or_undeliverable_under_faults(tmp_path: Path) -> None:
    began = time.monotonic()
    fake = FakeDiscord(token=TOKEN)
    await fake.start()
    guild = fake.add_guild(channels=("gen-a", "gen-b", "revoked", "locked"))
    channels = {c.name: c.id for c in guild.channels.values()}
    fake.set_channel_permissions(channels["locked"], can_send=False)
    fake.set_channel_permissions(channels["revoked"], can_send=False)
    users = [fake.add_user(name=f"member{i}") for i in range(8)]
    no_dms = users[0]
    fake.block_dms(no_dms.id)
    sim = CountingSimulator(
        SimulatorConfig(
            submitted_seconds=0.2,
            processing_seconds=0.6,
            seed=SEED,
            media_size=96,
            image_concurrency=4,
            video_concurrency=2,
            faults=fault_config(),
        )
    )
    await sim.start()
    await unlimited_members(tmp_path / "bot.db", guild.id)
    env = bot_env(
        fake,
        sim.base_url,
        tmp_path,
        webhook_port=unused_port(),
        KLING_REQUEST_TIMEOUT="1",
        KLING_CONNECT_TIMEOUT="1",
    )
    bot = BotProcess(env, workdir=tmp_path)
    stop = asyncio.Event()
    chaos: asyncio.Task[None] | None = None
    try:
        await bot.start(fake)
        chaos = asyncio.create_task(discord_chaos(fake, random.Random(SEED + 1), stop))
        work, locked = await send_commands(fake, random.Random(SEED + 2), channels, users)
        await wait_all_final(bot, tmp_path / "bot.db", DRAIN_TIMEOUT, at_least=1)
        # The last commands may still be on their way in: wait until each was answered.
        for interaction in work + locked:
            await fake.wait_for_callback(interaction, timeout=30)
        await wait_all_final(bot, tmp_path / "bot.db", DRAIN_TIMEOUT)
        stop.set()
        await chaos
        await asyncio.sleep(0.5)
        await bot.stop()
    finally:
        stop.set()
        if chaos is not None:
            chaos.cancel()
            await asyncio.gather(chaos, return_exceptions=True)
        if bot.alive:
            bot.kill()
            await bot.wait_dead()
        await sim.close()
        await fake.close()
    elapsed = time.monotonic() - began
    rows = read_tasks(tmp_path / "bot.db")

    # --- locked channel: refused up front, nothing created -------------------------------
    for interaction in locked:
        assert interaction.acknowledged, interaction.id
        texts = [m.content for m in fake.followups(interaction)] + [
            (interaction.callback_data or {}).get("content") or ""
        ]
        assert any("missing permissions" in t for t in texts), texts
    locked_rows = [r for r in rows if r["channel_id"] == channels["locked"]]
    assert not locked_rows, "a command in a channel the bot cannot post in became a task"

    # --- every work command became a task --------------------------------------------------
    unanswered = [i.id for i in work if not i.acknowledged]
    assert not unanswered, f"commands never answered: {unanswered}\n{bot.log_tail()}"
    assert len(rows) == len(work), (len(rows), len(work))

    # --- every task: delivered once, or undeliverable with a reason ----------------------
    posts = task_posts(fake)
    dm_channels = {c.id: c.recipient_id for c in fake.channels.values() if c.type == 1}
    outcomes: collections.Counter[str] = collections.Counter()
    for row in rows:
        tid, state = row["id"], row["state"]
        mine = posts.get(tid, [])
        in_channel = [m for m in mine if m.channel_id == row["channel_id"]]
        in_dm = [m for m in mine if m.channel_id in dm_channels]
        assert len(mine) == len(in_channel) + len(in_dm), (tid, [m.channel_id for m in mine])
        if state == "delivered":
            assert row["channel_id"] != channels["revoked"], f"task {tid} posted in revoked"
            assert len(in_channel) == 1 and not in_dm, (tid, len(in_channel), len(in_dm))
            (message,) = in_channel
            if row["kling_status"] == "succeed" and row["result_files"] != "[]":
                outcomes["delivered with results"] += 1
                n = len(json.loads(row["result_files"]))
                assert len(message.attachments) == n, (tid, n, len(message.attachments))
            else:
                outcomes["delivered as a failure"] += 1
                assert failure_words(row), f"task {tid} failed without a reason"
                assert "failed" in message.content, (tid, message.content)
        elif state == "undeliverable":
            reason = delivery_error_words(row)
            assert row["channel_id"] == channels["revoked"], (tid, reason)
            assert "missing permissions" in reason, (tid, reason)
            assert not in_channel, tid
            if row["user_id"] == no_dms.id:
                outcomes["undeliverable, member refuses DMs"] += 1
                assert "does not accept direct messages" in reason, (tid, reason)
                assert not in_dm, tid
            else:
                outcomes["undeliverable, sent by DM"] += 1
                assert "sent to the member by direct message" in reason, (tid, reason)
                assert len(in_dm) == 1, (tid, len(in_dm))
                assert dm_channels[in_dm[0].channel_id] == row["user_id"]
        else:
            raise AssertionError(f"task {tid} ended {state}")
    strays = sorted(set(posts) - {r["id"] for r in rows})
    assert not strays, f"posts for unknown tasks: {strays}"

    # --- Kling: nothing created twice -------------------------------------------------------
    by_external = collections.Counter(t.external_task_id for t in sim.tasks.values())
    assert all(n == 1 for n in by_external.values()), by_external.most_common(3)
    assert not [r["id"] for r in rows if "already exists" in failure_words(r)]
    for row in rows:
        if row["kling_task_id"] is not None:
            assert sim.tasks[row["kling_task_id"]].external_task_id == row["external_task_id"]

    # --- the faults really happened ---------------------------------------------------------
    hits: collections.Counter[str] = collections.Counter()
    for rule in fake.faults:
        for rec in rule.hits:
            hits[f"discord {rule.status} {rec.method}"] += 1
    log = bot.log_text()
    callbacks = sim.calls["callback_sent"]
    assert sum(n for k, n in hits.items() if " 429 " in k) >= 3, hits
    assert sum(n for k, n in hits.items() if " 500 " in k) >= 3, hits
    assert outcomes["undeliverable, sent by DM"] >= 1, outcomes
    kinds = ("5xx", "1302", "1303", "timeout", "malformed", "callback drop/duplicate")
    missing = [kind for kind in kinds if not sim.injected[kind]]
    assert not missing, f"Kling fault kinds never injected: {missing} ({dict(sim.injected)})"

    # --- the log ----------------------------------------------------------------------------
    problems = unexpected_log_lines(log, EXPECTED_ERRORS)
    assert not problems, "\n".join(problems[:40])
    print(
        f"\nfault soak: {len(rows)} tasks ({dict(outcomes)}); {len(locked)} commands refused in "
        f"the locked channel; Discord faults hit {dict(hits)}; Kling faults injected "
        f"{dict(sim.injected)}; Kling calls {dict(sim.calls)}; {callbacks} callbacks sent; "
        f"{elapsed:.0f} s"
    )
