"""One heartbeat per process keeps all its claims alive (``bot.tasks.claims``), on SQLite.

What holds: a process that stops beating loses its claims a lease after its last beat, however
long before it took them; one that beats keeps a claim through work longer than the lease (a
slow download) and nobody else can take it meanwhile; a clean stop gives its claims back at
once; holding many claims costs the beat's statements, not one per claim; a heartbeat the store
refuses is retried, logged once the claims have lapsed, and a release the store refused is
done by the next beat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.tasks.claims import Claims
from bot.tasks.models import ClaimPurpose, EventType, Origin, TaskRecord, TaskState
from bot.tasks.store import SqliteTaskStore, Stores, TaskStore, open_store
from kling_sim.simulator import KlingSimulator
from testing.settings import settings_for
from testing.tracker_harness import WAIT, Harness

QUEUED = [TaskState.QUEUED]
RUNNING = [TaskState.SUBMITTED, TaskState.PROCESSING]


class Clock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[Stores]:
    async with open_store(f"sqlite:///{tmp_path / 'tasks.db'}") as opened:
        yield opened


async def new_task(store: TaskStore, n: int = 1) -> TaskRecord:
    return await store.create(
        kind="image",  # type: ignore[arg-type]
        provider="simulator",
        simulated=True,
        external_task_id=f"ext-{n}",
        params={"prompt": "p"},
        input_labels=["subject1"],
        slots=1,
        origin=Origin(channel_id=1, user_id=1, guild_id=1),
        callback_token=f"token-{n}",
    )


async def test_a_silent_process_loses_its_claims_a_lease_after_its_last_beat(
    stores: Stores,
) -> None:
    store, clock = stores.tasks, Clock()
    dying = Claims(store, process_id="dying", lease=30.0, clock=clock)
    other = Claims(store, process_id="other", lease=30.0, clock=clock)
    task = await new_task(store)
    await dying.beat()
    assert await dying.take(task.id, ClaimPurpose.ADMIT, dying.token(), states=QUEUED)
    for clock.now in (1_010.0, 1_020.0, 1_030.0, 1_040.0):
        assert await dying.beat()  # the claim is 40 s old: kept all the same
    # Its last beat was at 1040: at 1069 the claim still holds, at 1070 it is free.
    clock.now = 1_069.0
    assert await other.take(task.id, ClaimPurpose.ADMIT, other.token(), states=QUEUED) is None
    clock.now = 1_070.0
    assert await other.take(task.id, ClaimPurpose.ADMIT, other.token(), states=QUEUED)
    live = await store.processes(clock.now)
    assert [p.process_id for p in live] == []  # dying's beat held until 1070: not alive now


async def test_a_delivery_claim_follows_its_shorter_lease(stores: Stores) -> None:
    store, clock = stores.tasks, Clock()
    claims = Claims(store, process_id="p", lease=30.0, clock=clock)
    task = await new_task(store)
    assert await store.transition(task.id, QUEUED, TaskState.SUCCEED)
    token = claims.token()
    taken = await claims.take(task.id, ClaimPurpose.DELIVER, token, states=[TaskState.SUCCEED])
    assert taken is not None and taken.claim_until == 1_010.0
    assert claims.beat_interval == pytest.approx(10.0 / 3)
    clock.now = 1_003.0
    await claims.beat()
    record = await store.get(task.id)
    assert record is not None and record.claim_until == 1_013.0


async def test_holding_many_claims_costs_the_beats_statements_not_one_per_claim(
    stores: Stores,
) -> None:
    store = stores.tasks
    assert isinstance(store, SqliteTaskStore)
    claims = Claims(store, process_id="busy", lease=0.6)  # a beat every 0.2 s
    held = [await new_task(store, n) for n in range(20)]
    tokens = [claims.token() for _ in held]
    for task, token in zip(held, tokens, strict=True):
        assert await claims.take(task.id, ClaimPurpose.ADMIT, token, states=QUEUED)
    statements: list[str] = []
    await store.db.set_trace_callback(statements.append)
    beats_before = time.monotonic()
    await claims.start_heartbeat()
    try:
        async with contextlib.AsyncExitStack() as kept:  # twenty creates or downloads at once
            for task, token in zip(held, tokens, strict=True):
                await kept.enter_async_context(claims.kept(task.id, token))
            await asyncio.sleep(1.0)  # five leases of work under every claim
    finally:
        await claims.stop_heartbeat(give_back=False)
        await store.db.set_trace_callback(None)
    elapsed = time.monotonic() - beats_before
    renewals = [s for s in statements if "UPDATE tasks SET claim_until" in s]
    beats = elapsed / claims.beat_interval + 1
    assert 1 <= len(renewals) <= beats + 1, renewals
    now = time.time()
    for task in held:  # every claim outlived its 0.6 s lease
        record = await store.get(task.id)
        assert record is not None and record.claim_until is not None
        assert record.claim_until > now


async def test_a_refused_heartbeat_is_retried_and_lapsed_claims_are_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    store = SqliteTaskStore(tmp_path / "tasks.db", clock=clock)
    await store.open()
    claims = Claims(store, process_id="p", lease=0.6, clock=clock)
    task = await new_task(store)
    token = claims.token()
    assert await claims.take(task.id, ClaimPurpose.ADMIT, token, states=QUEUED)
    await claims.start_heartbeat()
    caplog.set_level(logging.WARNING, logger="bot.tasks.claims")
    try:
        async with claims.kept(task.id, token):
            await store.close()  # the store is down
            await asyncio.sleep(0.3)
            clock.now += 1.0  # more than a lease without a beat
            await asyncio.sleep(0.3)
            lapsed = [r.getMessage() for r in caplog.records if "no heartbeat" in r.message]
            assert len(lapsed) == 1 and f"tasks [{task.id}]" in lapsed[0], lapsed
            await claims.release(task.id, token)  # refused too: done by a later beat
            await store.open()  # back
            await asyncio.sleep(0.5)
        record = await store.get(task.id)
        assert record is not None and record.claim_owner is None  # released by a beat
        assert [p.process_id for p in await store.processes(clock.now)] == ["p"]
        assert any("heartbeat written again" in r.message for r in caplog.records)
    finally:
        await claims.stop_heartbeat()
        await store.close()


async def test_a_clean_stop_gives_back_the_claims_and_the_process_row(stores: Stores) -> None:
    store = stores.tasks
    claims = Claims(store, process_id="leaving", lease=30.0)
    task = await new_task(store)
    await claims.start_heartbeat()
    assert [p.process_id for p in await store.processes(time.time())] == ["leaving"]
    assert await claims.take(task.id, ClaimPurpose.ADMIT, claims.token(), states=QUEUED)
    await claims.stop_heartbeat()
    record = await store.get(task.id)
    assert record is not None and record.claim_owner is None
    assert await store.processes(time.time()) == []


# --- the task core ---------------------------------------------------------------------------


async def test_a_download_longer_than_the_lease_keeps_its_claim_and_completes_once(
    simulator: KlingSimulator,
) -> None:
    h = Harness(settings_for(simulator), claim_lease=0.6)
    await h.open(start=False)
    release, started = asyncio.Event(), asyncio.Event()
    real_download = h.core.settler.downloader.download_all

    async def slow_download(task_id: int, urls: Any) -> list[str]:
        started.set()
        await release.wait()  # a large video on a slow link
        return await real_download(task_id, urls)

    h.core.settler.downloader.download_all = slow_download  # type: ignore[method-assign]
    other = Claims(h.store, process_id="other", lease=0.6)
    try:
        await h.core.start()
        record = await h.submit()
        await asyncio.wait_for(started.wait(), WAIT)
        for _ in range(10):  # 2 s: more than three leases
            await asyncio.sleep(0.2)
            token = other.token()
            taken = await other.take(record.id, ClaimPurpose.COMPLETE, token, states=RUNNING)
            assert taken is None, "a beating process lost its claim mid-download"
        release.set()
        done = await h.wait_for_state(record.id, {TaskState.DELIVERED})
        assert h.outcomes(EventType.COMPLETED) == [done.id]
        assert simulator.calls["create_image"] == 1
    finally:
        release.set()
        await h.close()


async def test_closing_the_core_gives_back_a_delivery_claim_at_once(
    simulator: KlingSimulator,
) -> None:
    settings = settings_for(simulator)
    first = await Harness(settings, deliver=False).open()
    record = await first.submit()
    await first.wait_for_state(record.id, {TaskState.SUCCEED})
    assert await first.core.begin_delivery(record.id) == 1  # posting when the stop comes
    await first.close()
    second = await Harness(settings, deliver=False).open()
    try:
        held = await second.store.get(record.id)
        assert held is not None and held.claim_owner is None
        # No wait for a lease: the next process starts the delivery at once.
        attempt = await asyncio.wait_for(second.core.begin_delivery(record.id), 0.5)
        assert attempt == 2
    finally:
        await second.close()


async def test_on_postgres_a_silent_process_download_is_taken_over_a_lease_after_its_beat(
    simulator: KlingSimulator, postgres_url: str
) -> None:
    """Two processes on one PostgreSQL database: the first beats through a download longer
    than its lease, then stops beating (frozen, or cut off from the database) with the download
    hung; the second takes the task over once the first's last beat has run out, downloads
    again and completes it once."""
    settings = settings_for(simulator, database_url=postgres_url)
    first = Harness(settings, claim_lease=0.6)
    await first.open(start=False)
    started = asyncio.Event()

    async def hang(task_id: int, urls: Any) -> list[str]:
        started.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    first.core.settler.downloader.download_all = hang  # type: ignore[method-assign]
    second: Harness | None = None
    try:
        await first.core.start()
        record = await first.submit()
        await asyncio.wait_for(started.wait(), WAIT)
        await asyncio.sleep(1.5)  # more than two leases: the heartbeat keeps the claim
        held = await first.store.get(record.id)
        assert held is not None and held.claim_owner is not None
        assert held.claim_owner.startswith(f"{first.core.claims.process_id}/")
        assert held.claim_until is not None and held.claim_until > time.time()

        await first.core.claims.stop_heartbeat(give_back=False)
        silent_at = time.time()
        lapsing = await first.store.get(record.id)
        assert lapsing is not None and lapsing.claim_until is not None
        assert lapsing.claim_until <= silent_at + 0.6  # a lease after the last beat, no later

        second = await Harness(settings, claim_lease=0.6).open()
        done = await second.wait_for_state(record.id, {TaskState.DELIVERED})
        assert done.finished_at is not None and done.finished_at >= lapsing.claim_until
        assert second.outcomes(EventType.COMPLETED) == [done.id]
        assert first.outcomes(EventType.COMPLETED) == []
        assert simulator.calls["create_image"] == 1
    finally:
        await first.kill()
        await first.store.close()
        if second is not None:
            await second.close()
