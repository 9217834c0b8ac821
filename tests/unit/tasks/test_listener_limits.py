"""The public listener under hostile load, over loopback with raw sockets.

Compressed bodies are refused (415) without being inflated, so gzip bombs cannot stall the
event loop; slow and half-open clients are closed after the head/body timeouts; connections
over the cap are refused at once; and the file descriptors all of that held are given back.
The listener runs in the test's own event loop, so anything that blocks the loop shows up as
a slow ``/healthz``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import os
import resource
import time
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest
from aiohttp import web

from bot.tasks.models import TaskRecord, TaskState
from bot.tasks.webhook import (
    CALLBACK_PATH,
    FD_RESERVE,
    MAX_CONNECTIONS,
    ListenerLimits,
    start_listener,
)
from kling_sim.simulator import KlingSimulator
from testing.callbacks import body, gzip_bomb, running_task
from testing.settings import settings_for
from testing.tracker_harness import SECRET, Harness

pytestmark = pytest.mark.asyncio

# Short limits keep most tests quick; the slowloris test runs the production defaults.
QUICK = ListenerLimits(head_timeout=0.5, body_timeout=0.5, linger=0.2)
UNKNOWN = CALLBACK_PATH + "0" * 32
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


@dataclass
class Served:
    h: Harness
    runner: web.AppRunner
    record: TaskRecord  # a submitted task with a real callback token

    @property
    def port(self) -> int:
        return int(self.runner.addresses[0][1])

    @property
    def path(self) -> str:
        return CALLBACK_PATH + (self.record.callback_token or "")

    async def state(self) -> TaskState:
        record = await self.h.store.get(self.record.id)
        assert record is not None
        return record.state


@contextlib.asynccontextmanager
async def serving(
    simulator: KlingSimulator, limits: ListenerLimits, max_body: int = 64 * 1024
) -> AsyncIterator[Served]:
    """The tracker's real app behind ``start_listener`` on 127.0.0.1, no loops started."""
    h = Harness(settings_for(simulator, webhook_secret=SECRET, webhook_max_body=max_body))
    await h.open(start=False)
    runner = await start_listener(h.core.webhook_app(), "127.0.0.1", 0, limits)
    try:
        yield Served(h, runner, await running_task(h))
    finally:
        await runner.cleanup()
        await h.close()


def post(path: str, data: bytes, *, length: int | None = None, **headers: str) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Connection: close",
        "Content-Type: application/json",
        f"Content-Length: {len(data) if length is None else length}",
        *(f"{name.replace('_', '-')}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


def status_of(answer: bytes) -> int:
    head = answer.split(b"\r\n", 1)[0].split()
    return int(head[1]) if len(head) >= 2 and head[1].isdigit() else 0


async def exchange(port: int, data: bytes, limit: float = 5.0) -> tuple[int, bytes]:
    """Send ``data``, read to EOF: (status, answer); status 0 when closed without one."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        try:
            answer = await asyncio.wait_for(reader.read(), limit)
        except ConnectionResetError:
            answer = b""
        return status_of(answer), answer
    finally:
        writer.close()


async def healthz_seconds(port: int) -> float:
    started = time.monotonic()
    status, answer = await exchange(port, HEALTHZ)
    assert status == 200, answer
    return time.monotonic() - started


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def room_for(descriptors: int) -> None:
    """Raise the soft fd limit to ``descriptors`` if it is lower (and the hard one allows)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < descriptors:
        if hard != resource.RLIM_INFINITY and hard < descriptors:
            pytest.skip(f"the hard fd limit ({hard}) is below the {descriptors} this test needs")
        resource.setrlimit(resource.RLIMIT_NOFILE, (descriptors, hard))


async def until(condition: Callable[[], bool], limit: float) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


# --- compressed bodies ---------------------------------------------------------------------------


# 20 of these (100 KiB each, under the default WEBHOOK_MAX_BODY) stalled the loop for 4.5 s.
BOMB = gzip_bomb(100)


def encoded(encoding: str, data: bytes) -> bytes:
    if "gzip" in encoding.lower():
        return gzip.compress(data)
    if encoding == "deflate":
        return zlib.compress(data)
    return data  # br, zstd, unknown: the listener must not even look


@pytest.mark.parametrize("encoding", ["gzip", "GZIP", "deflate", "br", "zstd", "identity, gzip"])
async def test_a_compressed_callback_is_refused_415_and_changes_nothing(
    simulator: KlingSimulator, encoding: str
) -> None:
    async with serving(simulator, QUICK) as s:
        genuine = json.dumps(body(s.record)).encode()  # its own news, only compressed
        status, answer = await exchange(
            s.port, post(s.path, encoded(encoding, genuine), Content_Encoding=encoding)
        )
        assert status == 415, answer
        assert b"Content-Encoding" in answer  # says what is wrong
        assert await s.state() is TaskState.SUBMITTED
        assert s.h.core.metrics.callbacks[("refused", "encoded")] == 1
        # The same body plain (or declared identity) is taken.
        status, answer = await exchange(s.port, post(s.path, genuine, Content_Encoding="identity"))
        assert status == 200 and b'"accepted"' in answer, answer


async def test_gzip_bombs_do_not_stall_healthz(simulator: KlingSimulator) -> None:
    assert len(BOMB) < 256 * 1024 and gzip.decompress(BOMB) == bytes(100 * 1024 * 1024)
    async with serving(simulator, QUICK, max_body=256 * 1024) as s:
        await healthz_seconds(s.port)  # warm-up
        bombs = [
            asyncio.create_task(
                exchange(s.port, post(path, BOMB, Content_Encoding="gzip"), limit=30)
            )
            for path in [s.path, UNKNOWN] * 10
        ]
        latencies = [await healthz_seconds(s.port)]
        while not all(bomb.done() for bomb in bombs):
            latencies.append(await healthz_seconds(s.port))
        statuses = [(await bomb)[0] for bomb in bombs]
        assert max(latencies) < 1.0, latencies
        assert statuses == [415] * 20
        assert await s.state() is TaskState.SUBMITTED


# --- slow and half-open clients ------------------------------------------------------------------


async def test_stalled_clients_are_closed_while_healthz_answers(
    simulator: KlingSimulator,
) -> None:
    """300 slowloris clients, half of them stuck in the head, half in the body: the defaults."""
    limits = ListenerLimits()
    room_for(2 * 300 + 200)  # both ends of each stalled connection live in this process
    async with serving(simulator, limits) as s:
        await healthz_seconds(s.port)  # warm-up: the baseline includes pools and caches
        baseline = open_fds()
        half_head = f"POST {s.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le".encode()
        half_body = post(s.path, b'{"task_id": "', length=1000)
        stalled = []
        for i in range(300):
            reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
            writer.write(half_head if i % 2 else half_body)
            stalled.append((reader, writer))
        started = time.monotonic()
        for _ in range(3):
            assert await healthz_seconds(s.port) < 1.0
        worst = limits.head_timeout + limits.body_timeout + limits.linger + 3.0
        answers = await asyncio.wait_for(
            asyncio.gather(*(reader.read() for reader, _ in stalled)), worst
        )
        elapsed = time.monotonic() - started
        for _, writer in stalled:
            writer.close()
        # Closed by the server (EOF), by the timeouts and not at once.
        assert elapsed >= limits.head_timeout * 0.8, elapsed
        assert [status_of(a) for a in answers[1::2]] == [0] * 150  # head never finished
        assert [status_of(a) for a in answers[0::2]] == [408] * 150  # body never finished
        assert s.h.core.metrics.callbacks[("refused", "timeout")] == 150
        await until(lambda: open_fds() <= baseline, limit=5.0)
        assert await healthz_seconds(s.port) < 1.0


async def test_a_keep_alive_connection_sending_half_a_head_is_closed(
    simulator: KlingSimulator,
) -> None:
    async with serving(simulator, QUICK) as s:
        reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # keep-alive
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
            assert status_of(head) == 200
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            writer.write(b"GET /healthz HTTP/1.1\r\nHo")  # the next request never finishes
            assert await asyncio.wait_for(reader.read(), QUICK.head_timeout + 2) == b""
        finally:
            writer.close()


async def test_a_slow_but_steady_callback_is_still_served(simulator: KlingSimulator) -> None:
    async with serving(simulator, ListenerLimits(head_timeout=2.0, body_timeout=2.0)) as s:
        request = post(s.path, json.dumps(body(s.record)).encode())
        reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
        try:
            for i in range(0, len(request), len(request) // 10):
                writer.write(request[i : i + len(request) // 10])
                await asyncio.sleep(0.05)
            answer = await asyncio.wait_for(reader.read(), 5)
        finally:
            writer.close()
        assert status_of(answer) == 200 and b'"accepted"' in answer, answer


# --- the connection cap --------------------------------------------------------------------------


async def test_connections_over_the_cap_are_refused_at_once(simulator: KlingSimulator) -> None:
    limits = ListenerLimits(head_timeout=30.0, max_connections=8)
    async with serving(simulator, limits) as s:
        held = []
        for _ in range(limits.max_connections):  # idle keep-alive connections, one request each
            reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert status_of(await reader.readuntil(b"\r\n\r\n")) == 200
            held.append((reader, writer))
        # One more is told so before it sends a byte, and closed.
        reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
        try:
            answer = await asyncio.wait_for(reader.read(), 1.0)
        finally:
            writer.close()
        assert status_of(answer) == 503 and b"too many connections" in answer, answer
        held.pop()[1].close()  # one slot frees up: served again

        for _ in range(40):  # the server sees the close a moment later
            if (answered := (await exchange(s.port, HEALTHZ, limit=2))[0]) == 200:
                break
            await asyncio.sleep(0.05)
        assert answered == 200
        for _, writer in held:
            writer.close()


async def test_the_fd_limit_is_raised_to_fit_the_cap(simulator: KlingSimulator) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = MAX_CONNECTIONS + FD_RESERVE
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"the hard fd limit ({hard}) is below {needed}: nothing to raise it to")
    resource.setrlimit(resource.RLIMIT_NOFILE, (300, hard))  # a cap of 512 would not fit
    try:
        async with serving(simulator, ListenerLimits()):
            raised, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert raised == needed
