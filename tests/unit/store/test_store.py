"""SqliteTaskStore: round trips, conditional transitions, queries, migrations and durability."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from bot.config import ConfigError
from bot.kling.models import TaskKind
from bot.tasks.models import (
    ACTIVE_STATES,
    AWAITING_DELIVERY,
    FINAL_STATES,
    Origin,
    TaskRecord,
    TaskState,
    UsageRow,
)
from bot.tasks.store import (
    MAX_PARAM_CHARS,
    DuplicateTaskError,
    SqliteTaskStore,
    Stores,
    TaskStore,
    open_store,
    schema,
    sqlite,
    sqlite_queries,
)

S = TaskState


class Clock:
    """A settable clock, so timestamps are exact."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    # A missing parent directory: open() must create it.
    return tmp_path / "nested" / "dir" / "tasks.db"


@pytest.fixture
async def store(db_path: Path, clock: Clock):
    s = SqliteTaskStore(db_path, clock=clock)
    await s.open()
    yield s
    await s.close()


_counter = 0


async def make(
    store: SqliteTaskStore,
    *,
    kind: TaskKind = TaskKind.IMAGE,
    guild_id: int | None = 1,
    user_id: int = 10,
    channel_id: int = 100,
    params: dict[str, Any] | None = None,
    callback_token: str | None = None,
    external_task_id: str | None = None,
) -> TaskRecord:
    global _counter
    _counter += 1
    return await store.create(
        kind=kind,
        provider="simulator",
        simulated=True,
        external_task_id=external_task_id or f"ext-{_counter}",
        params=params if params is not None else {"prompt": "a cat", "n": 2},
        input_labels=["subject1", "scene"],
        slots=2,
        origin=Origin(channel_id=channel_id, user_id=user_id, guild_id=guild_id, message_id=5),
        callback_token=callback_token,
    )


# --- models ------------------------------------------------------------------------------------


def test_state_sets_partition_all_states() -> None:
    assert ACTIVE_STATES | AWAITING_DELIVERY | FINAL_STATES == set(TaskState)
    assert not (ACTIVE_STATES & AWAITING_DELIVERY or AWAITING_DELIVERY & FINAL_STATES)
    assert not ACTIVE_STATES & FINAL_STATES


async def test_record_helpers(store: SqliteTaskStore, clock: Clock) -> None:
    task = await make(store)
    assert task.short_ref == f"#{task.id}"
    assert task.is_active and not task.awaiting_delivery and not task.is_final
    assert task.duration() is None
    assert task.elapsed(clock.now + 7) == 7
    assert task.origin == Origin(channel_id=100, user_id=10, guild_id=1, message_id=5)

    clock.now += 30
    assert await store.transition(task.id, {S.QUEUED}, S.SUCCEED)
    done = await store.get(task.id)
    assert done is not None
    assert done.awaiting_delivery and not done.is_active
    assert done.duration() == 30
    assert done.elapsed(clock.now + 1000) == 30  # stops at the end at Kling


# --- round trip --------------------------------------------------------------------------------


async def test_store_satisfies_protocol(store: SqliteTaskStore) -> None:
    assert isinstance(store, TaskStore)
    assert await store.ping()


def _public_methods(cls: type) -> set[str]:
    """The public coroutine methods of ``cls`` and the classes it builds on."""
    return {
        name
        for klass in cls.__mro__
        for name, member in vars(klass).items()
        if inspect.iscoroutinefunction(member) and not name.startswith("_")
    }


def _protocol_methods() -> list[str]:
    return sorted(_public_methods(TaskStore))


@pytest.mark.parametrize("name", _protocol_methods())
def test_the_protocol_matches_the_sqlite_store(name: str) -> None:
    """A second backend is written against the Protocol: it must say what callers use."""
    declared = inspect.signature(getattr(TaskStore, name))
    implemented = inspect.signature(getattr(SqliteTaskStore, name))
    assert str(declared) == str(implemented)


def test_every_public_store_method_is_in_the_protocol() -> None:
    sqlite_only = {
        "schema_version",  # migrations are the backend's own business
        "fetch",  # the SQL runners the SQLite stores share
        "write",
        "write_returning",
        # Server settings: GuildSettingsStore's now; kept here until every caller uses
        # Stores.guild_settings.
        "get_guild_config",
        "set_guild_config",
    }
    assert _public_methods(SqliteTaskStore) - sqlite_only == set(_protocol_methods())


async def test_create_get_find_round_trip_every_field(store: SqliteTaskStore, clock: Clock) -> None:
    params = {"prompt": "a cat, ünïcode ✓", "negative_prompt": None, "n": 2, "aspect_ratio": "1:1"}
    created = await make(store, params=params, callback_token="tok-1", external_task_id="ext-rt")
    assert created.state is S.QUEUED
    assert created.created_at == created.updated_at == clock.now
    assert created.input_files == [] and created.result_files == []
    assert await store.get(created.id) == created  # create's record equals the stored row

    # Set every other field to a non-default value and read it back.
    values: dict[str, Any] = {
        "provider": "gateway",
        "simulated": False,
        "kling_task_id": "807000000000000001",
        "params": {"prompt": "changed", "nested": {"list": [1, 2.5, "x"]}},
        "input_files": ["inputs/1/subject1.png", "inputs/1/scene.jpg"],
        "input_labels": ["subject1", "scene"],
        "slots": 3,
        "guild_id": 2**62,  # Discord snowflakes are large
        "channel_id": 2**60 + 1,
        "user_id": 2**60 + 2,
        "message_id": 2**60 + 3,
        "created_at": 1.5,
        "submitted_at": 2.5,
        "processing_at": 3.5,
        "finished_at": 4.5,
        "delivered_at": 5.5,
        "kling_status": "succeed",
        "result_urls": ["https://cdn.example/0.png"],
        "result_files": ["results/1/0.png"],
        "credits": "0.2",
        "failure_reason": "no reason",
        "delivery_attempts": 2,
        "delivery_error": "403",
        "cancel_requested": True,
        "callback_token": "tok-2",
        "next_check_at": 6.5,
        "check_count": 4,
        "submit_attempts": 3,
        "not_before": 7.5,
        "updated_at": 8.5,
        "posted_message_id": 2**60 + 4,
        "failure_code": "kling_refused",
        "failure_params": {"message": "ünïcode ✓", "tries": 2, "seconds": 0.5},
        "delivery_error_code": "channel_gone",
        "delivery_error_params": {"channel_id": 2**60 + 1},
    }
    claim = {"claim_owner": "owner-1", "claim_purpose": "admit", "claim_until": 9.5}
    assert set(values) | set(claim) | {"id", "kind", "state", "external_task_id"} == {
        f.name for f in dataclasses.fields(TaskRecord)
    }, "the test must cover every field"
    await store.update(created.id, **values)
    assert await store.claim(created.id, "admit", "owner-1", until=9.5, states={S.QUEUED}, now=9.0)
    got = await store.get(created.id)
    assert got is not None
    for name, value in {**values, **claim}.items():
        assert getattr(got, name) == value, name
    assert type(got.simulated) is bool and type(got.cancel_requested) is bool
    assert got.kind is TaskKind.IMAGE and got.state is S.QUEUED

    # Fresh instances: mutating one does not touch the next read.
    got.params["prompt"] = "mutated"
    got.result_files.append("x")
    again = await store.get(created.id)
    assert again is not None and again is not got
    assert again.params["prompt"] == "changed" and again.result_files == ["results/1/0.png"]

    # find: local id with or without '#', Kling id, external id.
    for ref in (str(created.id), f"#{created.id}", f" #{created.id} ", "807000000000000001"):
        found = await store.find(ref)
        assert found is not None and found.id == created.id, ref
    found = await store.find("ext-rt")
    assert found is not None and found.id == created.id
    assert (await store.by_external_id("ext-rt")).id == created.id  # type: ignore[union-attr]
    assert (await store.by_kling_id("807000000000000001")).id == created.id  # type: ignore[union-attr]
    for missing in ("#999", "999", "nope", "", "#", "#abc"):
        assert await store.find(missing) is None, missing
    assert await store.get(999) is None


async def test_find_digits_falls_back_to_kling_id(store: SqliteTaskStore) -> None:
    task = await make(store)
    await store.update(task.id, kling_task_id="4242")
    found = await store.find("4242")  # no local #4242, so it is Kling's id
    assert found is not None and found.id == task.id
    assert await store.find("#4242") is None  # '#' always means a local id


async def test_set_inputs(store: SqliteTaskStore, clock: Clock) -> None:
    task = await make(store)
    clock.now += 1
    await store.set_inputs(task.id, ["inputs/1/subject1.png", "inputs/1/scene.png"])
    got = await store.get(task.id)
    assert got is not None
    assert got.input_files == ["inputs/1/subject1.png", "inputs/1/scene.png"]
    assert got.updated_at == clock.now


async def test_ids_are_not_reused(store: SqliteTaskStore) -> None:
    first = await make(store)
    second = await make(store)
    assert second.id == first.id + 1
    await store.db.execute("DELETE FROM tasks WHERE id = ?", (second.id,))
    third = await make(store)
    assert third.id == second.id + 1  # "#12" never points at a different task later


# --- transitions -------------------------------------------------------------------------------


async def test_transition_wins_once_and_stamps(store: SqliteTaskStore, clock: Clock) -> None:
    task = await make(store)

    clock.now = 1_010.0
    assert await store.transition(task.id, {S.QUEUED}, S.SUBMITTED, kling_task_id="k1")
    assert not await store.transition(task.id, {S.QUEUED}, S.SUBMITTED)  # already moved
    clock.now = 1_020.0
    assert await store.transition(task.id, [S.SUBMITTED], S.PROCESSING, kling_status="processing")
    clock.now = 1_030.0
    assert await store.transition(
        task.id, {S.SUBMITTED, S.PROCESSING}, S.SUCCEED, result_files=["results/1/0.png"]
    )
    clock.now = 1_040.0
    assert await store.transition(task.id, AWAITING_DELIVERY, S.DELIVERED)

    got = await store.get(task.id)
    assert got is not None
    assert got.state is S.DELIVERED
    assert got.kling_task_id == "k1" and got.kling_status == "processing"
    assert got.result_files == ["results/1/0.png"]
    assert (got.created_at, got.submitted_at, got.processing_at) == (1_000.0, 1_010.0, 1_020.0)
    assert (got.finished_at, got.delivered_at, got.updated_at) == (1_030.0, 1_040.0, 1_040.0)


async def test_transition_from_wrong_state_changes_nothing(
    store: SqliteTaskStore, clock: Clock
) -> None:
    task = await make(store)
    clock.now += 5
    assert not await store.transition(
        task.id, {S.PROCESSING}, S.FAILED, failure_reason="should not be written"
    )
    assert await store.get(task.id) == task  # fields and timestamps untouched
    assert not await store.transition(task.id, [], S.CANCELLED)
    assert not await store.transition(9_999, {S.QUEUED}, S.CANCELLED)  # no such task


@pytest.mark.parametrize(
    ("to", "stamp"),
    [
        (S.SUBMITTED, "submitted_at"),
        (S.PROCESSING, "processing_at"),
        (S.SUCCEED, "finished_at"),
        (S.FAILED, "finished_at"),
        (S.CANCELLED, "finished_at"),
        (S.DELIVERED, "delivered_at"),
        (S.UNDELIVERABLE, "delivered_at"),
    ],
)
async def test_transition_stamps_its_timestamp(
    store: SqliteTaskStore, clock: Clock, to: TaskState, stamp: str
) -> None:
    task = await make(store)
    clock.now += 42
    assert await store.transition(task.id, {S.QUEUED}, to)
    got = await store.get(task.id)
    assert got is not None and got.state is to
    stamps = ("submitted_at", "processing_at", "finished_at", "delivered_at")
    assert {name: getattr(got, name) for name in stamps} == {
        name: (clock.now if name == stamp else None) for name in stamps
    }


async def test_transition_keeps_an_explicit_timestamp(store: SqliteTaskStore) -> None:
    task = await make(store)
    assert await store.transition(task.id, {S.QUEUED}, S.FAILED, finished_at=12.0)
    got = await store.get(task.id)
    assert got is not None and got.finished_at == 12.0


async def test_concurrent_transitions_one_store(store: SqliteTaskStore) -> None:
    task = await make(store)
    results = await asyncio.gather(
        *(
            store.transition(task.id, {S.QUEUED}, S.SUBMITTED, kling_task_id=f"k{i}")
            for i in range(20)
        )
    )
    assert sorted(results) == [False] * 19 + [True]
    winner = results.index(True)
    got = await store.get(task.id)
    assert got is not None and got.kling_task_id == f"k{winner}"  # only the winner's fields


# --- update ------------------------------------------------------------------------------------


async def test_update_refuses_state_and_unknown_columns(store: SqliteTaskStore) -> None:
    task = await make(store)
    with pytest.raises(ValueError, match="transition"):
        await store.update(task.id, state=S.CANCELLED)
    with pytest.raises(ValueError, match="transition"):
        await store.transition(task.id, {S.QUEUED}, S.SUBMITTED, state=S.CANCELLED)
    with pytest.raises(ValueError, match="unknown"):
        await store.update(task.id, **{"credits = '1', state = 'cancelled' --": "x"})
    with pytest.raises(ValueError, match="unknown"):
        await store.update(task.id, id=7)
    with pytest.raises(ValueError, match="unknown"):
        await store.transition(task.id, {S.QUEUED}, S.SUBMITTED, bogus=1)
    got = await store.get(task.id)
    assert got == task  # nothing was written by any refused call


async def test_update_sets_updated_at(store: SqliteTaskStore, clock: Clock) -> None:
    task = await make(store)
    clock.now += 3
    await store.update(task.id, check_count=1, next_check_at=5.0)
    got = await store.get(task.id)
    assert got is not None
    assert (got.check_count, got.next_check_at, got.updated_at) == (1, 5.0, clock.now)
    await store.update(task.id)  # nothing to set: a no-op, not an SQL error
    await store.update(9_999, check_count=1)  # a missing row is not an error


async def test_update_if_state_changes_only_a_task_still_in_those_states(
    store: SqliteTaskStore, clock: Clock
) -> None:
    running, ended = await make(store), await make(store)
    await store.transition(running.id, {S.QUEUED}, S.PROCESSING)
    await store.transition(ended.id, {S.QUEUED}, S.SUCCEED)
    clock.now += 5
    assert await store.update_if_state(running.id, ACTIVE_STATES, cancel_requested=True)
    assert not await store.update_if_state(ended.id, ACTIVE_STATES, cancel_requested=True)
    assert not await store.update_if_state(9_999, ACTIVE_STATES, cancel_requested=True)
    assert not await store.update_if_state(running.id, [], cancel_requested=True)
    got_running, got_ended = await store.get(running.id), await store.get(ended.id)
    assert got_running is not None and got_running.cancel_requested
    assert got_running.updated_at == clock.now
    assert got_ended is not None and not got_ended.cancel_requested
    assert got_ended.state is S.SUCCEED and got_ended.updated_at < clock.now
    with pytest.raises(ValueError, match="transition"):
        await store.update_if_state(running.id, ACTIVE_STATES, state="failed")


# --- uniqueness and lookups --------------------------------------------------------------------


async def test_external_id_is_unique(store: SqliteTaskStore) -> None:
    await make(store, external_task_id="dup")
    with pytest.raises(DuplicateTaskError):  # store-neutral: no sqlite3 error leaks out
        await make(store, external_task_id="dup")
    assert await store.count_tasks() == 1
    await make(store, external_task_id="other")  # the store still works afterwards
    assert await store.count_tasks() == 2


async def test_by_callback_token(store: SqliteTaskStore) -> None:
    a = await make(store, callback_token="secret-a")
    await make(store, callback_token="secret-b")
    await make(store, callback_token=None)
    await make(store, callback_token=None)  # many tasks may have no token
    found = await store.by_callback_token("secret-a")
    assert found is not None and found.id == a.id
    assert await store.by_callback_token("secret-c") is None
    with pytest.raises(DuplicateTaskError):
        await make(store, callback_token="secret-a")


# --- queries -----------------------------------------------------------------------------------


async def test_in_states_oldest_first_and_by_kind(store: SqliteTaskStore, clock: Clock) -> None:
    made = []
    for i in range(6):
        clock.now = 2_000.0 - i  # created in reverse time order
        made.append(await make(store, kind=TaskKind.VIDEO if i % 2 else TaskKind.IMAGE))
    await store.transition(made[0].id, {S.QUEUED}, S.SUBMITTED)
    await store.transition(made[1].id, {S.QUEUED}, S.CANCELLED)

    active = await store.in_states(ACTIVE_STATES)
    assert [t.id for t in active] == [made[i].id for i in (5, 4, 3, 2, 0)]
    videos = await store.in_states({S.QUEUED}, kind=TaskKind.VIDEO)
    assert [t.id for t in videos] == [made[5].id, made[3].id]
    assert await store.in_states([]) == []


async def test_list_and_count_with_filters(store: SqliteTaskStore, clock: Clock) -> None:
    ids = {}
    for i, (guild, user) in enumerate([(1, 10), (1, 11), (2, 10), (1, 10), (None, 10)]):
        clock.now = 100.0 + i
        ids[i] = (await make(store, guild_id=guild, user_id=user)).id
    await store.transition(ids[3], {S.QUEUED}, S.CANCELLED)

    listed = await store.list_tasks()
    assert [t.id for t in listed] == [ids[i] for i in (4, 3, 2, 1, 0)]  # newest first
    page = await store.list_tasks(limit=2, offset=1)
    assert [t.id for t in page] == [ids[3], ids[2]]
    assert await store.list_tasks(limit=0) == []
    guild1_user10 = await store.list_tasks(guild_id=1, user_id=10)
    assert [t.id for t in guild1_user10] == [ids[3], ids[0]]
    queued = await store.list_tasks(states={S.QUEUED}, user_id=10)
    assert [t.id for t in queued] == [ids[4], ids[2], ids[0]]
    assert [t.id for t in await store.list_tasks(since=103.0)] == [ids[4], ids[3]]

    assert await store.count_tasks() == 5
    assert await store.count_tasks(guild_id=1) == 3
    assert await store.count_tasks(user_id=10) == 4
    assert await store.count_tasks(guild_id=1, user_id=10, states={S.QUEUED}) == 1
    assert await store.count_tasks(states={S.CANCELLED}) == 1
    assert await store.count_tasks(states=[]) == 0
    assert await store.count_tasks(since=102.0) == 3
    assert await store.count_tasks(since=102.0, user_id=10) == 3


async def test_usage(store: SqliteTaskStore, clock: Clock) -> None:
    async def task(
        user: int,
        end: TaskState,
        *,
        guild: int = 1,
        credits: str | None = None,
        kling_status: str | None = None,
        results: list[str] | None = None,
        at: float = 500.0,
    ) -> None:
        clock.now = at
        t = await make(store, guild_id=guild, user_id=user)
        await store.update(
            t.id, credits=credits, kling_status=kling_status, result_files=results or []
        )
        if end is not S.QUEUED:
            assert await store.transition(t.id, {S.QUEUED}, end)

    # user 10: two successes (one delivered with results, one where Kling said succeed but
    # delivery failed), one failure, one cancelled; credits 1.5 + 2 (+ junk ignored).
    await task(10, S.DELIVERED, credits="1.5", results=["results/1/0.png"])
    await task(10, S.UNDELIVERABLE, credits="2", kling_status="succeed")
    await task(10, S.DELIVERED, credits="n/a", kling_status="failed")
    await task(10, S.CANCELLED)
    # user 11: more credits with fewer tasks -> first. A task in flight counts only as a task.
    await task(11, S.SUCCEED, credits="5", kling_status="succeed", results=["results/5/0.png"])
    await task(11, S.PROCESSING)
    # user 12: same credits as nobody, no credits at all; failed at Kling.
    await task(12, S.FAILED, credits=None, kling_status="failed")
    # Filtered out: another guild, and before `since`.
    await task(10, S.DELIVERED, guild=2, credits="100", results=["x"])
    await task(10, S.DELIVERED, credits="100", results=["x"], at=10.0)

    rows = await store.usage(guild_id=1, since=100.0)
    assert rows == [
        UsageRow(user_id=11, tasks=2, succeeded=1, failed=0, credits=5.0),
        UsageRow(user_id=10, tasks=4, succeeded=2, failed=1, credits=3.5),
        UsageRow(user_id=12, tasks=1, succeeded=0, failed=1, credits=0.0),
    ]
    assert await store.usage(guild_id=1, since=100.0, user_id=12) == [rows[2]]
    everywhere = await store.usage(guild_id=None, since=0.0)
    assert everywhere[0] == UsageRow(user_id=10, tasks=6, succeeded=4, failed=1, credits=203.5)
    assert await store.usage(guild_id=3, since=0.0) == []


async def test_usage_orders_by_tasks_when_credits_tie(store: SqliteTaskStore) -> None:
    await make(store, user_id=20)
    await make(store, user_id=21)
    await make(store, user_id=21)
    rows = await store.usage(guild_id=1, since=0.0)
    assert [(r.user_id, r.tasks) for r in rows] == [(21, 2), (20, 1)]


async def test_counts_by_state(store: SqliteTaskStore) -> None:
    assert await store.counts_by_state() == dict.fromkeys(TaskState, 0)
    a, b, _ = await make(store), await make(store), await make(store)
    await store.transition(a.id, {S.QUEUED}, S.PROCESSING)
    await store.transition(b.id, {S.QUEUED}, S.PROCESSING)
    counts = await store.counts_by_state()
    assert counts[S.QUEUED] == 1 and counts[S.PROCESSING] == 2
    assert sum(counts.values()) == 3 and set(counts) == set(TaskState)


async def test_files_due_for_removal_counts_the_last_timestamp(
    store: SqliteTaskStore, clock: Clock
) -> None:
    old_cancel, old_delivered, late_delivery, recent, running, waiting = [
        await make(store) for _ in range(6)
    ]
    clock.now = 100.0
    await store.transition(old_cancel.id, {S.QUEUED}, S.CANCELLED)
    await store.transition(old_delivered.id, {S.QUEUED}, S.SUCCEED)
    await store.transition(old_delivered.id, {S.SUCCEED}, S.DELIVERED)
    await store.transition(late_delivery.id, {S.QUEUED}, S.FAILED)
    await store.transition(waiting.id, {S.QUEUED}, S.SUCCEED)  # awaiting delivery: keep
    await store.transition(running.id, {S.QUEUED}, S.PROCESSING)  # active: keep
    clock.now = 300.0
    await store.transition(late_delivery.id, {S.FAILED}, S.UNDELIVERABLE)
    await store.transition(recent.id, {S.QUEUED}, S.CANCELLED)

    assert await store.files_due_for_removal(200.0) == [old_cancel.id, old_delivered.id]
    assert await store.files_due_for_removal(301.0) == [
        old_cancel.id,
        old_delivered.id,
        late_delivery.id,
        recent.id,
    ]
    assert await store.files_due_for_removal(100.0) == []  # strictly before


async def test_files_due_for_removal_selects_each_old_task_once(
    store: SqliteTaskStore, clock: Clock
) -> None:
    old, recent, running = [await make(store) for _ in range(3)]
    clock.now = 100.0
    await store.transition(old.id, {S.QUEUED}, S.CANCELLED)
    await store.transition(running.id, {S.QUEUED}, S.PROCESSING)
    clock.now = 300.0
    await store.transition(recent.id, {S.QUEUED}, S.CANCELLED)
    assert await store.files_due_for_removal(200.0) == [old.id]
    await store.mark_files_removed([old.id])
    assert await store.files_due_for_removal(200.0) == []  # the next hourly run reads nothing
    assert await store.files_due_for_removal(301.0) == [recent.id]
    got = await store.get(old.id)
    assert got is not None and got.updated_at == 100.0  # housekeeping, not a task change
    plan = await store.db.execute_fetchall(
        "EXPLAIN QUERY PLAN SELECT id FROM tasks WHERE files_removed_at IS NULL "
        "AND +state IN ('cancelled') AND COALESCE(delivered_at, finished_at, updated_at) < 1 "
        "ORDER BY created_at, id"
    )
    assert any("ix_tasks_files_kept" in row[-1] for row in plan)  # not every final task


async def test_mark_files_removed_takes_more_ids_than_one_statement_binds(
    store: SqliteTaskStore, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_queries, "ID_CHUNK", 2)
    tasks = [await make(store) for _ in range(5)]
    for task in tasks:
        await store.transition(task.id, {S.QUEUED}, S.CANCELLED)
    clock.now += 10
    assert len(await store.files_due_for_removal(clock.now)) == 5
    await store.mark_files_removed([t.id for t in tasks])
    assert await store.files_due_for_removal(clock.now) == []


# --- guild config ------------------------------------------------------------------------------


async def test_guild_config_default_and_upsert(store: SqliteTaskStore) -> None:
    assert await store.get_guild_config(1) == {}
    await store.set_guild_config(1, {"channel": 5, "limits": {"daily": 3}})
    await store.set_guild_config(2, {"other": True})
    assert await store.get_guild_config(1) == {"channel": 5, "limits": {"daily": 3}}
    await store.set_guild_config(1, {"channel": 6})  # replaces, does not merge
    assert await store.get_guild_config(1) == {"channel": 6}
    assert await store.get_guild_config(2) == {"other": True}
    got = await store.get_guild_config(1)
    got["channel"] = 7
    assert await store.get_guild_config(1) == {"channel": 6}  # a fresh dict each time


# --- SQLite settings, migrations, durability ---------------------------------------------------


async def test_wal_mode_and_pragmas(store: SqliteTaskStore, db_path: Path) -> None:
    assert db_path.parent.is_dir()
    pragmas = {}
    names = ("journal_mode", "synchronous", "foreign_keys", "busy_timeout", "wal_autocheckpoint")
    for name in names:
        rows = list(await store.db.execute_fetchall(f"PRAGMA {name}"))
        pragmas[name] = rows[0][0]
    assert pragmas == {
        "journal_mode": "wal",
        "synchronous": 1,  # NORMAL
        "foreign_keys": 1,
        "busy_timeout": sqlite.BUSY_TIMEOUT_MS,
        "wal_autocheckpoint": sqlite.WAL_AUTOCHECKPOINT_PAGES,
    }
    with sqlite3.connect(db_path) as raw:  # WAL is persistent: other connections see it too
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_expected_indexes(store: SqliteTaskStore) -> None:
    rows = await store.db.execute_fetchall(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'tasks' "
        "AND sql IS NOT NULL"
    )
    indexes = {name: sql for name, sql in rows}
    assert "UNIQUE" in indexes["ux_tasks_external_task_id"]
    assert "UNIQUE" in indexes["ux_tasks_callback_token"]
    assert {"ix_tasks_state", "ix_tasks_kling_task_id", "ix_tasks_guild_user_created"} <= set(
        indexes
    )
    plan = await store.db.execute_fetchall(
        "EXPLAIN QUERY PLAN SELECT * FROM tasks WHERE state IN ('queued', 'submitted') "
        "ORDER BY created_at, id"
    )
    assert any("ix_tasks_state" in row[-1] for row in plan)


async def test_migrations_applied_once(db_path: Path) -> None:
    latest = len(schema.MIGRATIONS)
    async with SqliteTaskStore(db_path) as first:
        assert await first.schema_version() == latest
        await make(first)
    # Re-opening must not re-run migration 1 (CREATE TABLE would fail) or lose rows.
    async with SqliteTaskStore(db_path) as second:
        assert await second.schema_version() == latest
        assert await second.count_tasks() == 1


async def test_migration_upgrades_existing_database(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with SqliteTaskStore(db_path) as v1:
        task = await make(v1)
    v2 = "ALTER TABLE tasks ADD COLUMN note TEXT DEFAULT 'v2'; CREATE TABLE extra (x INTEGER);"
    latest = len(schema.MIGRATIONS) + 1
    monkeypatch.setattr(schema, "MIGRATIONS", [*schema.MIGRATIONS, v2])
    async with SqliteTaskStore(db_path) as upgraded:
        assert await upgraded.schema_version() == latest
        rows = list(await upgraded.db.execute_fetchall("SELECT id, note FROM tasks"))
        assert rows == [(task.id, "v2")]  # existing data kept, new column added
        assert await upgraded.get(task.id) == task
    async with SqliteTaskStore(db_path) as again:  # v2 applied once only
        assert await again.schema_version() == latest


async def test_a_version_1_database_gains_the_files_removed_mark(
    db_path: Path, clock: Clock, old_database: Any, row: Any
) -> None:
    # A task cancelled by a bot at schema version 1 (before the mark existed).
    old_database(db_path, 1, [row(1, "cancelled", finished_at=clock.now)])
    clock.now += 10
    async with SqliteTaskStore(db_path, clock=clock) as upgraded:
        assert await upgraded.schema_version() == len(schema.MIGRATIONS)
        assert await upgraded.files_due_for_removal(clock.now) == [1]  # once, after all
        await upgraded.mark_files_removed([1])
        assert await upgraded.files_due_for_removal(clock.now) == []


async def test_failed_migration_rolls_back(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with SqliteTaskStore(db_path) as v1:
        await make(v1)
    broken = "CREATE TABLE half (x INTEGER); INSERT INTO no_such_table VALUES (1);"
    released = len(schema.MIGRATIONS)
    monkeypatch.setattr(schema, "MIGRATIONS", [*schema.MIGRATIONS, broken])
    with pytest.raises(sqlite3.OperationalError):
        await SqliteTaskStore(db_path).open()
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == released
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert "half" not in tables  # the whole migration was rolled back


async def test_refuses_database_from_newer_bot(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with SqliteTaskStore(db_path):
        pass
    with sqlite3.connect(db_path) as raw:
        raw.execute("PRAGMA user_version = 99")
    with pytest.raises(RuntimeError, match="newer"):
        await SqliteTaskStore(db_path).open()


async def test_data_survives_close_and_reopen(db_path: Path, clock: Clock) -> None:
    store = SqliteTaskStore(db_path, clock=clock)
    await store.open()
    task = await make(store)
    assert await store.transition(task.id, {S.QUEUED}, S.SUBMITTED, kling_task_id="k")
    await store.set_guild_config(1, {"a": 1})
    expected = await store.get(task.id)
    # Committed on return: a separate connection sees it before close (SIGKILL-safe).
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("SELECT state, kling_task_id FROM tasks").fetchall() == [
            ("submitted", "k")
        ]
    await store.close()
    await store.close()  # idempotent
    assert not await store.ping()
    with pytest.raises(RuntimeError, match="not open"):
        await store.get(task.id)

    async with SqliteTaskStore(db_path) as reopened:
        assert await reopened.get(task.id) == expected
        assert await reopened.get_guild_config(1) == {"a": 1}


async def test_no_long_strings_in_params(store: SqliteTaskStore) -> None:
    image = "iVBORw0KGgo" + "A" * MAX_PARAM_CHARS
    with pytest.raises(ValueError, match="input files"):
        await make(store, params={"prompt": "x", "subject_image": image})
    with pytest.raises(ValueError, match="input files"):
        await make(store, params={"subject_images": ["short", image]})  # nested too
    with pytest.raises(ValueError, match="input files"):
        await make(store, params={"image": b"\x89PNG"})
    assert await store.count_tasks() == 0
    task = await make(store, params={"prompt": "p" * MAX_PARAM_CHARS})  # the limit itself is ok
    with pytest.raises(ValueError, match="input files"):
        await store.update(task.id, params={"image": image})
    got = await store.get(task.id)
    assert got is not None and got.params == {"prompt": "p" * MAX_PARAM_CHARS}


async def test_open_store_from_a_url_picks_sqlite_by_the_scheme(tmp_path: Path) -> None:
    path = tmp_path / "from-url" / "bot.db"
    stores = open_store(f"sqlite:///{path}")
    assert isinstance(stores, Stores) and isinstance(stores.tasks, SqliteTaskStore)
    assert stores.tasks.path == path
    async with stores:
        assert await stores.ping()
        await stores.guild_settings.set_guild_config(1, {"a": 1})
        assert await stores.tasks.get_guild_config(1) == {"a": 1}  # one database under both
    assert path.exists() and not await stores.ping()
    async with open_store("sqlite:///:memory:") as memory:
        assert await memory.tasks.count_tasks() == 0


@pytest.mark.parametrize("url", ["mysql://db/kling", "sqlite:///", "./data/kling-bot.db", ""])
def test_open_store_refuses_other_urls_naming_the_setting(url: str) -> None:
    with pytest.raises(ConfigError, match="DATABASE_URL must be sqlite:///PATH"):
        open_store(url)


def test_an_unknown_scheme_is_told_both_stores() -> None:
    with pytest.raises(
        ConfigError, match="postgresql://USER:PASSWORD@HOST:PORT/DBNAME, not 'mysql'"
    ):
        open_store("mysql://bot:s3cret@db/kling")


async def test_task_rows_reads_a_running_stores_rows_without_changing_the_database(
    store: SqliteTaskStore, db_path: Path
) -> None:
    """What the crash suite and the bench watch: every row, read-only, while the store runs."""
    from bot.tasks.store import id_mark_path, task_rows

    assert task_rows(f"sqlite:///{db_path.with_name('absent.db')}") == []
    first, second = await make(store), await make(store)
    await store.transition(second.id, [TaskState.QUEUED], TaskState.CANCELLED)
    mark_before = id_mark_path(db_path).read_text()
    rows = task_rows(f"sqlite:///{db_path}")
    assert [(row["id"], row["state"]) for row in rows] == [
        (first.id, "queued"),
        (second.id, "cancelled"),
    ]
    assert id_mark_path(db_path).read_text() == mark_before  # reading reserved no ids
    assert (await make(store)).id == second.id + 1  # and the store goes on as before
