"""Result downloads against raw loopback servers: the timeout bounds a stall, not a transfer
that keeps moving, and an advertised size over the cap is refused before any body is read."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from bot.tasks.results import DownloadError, ResultDownloader

Scenario = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """A loopback HTTP server that answers every request with ``scenario``, byte by byte."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.hits = 0
        self.closed_by_client = 0  # connections the client hung up on
        self._server: asyncio.Server | None = None
        self._open: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        # Hang up on what is still open, so every handler ends before the loop does.
        for writer in self._open.values():
            writer.close()
        await asyncio.gather(*self._open, return_exceptions=True)

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/result.png"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.hits += 1
        handler = asyncio.current_task()
        assert handler is not None
        self._open[handler] = writer
        try:
            await reader.readuntil(b"\r\n\r\n")
            await self.scenario(reader, writer)
            # Whatever was sent: wait (bounded) for the client to hang up.
            if await asyncio.wait_for(reader.read(), 10) == b"":
                self.closed_by_client += 1
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            del self._open[handler]


def headers(length: int) -> bytes:
    return (
        f"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def downloader(
    server: RawServer, *, max_bytes: int = 1 << 20, timeout: float = 0.3, attempts: int = 2
) -> ResultDownloader:
    """A downloader for which ``server`` is Kling's own (loopback) origin."""
    return ResultDownloader(
        max_bytes=max_bytes,
        timeout=timeout,
        trusted_origin=server.url,
        attempts=attempts,
        base_delay=0.01,
    )


async def test_a_server_stalling_mid_body_times_out_and_is_retried(tmp_path: Path) -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(headers(10_000) + b"x" * 1_000)  # a tenth of the file, then nothing
        await writer.drain()

    async with RawServer(stall) as server:
        with pytest.raises(DownloadError, match="timed out") as caught:
            await downloader(server, attempts=2).download_all([server.url], tmp_path / "1")
        assert not caught.value.final  # the tracker tries again later, too
        assert server.hits == 2  # retried here once
        assert list((tmp_path / "1").iterdir()) == []  # no partial file left


async def test_a_slow_transfer_that_keeps_moving_outlasts_the_timeout(tmp_path: Path) -> None:
    """Ten pieces 0.1 s apart: 1 s in all, over three times the 0.3 s timeout, and fine."""

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(headers(1_000))
        for _ in range(10):
            writer.write(b"y" * 100)
            await writer.drain()
            await asyncio.sleep(0.1)

    async with RawServer(trickle) as server:
        started = time.monotonic()
        paths = await downloader(server).download_all([server.url], tmp_path / "2")
        assert time.monotonic() - started > 0.9
        assert paths[0].read_bytes() == b"y" * 1_000
        assert server.hits == 1


async def test_an_advertised_size_over_the_cap_is_refused_unread(tmp_path: Path) -> None:
    """Headers only, never a body: refusing fast (well inside the 5 s timeout) and hanging up
    shows the refusal came from Content-Length alone, before reading anything."""

    async def huge(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(headers(500 * 1024 * 1024))
        await writer.drain()

    async with RawServer(huge) as server:
        started = time.monotonic()
        with pytest.raises(DownloadError, match="larger than") as caught:
            await downloader(server, max_bytes=4096, timeout=5).download_all(
                [server.url], tmp_path / "3"
            )
        assert time.monotonic() - started < 2.0
        assert caught.value.final and server.hits == 1  # not retried
        await asyncio.sleep(0.1)
        assert server.closed_by_client == 1  # the connection was dropped, not drained
        assert list((tmp_path / "3").iterdir()) == []
