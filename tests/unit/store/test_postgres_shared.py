"""The PostgreSQL store as several processes share it: what only a shared database has.

Each test opens three stores (three pools: three processes, as far as PostgreSQL can tell) on
one fresh database of the suite's server and races them with ``asyncio.gather``; the contract
suite (test_contract.py) covers everything else. Also here: opening (migrations racing at
start, the operator's line when the server cannot be reached) and the URL's forms.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from bot.config import ConfigError
from bot.kling.models import TaskKind
from bot.tasks.models import ClaimPurpose, Origin, TaskRecord, TaskState
from bot.tasks.store import PgTaskStore, Stores, TaskStore, open_store, schema
from bot.tasks.store.pg import LOCK_NAMESPACE, MIGRATION_LOCK, admission_lock
from testing.postgres import drop_database

S = TaskState
IMAGE = TaskKind.IMAGE
RUNNING = [S.SUBMITTED, S.PROCESSING]
OWNERS = ("process-a", "process-b", "process-c")
NOW = 1_000.0


def with_scheme(url: str, scheme: str) -> str:
    return urlunsplit(urlsplit(url)._replace(scheme=scheme))


def with_query(url: str, query: str) -> str:
    return urlunsplit(urlsplit(url)._replace(query=query))


@pytest.fixture
async def three(postgres_url: str) -> AsyncIterator[list[TaskStore]]:
    """Three stores on one database, opened one after the other (the schema exists)."""
    opened: list[Stores] = []
    try:
        for _ in OWNERS:
            stores = open_store(postgres_url, clock=lambda: NOW)
            await stores.open()
            opened.append(stores)
        yield [stores.tasks for stores in opened]
    finally:
        for stores in opened:
            await stores.close()


async def make(
    store: TaskStore, n: int, *, users: int = 1, first_user: int = 1, slots: int = 1
) -> list[TaskRecord]:
    """``n`` queued image tasks of ``users`` members in turn (from ``first_user`` on),
    ``slots`` each."""
    made = []
    for number in range(n):
        made.append(
            await store.create(
                kind=IMAGE,
                provider="simulator",
                simulated=True,
                external_task_id=f"ext-{random.getrandbits(64):x}",
                params={"prompt": f"task {number}", "n": slots},
                input_labels=[],
                slots=slots,
                origin=Origin(channel_id=7, user_id=first_user + number % users, guild_id=3),
                callback_token=None,
            )
        )
    return made


# --- claims ------------------------------------------------------------------------------------


async def test_two_processes_racing_for_a_claim_one_wins_every_time(
    three: list[TaskStore],
) -> None:
    first, second, _ = three
    tasks = await make(first, 40)
    rounds = await asyncio.gather(
        *(
            asyncio.gather(
                first.claim(
                    task.id, "admit", OWNERS[0], until=NOW + 60, states=[S.QUEUED], now=NOW
                ),
                second.claim(
                    task.id, "admit", OWNERS[1], until=NOW + 60, states=[S.QUEUED], now=NOW
                ),
            )
            for task in tasks
        )
    )
    for task, (a, b) in zip(tasks, rounds, strict=True):
        assert (a is None) != (b is None), f"task {task.id}: {a} / {b}"
        winner = a or b
        assert winner is not None
        stored = await first.get(task.id)
        assert stored is not None and stored.claim_owner == winner.claim_owner


async def test_a_claim_is_taken_over_once_its_owners_time_has_passed(
    three: list[TaskStore],
) -> None:
    first, second, third = three
    (task,) = await make(first, 1)
    await first.transition(task.id, [S.QUEUED], S.SUBMITTED, kling_task_id="k-1")
    held = await first.claim(
        task.id, "complete", OWNERS[0], until=NOW + 30, states=RUNNING, now=NOW
    )
    assert held is not None
    # The owner stops renewing (it died): live until NOW + 30, anyone's after.
    assert (
        await second.claim(
            task.id, "complete", OWNERS[1], until=NOW + 90, states=RUNNING, now=NOW + 29.9
        )
        is None
    )
    took, lost = await asyncio.gather(
        second.claim(task.id, "complete", OWNERS[1], until=NOW + 90, states=RUNNING, now=NOW + 30),
        third.claim(task.id, "complete", OWNERS[2], until=NOW + 90, states=RUNNING, now=NOW + 30),
    )
    winners = [record for record in (took, lost) if record is not None]
    assert len(winners) == 1 and winners[0].claim_purpose is ClaimPurpose.COMPLETE
    assert not await first.renew_claim(task.id, OWNERS[0], until=NOW + 300)  # no longer its
    stored = await first.get(task.id)
    assert stored is not None and stored.claim_owner == winners[0].claim_owner
    assert stored.claim_until == NOW + 90


# --- admission -------------------------------------------------------------------------------


async def test_three_processes_admitting_at_once_stay_within_the_slots(
    three: list[TaskStore],
) -> None:
    """Rounds of admissions from three processes at once, while new members' tasks arrive
    (a newcomer goes first: the line changes under the admissions); between rounds Kling ends
    whatever was admitted."""
    limit = 5
    tasks = await make(three[0], 24, users=6, slots=2)
    tasks += await make(three[0], 12, users=4, slots=1)
    admitted: list[TaskRecord] = []
    for round_number in range(40):
        admissions = [
            store.admit_next(IMAGE, limit=limit, owner=owner, now=NOW, until=NOW + 60)
            for _ in range(6)
            for store, owner in zip(three, OWNERS, strict=True)
        ]
        newcomers = (
            [
                make(store, 1, first_user=1_000 + 3 * round_number + index, slots=1 + index % 2)
                for index, store in enumerate(three)
            ]
            if round_number < 10
            else []
        )
        results = await asyncio.gather(*admissions[:9], *newcomers, *admissions[9:])
        tasks += [task for result in results if isinstance(result, list) for task in result]
        batch = [record for record in results if isinstance(record, TaskRecord)]
        assert sum(record.slots for record in batch) <= limit, f"round {round_number}"
        assert await three[1].slots_in_use(IMAGE, NOW) <= limit
        admitted += batch
        for record in batch:
            assert await three[2].transition(
                record.id, [S.QUEUED], S.SUBMITTED, kling_task_id=f"k{record.id}"
            )
            await three[2].update(record.id, kling_status="succeed")  # its slots are free
        if len(admitted) == len(tasks):
            break
    ids = [record.id for record in admitted]
    assert len(ids) == len(set(ids)) == len(tasks)  # each task admitted once, none left out
    assert (await three[0].queue_snapshot(IMAGE, now=NOW)).queued == 0


async def test_an_admission_waits_for_another_processes_step_of_its_kind(
    three: list[TaskStore], postgres_url: str
) -> None:
    """Another process is inside its admission step (lock held, a task claimed, not committed
    yet): an admission of the same kind waits and then counts that claim; another kind's does
    not wait."""
    store = three[0]
    head, other = await make(store, 2, users=2)
    video = await store.create(
        kind=TaskKind.VIDEO,
        provider="simulator",
        simulated=True,
        external_task_id="ext-video",
        params={},
        input_labels=[],
        slots=1,
        origin=Origin(channel_id=7, user_id=9),
        callback_token=None,
    )
    elsewhere = await asyncpg.connect(postgres_url)
    try:
        step = elsewhere.transaction()
        await step.start()
        await elsewhere.execute(
            "SELECT pg_advisory_xact_lock($1, $2)", LOCK_NAMESPACE, admission_lock(IMAGE)
        )
        await elsewhere.execute(
            "UPDATE tasks SET claim_owner = 'elsewhere', claim_purpose = 'admit', "
            "claim_until = $1 WHERE id = $2",
            NOW + 60,
            other.id,
        )
        waiting = asyncio.create_task(
            store.admit_next(IMAGE, limit=1, owner=OWNERS[0], now=NOW, until=NOW + 60)
        )
        admitted_video = await asyncio.wait_for(
            three[1].admit_next(TaskKind.VIDEO, limit=1, owner=OWNERS[1], now=NOW, until=NOW + 60),
            timeout=5,
        )
        assert admitted_video is not None and admitted_video.id == video.id
        await asyncio.sleep(0.2)
        assert not waiting.done()
        await step.commit()
        # The other process's claim holds the only slot: the head does not fit.
        assert await asyncio.wait_for(waiting, timeout=5) is None
    finally:
        await elsewhere.close()
    assert await store.slots_in_use(IMAGE, NOW) == 1
    got = await store.get(head.id)
    assert got is not None and got.claim_owner is None  # still in line


def test_admissions_of_different_kinds_do_not_share_a_lock() -> None:
    keys = {admission_lock(kind) for kind in TaskKind} | {MIGRATION_LOCK}
    assert len(keys) == len(TaskKind) + 1
    assert all(0 <= key < 2**31 for key in keys)  # pg_advisory_xact_lock(int4, int4)


# --- polls -------------------------------------------------------------------------------------


async def test_three_pollers_at_once_each_due_task_goes_to_one(three: list[TaskStore]) -> None:
    tasks = await make(three[0], 45)
    for number, task in enumerate(tasks):
        await three[0].transition(
            task.id, [S.QUEUED], S.SUBMITTED, kling_task_id=f"k{task.id}", next_check_at=number
        )
    batches = await asyncio.gather(
        *(
            store.claim_due_polls(IMAGE, now=NOW, until=NOW + 60, owner=owner, limit=4)
            for _ in range(5)
            for store, owner in zip(three, OWNERS, strict=True)
        )
    )
    ids = [record.id for batch in batches for record in batch]
    assert len(ids) == len(set(ids)) == len(tasks)
    for batch in batches:
        assert [r.id for r in batch] == sorted(r.id for r in batch)  # earliest first
        assert all(record.next_check_at == NOW + 60 for record in batch)
    assert await three[1].claim_due_polls(IMAGE, now=NOW, until=NOW + 60, owner="d", limit=9) == []


# --- counters ----------------------------------------------------------------------------------


async def test_state_counters_stay_exact_under_concurrent_changes(three: list[TaskStore]) -> None:
    tasks = await make(three[0], 30)
    paths = [[S.SUBMITTED, S.PROCESSING, S.SUCCEED, S.DELIVERED], [S.CANCELLED], [S.FAILED]]

    async def walk(store: TaskStore, task: TaskRecord, path: list[TaskState]) -> None:
        state = S.QUEUED
        for target in path:
            assert await store.transition(task.id, [state], target)
            state = target

    await asyncio.gather(
        *(
            walk(three[index % 3], task, paths[index % len(paths)])
            for index, task in enumerate(tasks)
        )
    )
    counts = await three[1].counts_by_state()
    for state in TaskState:
        assert counts[state] == await three[2].count_tasks(states=[state]), state
    assert counts[S.DELIVERED] == counts[S.CANCELLED] == counts[S.FAILED] == 10


# --- opening -----------------------------------------------------------------------------------


async def test_processes_starting_together_migrate_once(postgres_url: str) -> None:
    stores = [open_store(postgres_url) for _ in range(3)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        assert all([await s.ping() for s in stores])
        store = stores[0].tasks
        assert isinstance(store, PgTaskStore)
        assert await store.schema_version() == len(schema.POSTGRES_MIGRATIONS)
        connection = await asyncpg.connect(postgres_url)
        try:
            versions = await connection.fetch("SELECT version FROM schema_migrations")
        finally:
            await connection.close()
        assert sorted(row[0] for row in versions) == list(
            range(1, len(schema.POSTGRES_MIGRATIONS) + 1)
        )
        (made,) = await make(stores[1].tasks, 1)
        assert await stores[2].tasks.get(made.id) == made
    finally:
        for s in stores:
            await s.close()


async def test_a_database_newer_than_the_bot_is_refused(postgres_url: str) -> None:
    async with open_store(postgres_url):
        pass
    connection = await asyncpg.connect(postgres_url)
    try:
        await connection.execute("INSERT INTO schema_migrations VALUES (99, 0)")
    finally:
        await connection.close()
    with pytest.raises(ConfigError, match="schema version 99, newer than this bot knows"):
        await open_store(postgres_url).open()


async def test_ids_are_never_handed_out_twice(postgres_url: str) -> None:
    async with open_store(postgres_url) as stores:
        first, second = await make(stores.tasks, 2)
        connection = await asyncpg.connect(postgres_url)
        try:
            await connection.execute("DELETE FROM tasks WHERE id = $1", second.id)
        finally:
            await connection.close()
        (third,) = await make(stores.tasks, 1)
        assert third.id > second.id > first.id


def test_both_schemes_name_the_postgresql_store() -> None:
    for scheme in ("postgresql", "postgres"):
        stores = open_store(f"{scheme}://bot:s3cret@db.example:6543/kling?sslmode=require")
        assert isinstance(stores.tasks, PgTaskStore)
        assert stores.tasks.target == "db.example:6543/kling"
    assert open_store("postgres://db.example/kling").tasks.target == "db.example:5432/kling"


async def test_the_postgres_scheme_and_url_options_reach_the_driver(postgres_url: str) -> None:
    plain = with_query(with_scheme(postgres_url, "postgres"), "sslmode=disable")
    async with open_store(plain) as stores:
        assert await stores.ping()
    connection = await asyncpg.connect(postgres_url)
    try:
        server_has_tls = await connection.fetchval("SHOW ssl") == "on"
    finally:
        await connection.close()
    # sslmode=require, passed on to asyncpg: a TLS connection, or none at all.
    required = open_store(with_query(postgres_url, "sslmode=require"))
    if server_has_tls:
        async with required as stores:
            assert await stores.ping()
    else:
        with pytest.raises(ConfigError, match="cannot open the PostgreSQL database"):
            await required.open()


# --- what the operator reads ---------------------------------------------------------------


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_an_unreachable_server_is_one_line_without_the_password() -> None:
    port = _closed_port()
    url = f"postgresql://bot:s3cret-pw@127.0.0.1:{port}/kling"
    stores = open_store(url)
    with pytest.raises(ConfigError) as caught:
        await stores.open()
    message = str(caught.value)
    assert "s3cret" not in message and "\n" not in message
    assert f"127.0.0.1:{port}/kling" in message and "connection refused" in message
    assert "DATABASE_URL" in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert not await stores.ping()


async def test_a_missing_database_is_named_without_the_password(postgres_url: str) -> None:
    parts = urlsplit(postgres_url)
    password = parts.password or "s3cret-pw"  # the suite's own server trusts any password
    netloc = f"{parts.username or 'postgres'}:{password}@{parts.hostname}:{parts.port or 5432}"
    url = urlunsplit(parts._replace(netloc=netloc, path="/no_such_database"))
    with pytest.raises(ConfigError) as caught:
        await open_store(url).open()
    message = str(caught.value)
    assert password not in message
    assert 'database "no_such_database" does not exist' in message


async def test_ping_is_false_once_the_database_is_gone(postgres_server: str) -> None:
    from testing.postgres import create_database

    url = await create_database(postgres_server)
    async with open_store(url) as stores:
        assert await stores.ping()
        await drop_database(postgres_server, url)  # ends the store's connections too
        assert not await stores.ping()
