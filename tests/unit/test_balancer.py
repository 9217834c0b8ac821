"""The round-robin proxy the scale-out suites put in front of several webhook listeners."""

from __future__ import annotations

import aiohttp
from aiohttp import web
from aiohttp.test_utils import unused_port

from testing.balancer import RoundRobin


async def _backend(name: str) -> tuple[web.AppRunner, str]:
    async def answer(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response(
            {
                "name": name,
                "path": request.path_qs,
                "body": body.decode(),
                "sig": request.headers.get("X-Sig"),
            }
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def test_requests_take_turns_and_a_dead_backend_is_skipped() -> None:
    one, one_url = await _backend("one")
    two, two_url = await _backend("two")
    dead_url = f"http://127.0.0.1:{unused_port()}"
    try:
        async with RoundRobin([one_url, dead_url, two_url]) as lb, aiohttp.ClientSession() as s:
            names = []
            for n in range(6):
                async with s.post(
                    f"{lb.url}/kling/callback/tok?n={n}", data=b"{}", headers={"X-Sig": "v1"}
                ) as response:
                    assert response.status == 200
                    got = await response.json()
                    assert (got["path"], got["body"], got["sig"]) == (
                        f"/kling/callback/tok?n={n}",
                        "{}",
                        "v1",
                    )
                    names.append(got["name"])
            # one, (dead ->) two, two, one, (dead ->) two, two
            assert names == ["one", "two", "two", "one", "two", "two"]
            assert lb.refused[dead_url] == 2 and lb.served[one_url] == 2
    finally:
        await one.cleanup()
        await two.cleanup()


async def test_every_backend_down_is_a_502() -> None:
    async with RoundRobin([f"http://127.0.0.1:{unused_port()}"]) as lb:
        async with aiohttp.ClientSession() as s, s.get(lb.url + "/healthz") as response:
            assert response.status == 502
