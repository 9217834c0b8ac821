"""A small round-robin HTTP proxy: the load balancer in front of several bot processes.

Kling's callbacks go to ``PUBLIC_BASE_URL``, which in a scaled-out deployment is a load
balancer spreading them over every process's webhook listener. This stands in for it in tests:
each request goes to the next backend in turn; a backend that refuses the connection (its
process is dead or restarting) is skipped for the next one, as a balancer's health check would
do, and only when every backend refuses does the caller get a 502.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence

import aiohttp
from aiohttp import web

# Hop-by-hop headers (RFC 9110 7.6.1) and those aiohttp sets itself.
_NOT_FORWARDED = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}


class RoundRobin:
    """``async with RoundRobin(["http://127.0.0.1:8081", ...]) as lb``: ``lb.url`` takes the
    requests; ``lb.served`` counts the requests each backend answered."""

    def __init__(self, backends: Sequence[str], *, timeout: float = 10.0) -> None:
        if not backends:
            raise ValueError("a balancer needs at least one backend")
        self.backends = list(backends)
        self.served: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self._turns = itertools.cycle(range(len(self.backends)))
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> RoundRobin:
        self._session = aiohttp.ClientSession(timeout=self._timeout, auto_decompress=False)
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _NOT_FORWARDED}
        first = next(self._turns)
        for offset in range(len(self.backends)):
            backend = self.backends[(first + offset) % len(self.backends)]
            try:
                async with self._session.request(
                    request.method,
                    backend + request.rel_url.path_qs,
                    headers=headers,
                    data=body,
                    allow_redirects=False,
                ) as answer:
                    payload = await answer.read()
            except aiohttp.ClientConnectionError:
                self.refused[backend] += 1
                continue  # down: the next one, as a health-checked balancer would
            self.served[backend] += 1
            kept = {k: v for k, v in answer.headers.items() if k.lower() not in _NOT_FORWARDED}
            return web.Response(status=answer.status, body=payload, headers=kept)
        return web.Response(status=502, text="no backend answered")
