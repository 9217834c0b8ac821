"""The simulator's dice: which request, task or callback a configured fault hits.

Every draw comes from one ``random.Random(seed)``, so a seeded run injects the same faults.
Hanging faults sleep until the simulator closes, never longer.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable

from aiohttp import web

from kling_sim.config import Faults
from kling_sim.validation import ApiError

Roll = Callable[[float], bool]

_TRUNCATED = '{"code":0,"message":"SUCCEED","request_id":"'
_BAD_GATEWAY = "<html><body><h1>502 Bad Gateway</h1></body></html>"


class Dice:
    def __init__(self, seed: int | None) -> None:
        self._rng = random.Random(seed)
        self.closing = asyncio.Event()

    def roll(self, rate: float) -> bool:
        """Whether a fault of probability ``rate`` hits this time."""
        return rate > 0 and (rate >= 1 or self._rng.random() < rate)

    def coin(self) -> bool:
        return self._rng.random() < 0.5

    async def sleep(self, seconds: float) -> None:
        """Sleep, but wake at once when the simulator closes."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.closing.wait()


async def request_faults(faults: Faults, roll: Roll, dice: Dice) -> web.Response | None:
    """A fault for one create, query or list: raises its error, returns a malformed answer, or
    delays (slow) and returns None; None when none hits. ``roll`` draws from ``dice``."""
    if roll(faults.timeout_rate):
        await dice.sleep(faults.hang_seconds)
        raise ApiError(504, 5002, "server timeout")
    if roll(faults.rate_limit_rate):
        raise ApiError(429, 1302, "rate limit exceeded: requests are too fast")
    if roll(faults.server_error_rate):
        raise ApiError(500, 5000, "internal server error")
    if roll(faults.malformed_rate):
        text = _TRUNCATED if dice.coin() else _BAD_GATEWAY
        return web.Response(text=text, content_type="application/json")
    if roll(faults.slow_rate):
        await dice.sleep(faults.slow_seconds)
    return None
