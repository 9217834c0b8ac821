"""Signals between processes through PostgreSQL's LISTEN/NOTIFY.

One connection per process, outside the pool, LISTENs on ``CHANNEL``; publishing is a
``pg_notify`` on a pooled connection, delivered to every listener within milliseconds of the
commit. Each payload starts with the sender's id, so a process skips its own. A lost listening
connection is opened again with a growing pause (at most ``MAX_RECONNECT_DELAY``); once back,
the handlers get ``RESYNC``, because notifications sent meanwhile were not kept for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from typing import Any

import asyncpg

from bot.tasks.store.pg import CONNECT_TIMEOUT, PgDatabase
from bot.tasks.store.signals import RESYNC, Handler

log = logging.getLogger(__name__)

CHANNEL = "kling_bot"
MAX_RECONNECT_DELAY = 30.0


class PgSignals:
    def __init__(self, database: PgDatabase, database_url: str) -> None:
        self._database = database
        self._url = database_url
        self.sender = secrets.token_hex(6)  # this process's mark on what it publishes
        self.handlers: list[Handler] = []
        self._connection: asyncpg.Connection | None = None
        self._reconnecting: asyncio.Task[None] | None = None
        self._closed = False

    async def open(self) -> None:
        self._closed = False
        await self._listen()

    async def close(self) -> None:
        self._closed = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnecting
            self._reconnecting = None
        connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), CONNECT_TIMEOUT)

    def subscribe(self, handler: Handler) -> None:
        self.handlers.append(handler)

    async def publish(self, topic: str, key: str = "") -> None:
        await self._database.execute(
            "SELECT pg_notify($1, $2)", CHANNEL, f"{self.sender}|{topic}|{key}"
        )

    async def _listen(self) -> None:
        connection = await asyncpg.connect(self._url, timeout=CONNECT_TIMEOUT)
        await connection.add_listener(CHANNEL, self._received)
        connection.add_termination_listener(self._lost)
        self._connection = connection

    def _received(self, _connection: Any, _pid: int, _channel: str, payload: object) -> None:
        sender, _, rest = str(payload).partition("|")
        if sender == self.sender:
            return
        topic, _, key = rest.partition("|")
        self._deliver(topic, key)

    def _deliver(self, topic: str, key: str) -> None:
        for handler in list(self.handlers):
            try:
                handler(topic, key)
            except Exception:
                log.exception("signal handler failed on %s %s", topic, key)

    def _lost(self, _connection: Any) -> None:
        if self._closed or self._reconnecting is not None:
            return
        log.warning("PostgreSQL %s: the signal connection was lost; reconnecting", self._target)
        self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        delay = 0.5
        while not self._closed:
            try:
                await self._listen()
            except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
                log.warning("PostgreSQL %s: signals still unreachable (%s)", self._target, exc)
                await asyncio.sleep(delay)
                delay = min(MAX_RECONNECT_DELAY, delay * 2)
                continue
            self._reconnecting = None
            log.info("PostgreSQL %s: signals back", self._target)
            self._deliver(RESYNC, "")
            return

    @property
    def _target(self) -> str:
        return self._database.target
