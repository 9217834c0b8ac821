"""The store contract: what every implementation of the store Protocols must do.

Each test takes the ``stores`` fixture (tests/unit/store/conftest.py), parametrized over the
implementations (``testing.store_contract.FACTORIES``: SQLite, and PostgreSQL on a fresh
database of the suite's server; skipped without one). The admission cases are the in-memory
queue's (fair turns, slots, no overtaking, backoff, the 1303 cap), run against the
store. ``test_every_protocol_method_is_exercised`` keeps the suite complete.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from pathlib import Path
from typing import Any

import pytest

from bot.kling.models import TaskKind
from bot.tasks.models import ClaimPurpose, Origin, TaskRecord, TaskState, UsageRow
from bot.tasks.store import (
    DuplicateTaskError,
    GuildSettingsStore,
    Stores,
    TaskReader,
    TaskStore,
)
from testing.store_contract import Clock, Factory, Maker

S = TaskState
IMAGE, VIDEO = TaskKind.IMAGE, TaskKind.VIDEO
RUNNING = {S.SUBMITTED, S.PROCESSING}
A, B = "process-a", "process-b"  # two owners


async def drain(
    store: TaskStore,
    kind: TaskKind = IMAGE,
    *,
    limit: int | None = None,
    now: float = 1_000.0,
    cap: int | None = None,
) -> list[int]:
    """Admit until admit_next says no; the ids in the order they were admitted."""
    taken = []
    while True:
        record = await store.admit_next(
            kind, limit=limit, owner=A, now=now, until=now + 60, cap=cap
        )
        if record is None:
            return taken
        assert record.state is S.QUEUED and record.claim_purpose is ClaimPurpose.ADMIT
        taken.append(record.id)


async def submit(store: TaskStore, task_id: int, kling_id: str | None = None) -> None:
    """What admission does once Kling took the task: it runs there, holding its slots."""
    assert await store.transition(
        task_id, [S.QUEUED], S.SUBMITTED, kling_task_id=kling_id or f"k-{task_id}"
    )


def claim_of(record: TaskRecord | None) -> tuple[Any, ...]:
    assert record is not None
    return (record.claim_owner, record.claim_purpose, record.claim_until)


async def end_at_kling(store: TaskStore, task_id: int) -> None:
    """Kling said the task ended: its slots are free, whatever the row's state."""
    await store.update(task_id, kling_status="succeed")


# --- the Protocols ----------------------------------------------------------------------------


def test_the_stores_satisfy_the_protocols(stores: Stores) -> None:
    assert isinstance(stores.tasks, TaskStore)
    assert isinstance(stores.tasks, TaskReader)
    assert isinstance(stores.guild_settings, GuildSettingsStore)


def _protocol_methods() -> set[str]:
    names: set[str] = set()
    for protocol in (TaskReader, TaskStore, GuildSettingsStore):
        names |= {
            name
            for name, member in vars(protocol).items()
            if inspect.iscoroutinefunction(member) and not name.startswith("_")
        }
    return names


def test_every_protocol_method_is_exercised() -> None:
    source = Path(__file__).read_text(encoding="utf-8")
    called = set(re.findall(r"\.(\w+)\(", source))
    assert _protocol_methods() - called == set()


# --- lifecycle and rows ------------------------------------------------------------------------


async def test_open_ping_close(factory: Factory, tmp_path: Path, clock: Clock) -> None:
    stores = factory(tmp_path, clock)
    assert not await stores.tasks.ping()
    await stores.open()
    await stores.tasks.open()  # idempotent
    assert await stores.ping() and await stores.tasks.ping()
    await stores.close()
    await stores.tasks.close()  # idempotent
    assert not await stores.ping()


async def test_create_and_read_back(tasks: TaskStore, make: Maker, clock: Clock) -> None:
    created = await tasks.create(
        kind=VIDEO,
        provider="simulator",
        simulated=False,
        external_task_id="ext-x",
        params={"prompt": "waves", "mode": "pro"},
        input_labels=["image1"],
        slots=1,
        origin=Origin(channel_id=7, user_id=8, guild_id=9, message_id=10),
        callback_token="tok-x",
    )
    assert created.state is S.QUEUED and created.created_at == clock.now
    assert created.claim_owner is None and created.failure_params == {}
    assert await tasks.get(created.id) == created
    assert await tasks.by_external_id("ext-x") == created
    assert await tasks.by_callback_token("tok-x") == created
    assert await tasks.find(f"#{created.id}") == created
    assert await tasks.find("ext-x") == created
    assert await tasks.get(created.id + 100) is None
    with pytest.raises(DuplicateTaskError):
        await tasks.create(
            kind=VIDEO,
            provider="simulator",
            simulated=False,
            external_task_id="ext-x",
            params={},
            input_labels=[],
            slots=1,
            origin=Origin(channel_id=7, user_id=8),
            callback_token=None,
        )
    await tasks.set_inputs(created.id, [f"inputs/{created.id}/image1.png"])
    await submit(tasks, created.id, "kling-77")
    found = await tasks.by_kling_id("kling-77")
    assert found is not None and found.input_files == [f"inputs/{created.id}/image1.png"]
    assert await tasks.find("kling-77") == found


async def test_transition_update_and_update_if_state(
    tasks: TaskStore, make: Maker, clock: Clock
) -> None:
    task = await make()
    clock.now += 5
    assert await tasks.transition(task.id, [S.QUEUED], S.SUBMITTED, kling_task_id="k")
    assert not await tasks.transition(task.id, [S.QUEUED], S.CANCELLED)  # lost the race
    got = await tasks.get(task.id)
    assert got is not None and got.state is S.SUBMITTED and got.submitted_at == clock.now
    await tasks.update(task.id, check_count=3, failure_code="kling_refused")
    assert await tasks.update_if_state(task.id, RUNNING, cancel_requested=True)
    assert not await tasks.update_if_state(task.id, [S.QUEUED], check_count=9)
    got = await tasks.get(task.id)
    assert got is not None
    assert (got.check_count, got.failure_code, got.cancel_requested) == (3, "kling_refused", True)
    with pytest.raises(ValueError):
        await tasks.update(task.id, state=S.FAILED)
    with pytest.raises(ValueError):
        await tasks.update(task.id, claim_owner=A)  # claims change only through claim()


async def test_failure_codes_and_their_parameters_round_trip(tasks: TaskStore, make: Maker) -> None:
    task = await make()
    params = {"message": "prompt refused", "tries": 4, "seconds": 1.5}
    assert await tasks.transition(
        task.id, [S.QUEUED], S.FAILED, failure_code="kling_refused", failure_params=params
    )
    await tasks.update(
        task.id, delivery_error_code="channel_gone", delivery_error_params={"channel_id": 7}
    )
    got = await tasks.get(task.id)
    assert got is not None
    assert (got.failure_code, got.failure_params) == ("kling_refused", params)
    assert (got.delivery_error_code, got.delivery_error_params) == (
        "channel_gone",
        {"channel_id": 7},
    )
    await tasks.update(task.id, failure_params={})
    got = await tasks.get(task.id)
    assert got is not None and got.failure_params == {}


async def test_set_posted_message(tasks: TaskStore, make: Maker) -> None:
    task = await make()
    assert task.posted_message_id is None
    await tasks.set_posted_message(task.id, 123456789012345678)
    got = await tasks.get(task.id)
    assert got is not None and got.posted_message_id == 123456789012345678


async def test_queries(tasks: TaskStore, make: Maker, clock: Clock) -> None:
    first = await make(user_id=1)
    clock.now += 10
    second = await make(user_id=2, kind=VIDEO)
    clock.now += 10
    third = await make(user_id=1, credits="1.5", kling_status="succeed")
    assert await tasks.transition(third.id, [S.QUEUED], S.SUCCEED, result_files=["r/0.png"])
    assert [t.id for t in await tasks.in_states([S.QUEUED])] == [first.id, second.id]
    assert [t.id for t in await tasks.in_states([S.QUEUED], kind=VIDEO)] == [second.id]
    assert [t.id for t in await tasks.list_tasks(user_id=1)] == [third.id, first.id]
    assert [t.id for t in await tasks.list_tasks(limit=1, offset=1)] == [second.id]
    assert await tasks.count_tasks() == 3
    assert await tasks.count_tasks(states=[S.SUCCEED]) == 1
    assert await tasks.count_tasks(since=clock.now - 10) == 2
    usage = await tasks.usage(guild_id=3, since=0.0)
    assert usage[0] == UsageRow(user_id=1, tasks=2, succeeded=1, failed=0, credits=1.5)
    counts = await tasks.counts_by_state()
    assert counts[S.QUEUED] == 2 and counts[S.SUCCEED] == 1 and counts[S.FAILED] == 0


async def test_files_due_for_removal_and_mark_files_removed(
    tasks: TaskStore, make: Maker, clock: Clock
) -> None:
    old, recent = await make(), await make()
    assert await tasks.transition(old.id, [S.QUEUED], S.CANCELLED)
    clock.now += 100
    assert await tasks.transition(recent.id, [S.QUEUED], S.CANCELLED)
    assert await tasks.files_due_for_removal(clock.now - 1) == [old.id]
    await tasks.mark_files_removed([old.id])
    assert await tasks.files_due_for_removal(clock.now + 1) == [recent.id]


async def test_guild_settings(stores: Stores) -> None:
    settings = stores.guild_settings
    assert await settings.get_guild_config(1) == {}
    await settings.set_guild_config(1, {"daily_limit": 3, "blocked_words": ["x"]})
    await settings.set_guild_config(1, {"daily_limit": 4})  # replaces, does not merge
    assert await settings.get_guild_config(1) == {"daily_limit": 4}
    assert await settings.get_guild_config(2) == {}


# --- claims -----------------------------------------------------------------------------------


async def test_a_live_claim_is_one_owners_until_it_expires(tasks: TaskStore, make: Maker) -> None:
    task = await make()
    took = await tasks.claim(task.id, "admit", A, until=1_060.0, states=[S.QUEUED], now=1_000.0)
    assert claim_of(took) == (A, ClaimPurpose.ADMIT, 1_060.0)
    assert await tasks.get(task.id) == took
    # Another owner cannot take it while it is live; its owner may claim again (renewing).
    assert (
        await tasks.claim(task.id, "admit", B, until=1_100.0, states=[S.QUEUED], now=1_059.0)
        is None
    )
    again = await tasks.claim(task.id, "admit", A, until=1_090.0, states=[S.QUEUED], now=1_059.0)
    assert again is not None and again.claim_until == 1_090.0
    # Expired (its owner died): the other owner takes it over.
    taken = await tasks.claim(task.id, "admit", B, until=1_150.0, states=[S.QUEUED], now=1_090.0)
    assert taken is not None and taken.claim_owner == B
    assert not await tasks.renew_claim(task.id, A, until=1_200.0)  # no longer A's
    assert await tasks.renew_claim(task.id, B, until=1_200.0)
    got = await tasks.get(task.id)
    assert got is not None and got.claim_until == 1_200.0


async def test_a_claim_needs_the_task_in_one_of_the_states(tasks: TaskStore, make: Maker) -> None:
    task = await make()
    assert await tasks.claim(task.id, "complete", A, until=2e3, states=RUNNING, now=1e3) is None
    assert (
        await tasks.claim(task.id + 99, "admit", A, until=2e3, states=[S.QUEUED], now=1e3) is None
    )
    with pytest.raises(ValueError):  # "deliver" lives in succeed/failed, not queued
        await tasks.claim(task.id, "deliver", A, until=2e3, states=[S.QUEUED], now=1e3)


async def test_release_ends_only_the_owners_claim(tasks: TaskStore, make: Maker) -> None:
    task = await make()
    assert await tasks.claim(task.id, "admit", A, until=2e3, states=[S.QUEUED], now=1e3)
    await tasks.release_claim(task.id, B)  # not B's: nothing happens
    got = await tasks.get(task.id)
    assert got is not None and got.claim_owner == A
    await tasks.release_claim(task.id, A)
    assert claim_of(await tasks.get(task.id)) == (None, None, None)
    assert await tasks.claim(task.id, "admit", B, until=2e3, states=[S.QUEUED], now=1e3)


async def test_a_transition_out_of_the_claims_states_ends_it(tasks: TaskStore, make: Maker) -> None:
    task = await make()
    assert await tasks.claim(task.id, "admit", A, until=9e3, states=[S.QUEUED], now=1e3)
    await submit(tasks, task.id)
    got = await tasks.get(task.id)
    assert got is not None and got.claim_owner is None  # admitted: the admit claim is over
    assert await tasks.claim(task.id, "complete", A, until=9e3, states=RUNNING, now=1e3)
    assert await tasks.transition(task.id, [S.SUBMITTED], S.PROCESSING)
    got = await tasks.get(task.id)
    assert got is not None and got.claim_purpose is ClaimPurpose.COMPLETE  # still completing
    assert await tasks.transition(task.id, RUNNING, S.SUCCEED)
    got = await tasks.get(task.id)
    assert got is not None and got.claim_owner is None
    assert await tasks.claim(task.id, "deliver", B, until=9e3, states=[S.SUCCEED], now=1e3)
    assert await tasks.transition(task.id, [S.SUCCEED], S.DELIVERED)
    got = await tasks.get(task.id)
    assert got is not None and (got.claim_owner, got.claim_until) == (None, None)


# --- admission: the in-memory queue's cases, against the store -------------------------------


async def test_members_take_turns_and_each_members_tasks_stay_in_order(
    tasks: TaskStore, make: Maker
) -> None:
    ids = [(await make(user_id=1)).id for _ in range(10)]  # member 1 asks for ten tasks first
    ids += [(await make(user_id=2)).id for _ in range(2)]
    ids += [(await make(user_id=3)).id]
    expected = [ids[i] for i in (0, 10, 12, 1, 11, 2, 3, 4, 5, 6, 7, 8, 9)]
    assert (await tasks.queue_snapshot(IMAGE, now=1_000.0)).ids == expected
    assert await drain(tasks) == expected
    assert (await tasks.queue_snapshot(IMAGE, now=1_000.0)).ids == []


async def test_limit_holds_tasks_until_slots_free(tasks: TaskStore, make: Maker) -> None:
    one, two = await make(user_id=1), await make(user_id=1)
    three, four = await make(user_id=2), await make(user_id=2)
    assert await drain(tasks, limit=2) == [one.id, three.id]
    assert await tasks.slots_in_use(IMAGE, 1_000.0) == 2
    await submit(tasks, one.id)  # created at Kling: still holds its slot
    assert await drain(tasks, limit=2) == []
    await end_at_kling(tasks, one.id)
    await end_at_kling(tasks, one.id)  # a second "it ended" frees nothing more
    assert await tasks.slots_in_use(IMAGE, 1_000.0) == 1
    assert await drain(tasks, limit=2) == [two.id]
    await submit(tasks, three.id)
    assert await tasks.transition(three.id, RUNNING, S.FAILED)  # ended: frees its slot
    assert await drain(tasks, limit=2) == [four.id]


async def test_a_big_task_is_not_overtaken_by_small_ones(tasks: TaskStore, make: Maker) -> None:
    one = await make(user_id=1, slots=3)
    two = await make(user_id=2, slots=4)
    three = await make(user_id=3, slots=1)
    # Member 2's turn: 4 slots needed, 1 free -> nobody overtakes.
    assert await drain(tasks, limit=4) == [one.id]
    await submit(tasks, one.id)
    await end_at_kling(tasks, one.id)
    assert await drain(tasks, limit=4) == [two.id]
    await submit(tasks, two.id)
    await end_at_kling(tasks, two.id)
    assert await drain(tasks, limit=4) == [three.id]


async def test_concurrency_limit_backs_off_and_caps_until_a_slot_frees(
    tasks: TaskStore, make: Maker
) -> None:
    one, two, three = [await make(user_id=user) for user in (1, 2, 3)]
    assert await drain(tasks, now=100.0) == [one.id, two.id, three.id]
    # Kling refused task 3 (1303): it goes back with a backoff, and the caller caps the
    # limit to the slots in use.
    not_before = 101.5
    await tasks.release_claim(three.id, A)
    await tasks.update(three.id, not_before=not_before)
    cap = await tasks.slots_in_use(IMAGE, 100.0)
    assert cap == 2
    four = await make(user_id=4)
    assert await drain(tasks, now=100.5, cap=cap) == []  # capped, and task 3 is backing off
    await submit(tasks, one.id)
    await end_at_kling(tasks, one.id)  # a slot freed: the caller lifts the cap
    assert await drain(tasks, now=100.5) == [four.id]  # task 3 still waits out its backoff
    assert await drain(tasks, now=not_before) == [three.id]


async def test_the_cap_and_the_limit_both_bound(tasks: TaskStore, make: Maker) -> None:
    for user in (1, 2, 3):
        await make(user_id=user)
    assert len(await drain(tasks, limit=5, cap=1)) == 1
    assert len(await drain(tasks, limit=2, cap=5)) == 1
    assert await drain(tasks, limit=None, cap=None) != []


async def test_retry_later_backs_off_and_keeps_the_members_order(
    tasks: TaskStore, make: Maker
) -> None:
    one = await make(user_id=1, kind=VIDEO)
    two = await make(user_id=1, kind=VIDEO)
    first = await tasks.admit_next(VIDEO, limit=1, owner=A, now=0.0, until=60.0)
    assert first is not None and first.id == one.id
    # A retryable create failure: back in line with a backoff, without its slot.
    await tasks.release_claim(one.id, A)
    await tasks.update(one.id, not_before=2.0)
    assert await tasks.slots_in_use(VIDEO, 0.0) == 0
    assert (await tasks.queue_snapshot(VIDEO, now=1_000.0)).ids == [one.id, two.id]
    # FIFO per member: task 2 does not jump the line while task 1 backs off.
    assert await tasks.admit_next(VIDEO, limit=1, owner=A, now=1.0, until=61.0) is None
    again = await tasks.admit_next(VIDEO, limit=1, owner=A, now=2.0, until=62.0)
    assert again is not None and again.id == one.id


async def test_a_backing_off_head_passes_its_turn_without_using_it(
    tasks: TaskStore, make: Maker
) -> None:
    waits = await make(user_id=1, not_before=200.0)
    later = await make(user_id=1)
    b, c = await make(user_id=2), await make(user_id=2)
    assert await drain(tasks, now=100.0) == [b.id, c.id]  # member 1 is skipped, not dropped
    await submit(tasks, b.id)
    await submit(tasks, c.id)
    d = await make(user_id=2)
    # Member 1 has had no turn yet: once its head is ready it goes before member 2 again.
    assert await drain(tasks, now=200.0) == [waits.id, d.id, later.id]


async def test_the_order_of_the_queue(tasks: TaskStore, make: Maker) -> None:
    """Queue positions: the tasks running are not in line; the rest in turn order."""
    one, two = await make(user_id=1), await make(user_id=1)
    assert await drain(tasks, limit=2) == [one.id, two.id]
    three, four, five = await make(user_id=2), await make(user_id=3), await make(user_id=2)
    assert (await tasks.queue_snapshot(IMAGE, now=1_000.0)).ids == [three.id, four.id, five.id]
    assert await tasks.slots_in_use(IMAGE, 1_000.0) == 2


async def test_unlimited_lets_everything_go_at_once(tasks: TaskStore, make: Maker) -> None:
    ids = [(await make(user_id=1, kind=VIDEO)).id for _ in range(5)]
    assert await drain(tasks, VIDEO) == ids
    assert (await tasks.queue_snapshot(VIDEO, now=1_000.0)).ids == []


async def test_kinds_have_their_own_lines_and_slots(tasks: TaskStore, make: Maker) -> None:
    image = await make(user_id=1, slots=2)
    video = await make(user_id=1, kind=VIDEO)
    assert await drain(tasks, IMAGE, limit=2) == [image.id]
    assert await tasks.slots_in_use(VIDEO, 1_000.0) == 0
    assert await drain(tasks, VIDEO, limit=1) == [video.id]


async def test_a_claimed_queued_task_is_out_of_line_and_holds_its_slots(
    tasks: TaskStore, make: Maker
) -> None:
    """A task whose create may have reached Kling waits for a lookup under a claim."""
    looked_up = await make(user_id=1, slots=2)
    other = await make(user_id=2, slots=2)
    assert await tasks.claim(looked_up.id, "admit", B, until=1_050.0, states=[S.QUEUED], now=1e3)
    assert (await tasks.queue_snapshot(IMAGE, now=1_000.0)).ids == [other.id]
    assert await tasks.slots_in_use(IMAGE, 1_000.0) == 2
    assert await drain(tasks, limit=3, now=1_000.0) == []  # 2 held + 2 > 3
    # B died: at the end of its claim the task is back in line and holds nothing.
    assert await tasks.slots_in_use(IMAGE, 1_050.0) == 0
    assert await drain(tasks, limit=4, now=1_050.0) == [looked_up.id, other.id]


async def test_cancel_requested_tasks_are_admitted_too(tasks: TaskStore, make: Maker) -> None:
    task = await make(cancel_requested=True)
    admitted = await tasks.admit_next(IMAGE, limit=1, owner=A, now=1e3, until=2e3)
    assert admitted is not None and admitted.id == task.id and admitted.cancel_requested


async def test_a_member_never_admitted_goes_before_those_served(
    tasks: TaskStore, make: Maker
) -> None:
    first = await make(user_id=1)
    assert await drain(tasks) == [first.id]
    again = await make(user_id=1)
    newcomer = await make(user_id=2)
    assert (await tasks.queue_snapshot(IMAGE, now=1_000.0)).ids == [newcomer.id, again.id]


async def test_two_processes_never_admit_past_the_limit(
    stores: Stores, second: Stores, make: Maker
) -> None:
    for user in range(1, 7):
        await make(user_id=user)

    async def admit(store: TaskStore, owner: str) -> list[int]:
        taken = []
        for _ in range(6):
            record = await store.admit_next(IMAGE, limit=3, owner=owner, now=1e3, until=2e3)
            if record is not None:
                taken.append(record.id)
            await asyncio.sleep(0)
        return taken

    results = await asyncio.gather(
        admit(stores.tasks, A), admit(second.tasks, B), admit(stores.tasks, A)
    )
    taken = [task_id for result in results for task_id in result]
    assert len(taken) == 3 and len(set(taken)) == 3
    assert await stores.tasks.slots_in_use(IMAGE, 1e3) == 3


# --- polls ------------------------------------------------------------------------------------


async def test_claim_due_polls_earliest_first_limited_and_leased(
    tasks: TaskStore, make: Maker
) -> None:
    due = []
    for at in (30.0, 10.0, 20.0, 500.0):
        record = await make()
        await tasks.transition(record.id, [S.QUEUED], S.SUBMITTED, kling_task_id=f"k{at}")
        await tasks.update(record.id, next_check_at=at)
        due.append(record.id)
    queued = await make(next_check_at=1.0)  # not running: never polled
    assert queued.state is S.QUEUED
    assert await tasks.next_poll_at() == 10.0
    got = await tasks.claim_due_polls(IMAGE, now=100.0, until=160.0, owner=A, limit=2)
    assert [r.id for r in got] == [due[1], due[2]]
    assert all(r.next_check_at == 160.0 for r in got)
    rest = await tasks.claim_due_polls(IMAGE, now=100.0, until=160.0, owner=B, limit=10)
    assert [r.id for r in rest] == [due[0]]
    assert await tasks.claim_due_polls(IMAGE, now=100.0, until=160.0, owner=A, limit=10) == []
    assert await tasks.claim_due_polls(VIDEO, now=1e9, until=2e9, owner=A, limit=10) == []
    # The poller that took them died: they are due again at the end of the lease.
    again = await tasks.claim_due_polls(IMAGE, now=160.0, until=220.0, owner=B, limit=10)
    assert [r.id for r in again] == due[:3]  # all due at 160: in id order
    assert await tasks.next_poll_at() == 220.0


async def test_claim_due_polls_skips_tasks_others_complete(tasks: TaskStore, make: Maker) -> None:
    task = await make()
    await tasks.transition(task.id, [S.QUEUED], S.SUBMITTED, kling_task_id="k1", next_check_at=5.0)
    assert await tasks.claim(task.id, "complete", B, until=200.0, states=RUNNING, now=10.0)
    assert await tasks.claim_due_polls(IMAGE, now=10.0, until=70.0, owner=A, limit=5) == []
    mine = await tasks.claim_due_polls(IMAGE, now=10.0, until=70.0, owner=B, limit=5)
    assert [r.id for r in mine] == [task.id]


async def test_two_pollers_never_take_the_same_task(
    stores: Stores, second: Stores, make: Maker
) -> None:
    for n in range(20):
        record = await make()
        await stores.tasks.transition(
            record.id, [S.QUEUED], S.SUBMITTED, kling_task_id=f"k{n}", next_check_at=float(n)
        )
    batches = await asyncio.gather(
        *(
            store.claim_due_polls(IMAGE, now=100.0, until=200.0, owner=owner, limit=3)
            for _ in range(5)
            for store, owner in ((stores.tasks, A), (second.tasks, B))
        )
    )
    ids = [record.id for batch in batches for record in batch]
    assert len(ids) == 20 and len(set(ids)) == 20


async def test_next_poll_at_is_none_without_running_tasks(tasks: TaskStore, make: Maker) -> None:
    assert await tasks.next_poll_at() is None
    await make(next_check_at=5.0)  # queued
    assert await tasks.next_poll_at() is None


async def test_the_queue_snapshot_counts_every_queued_task_and_shows_the_line(
    tasks: TaskStore, make: Maker, clock: Clock
) -> None:
    first = await make(user_id=1, slots=2)
    clock.now = 1_010.0
    backing_off = await make(user_id=2, not_before=1_500.0)
    being_created = await make(user_id=3)
    video = await make(user_id=3, kind=VIDEO)
    assert await tasks.claim(being_created.id, "admit", A, until=2e3, states=[S.QUEUED], now=1e3)
    running = await make(user_id=4, slots=3)
    await submit(tasks, running.id)
    snapshot = await tasks.queue_snapshot(IMAGE, now=1_020.0)
    assert [(q.id, q.slots, q.not_before) for q in snapshot.line] == [
        (first.id, 2, None),
        (backing_off.id, 1, 1_500.0),
    ]
    assert (snapshot.queued, snapshot.oldest_created_at) == (3, 1_000.0)
    assert snapshot.slots_in_use == 3 + 1  # running at Kling, and the one being created
    videos = await tasks.queue_snapshot(VIDEO, now=3e3)
    assert (videos.ids, videos.queued, videos.slots_in_use) == ([video.id], 1, 0)


async def test_two_processes_racing_a_transition_one_wins_and_its_fields_stay(
    stores: Stores, second: Stores, make: Maker
) -> None:
    """The poller of one process and the callback of another both see "processing"."""
    for n in range(10):
        task = await make()
        assert await stores.tasks.transition(task.id, [S.QUEUED], S.PROCESSING)
        results = await asyncio.gather(
            stores.tasks.transition(task.id, [S.PROCESSING], S.SUCCEED, kling_status="a"),
            second.tasks.transition(task.id, [S.PROCESSING], S.FAILED, kling_status="b"),
        )
        assert sorted(results) == [False, True], n
        got = await second.tasks.get(task.id)
        assert got is not None
        assert (got.state, got.kling_status) == (
            (S.SUCCEED, "a") if results[0] else (S.FAILED, "b")
        )
