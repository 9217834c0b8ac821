"""Waiting for what the bot does: a request, a message, a callback, a READY session.

Every change the fake records calls ``_notify``, which wakes the waiters whose check now holds."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

from testing.fake_discord.models import FakeInteraction, FakeMessage, Recorded
from testing.fake_discord.state import FakeState


class Waiting(FakeState):
    """Waits on the fake's records without polling."""

    def _notify(self) -> None:
        for check, fut in list(self._waiters):
            if fut.done():
                self._waiters.remove((check, fut))
                continue
            try:
                result = check()
            except Exception as exc:
                fut.set_exception(exc)
                continue
            if result is not None:
                fut.set_result(result)
        self._waiters = [(c, f) for c, f in self._waiters if not f.done()]

    async def _wait(self, check: Callable[[], Any], timeout: float, what: str) -> Any:  # noqa: ASYNC109
        result = check()
        if result is not None:
            return result
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        entry = (check, fut)
        self._waiters.append(entry)
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            recent = [f"{r.method} {r.path} -> {r.status}" for r in self.requests[-10:]]
            raise TimeoutError(f"timed out waiting for {what}; recent requests: {recent}") from None
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)

    async def wait_for(
        self,
        predicate: Callable[[Recorded], bool] | None = None,
        *,
        method: str | None = None,
        path: str | None = None,
        status: int | None = None,
        timeout: float = 10.0,  # noqa: ASYNC109
        since: int = 0,
    ) -> Recorded:
        """Return the first recorded request (from index ``since``) matching all filters."""
        pattern = re.compile(path) if path is not None else None

        def matches(r: Recorded) -> bool:
            if method is not None and r.method != method.upper():
                return False
            if pattern is not None and not pattern.fullmatch(r.path):
                return False
            if status is not None and r.status != status:
                return False
            return predicate is None or bool(predicate(r))

        def check() -> Recorded | None:
            return next((r for r in self.requests[since:] if matches(r)), None)

        return await self._wait(check, timeout, f"request method={method} path={path}")

    async def wait_for_message(
        self,
        channel_id: int | None = None,
        *,
        predicate: Callable[[FakeMessage], bool] | None = None,
        timeout: float = 10.0,  # noqa: ASYNC109
        since_id: int = 0,
    ) -> FakeMessage:
        """Return the first stored message (id > ``since_id``) matching the filters."""

        def check() -> FakeMessage | None:
            for m in self._messages.values():
                if m.deleted or m.id <= since_id:
                    continue
                if channel_id is not None and m.channel_id != channel_id:
                    continue
                if predicate is None or predicate(m):
                    return m
            return None

        return await self._wait(check, timeout, f"message in channel {channel_id}")

    async def wait_for_callback(
        self,
        interaction: FakeInteraction,
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> dict[str, Any]:
        """Wait until the bot acknowledged ``interaction``; returns the callback body."""

        def check() -> dict[str, Any] | None:
            if interaction.callback_type is None:
                return None
            return {"type": interaction.callback_type, "data": interaction.callback_data}

        return await self._wait(check, timeout, f"callback for interaction {interaction.id}")

    async def wait_until_ready(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        def check() -> bool | None:
            return (
                True
                if any(s.ws is not None and not s.ws.closed for s in self._sessions.values())
                else None
            )

        await self._wait(check, timeout, "a READY gateway session")
