"""Signals between processes (LISTEN/NOTIFY on PostgreSQL) and the server-settings cache.

Two ``Stores`` on one PostgreSQL database stand for two processes. What one publishes reaches
the other within a moment, never itself; a lost listening connection comes back and says
``resync``; a server's settings changed by one process are read fresh by the other at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import asyncpg
import pytest

from bot.tasks.store import Stores, open_store
from bot.tasks.store.signals import QUEUE, RESYNC

WAIT = 5.0


@pytest.fixture
async def two(postgres_url: str) -> AsyncIterator[tuple[Stores, Stores]]:
    async with open_store(postgres_url) as a, open_store(postgres_url) as b:
        yield a, b


def recorder(stores: Stores) -> list[tuple[str, str]]:
    heard: list[tuple[str, str]] = []
    stores.signals.subscribe(lambda topic, key: heard.append((topic, key)))
    return heard


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT):
        while not condition():  # noqa: ASYNC110 (polling what another process changes)
            await asyncio.sleep(0.01)


async def test_a_signal_reaches_the_other_process_and_not_its_sender(
    two: tuple[Stores, Stores],
) -> None:
    a, b = two
    heard_by_a, heard_by_b = recorder(a), recorder(b)
    await a.signals.publish(QUEUE, "image")
    await until(lambda: heard_by_b == [(QUEUE, "image")])
    await asyncio.sleep(0.2)  # would a copy reach the sender too?
    assert heard_by_a == []


async def test_a_lost_listener_comes_back_and_says_resync(
    two: tuple[Stores, Stores], postgres_url: str
) -> None:
    a, b = two
    heard = recorder(b)
    connection = await asyncpg.connect(postgres_url)
    try:
        # Every listening connection of the database is cut, as a server restart would.
        cut = await connection.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND query LIKE 'LISTEN%'"
        )
    finally:
        await connection.close()
    assert cut == 2
    await until(lambda: (RESYNC, "") in heard)
    await a.signals.publish(QUEUE, "video")
    await until(lambda: (QUEUE, "video") in heard)


async def test_settings_changed_by_one_process_are_read_fresh_by_the_other(
    two: tuple[Stores, Stores],
) -> None:
    a, b = two
    assert await b.guild_settings.get_guild_config(5) == {}  # now kept by b
    await a.guild_settings.set_guild_config(5, {"language": "ja"})

    async def b_sees_it() -> None:
        while await b.guild_settings.get_guild_config(5) != {"language": "ja"}:  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    async with asyncio.timeout(WAIT):
        await b_sees_it()


async def test_the_cache_hands_out_copies(postgres_url: str) -> None:
    async with open_store(postgres_url) as stores:
        await stores.guild_settings.set_guild_config(1, {"blocked_words": ["x"]})
        first = await stores.guild_settings.get_guild_config(1)
        first["blocked_words"].append("y")
        assert await stores.guild_settings.get_guild_config(1) == {"blocked_words": ["x"]}
