"""Claims: which worker of which process acts on a task now, for what, and until when.

A claim is a conditional update in the store (``TaskStore.claim``): it succeeds only while no
live claim of another holder exists, and it lapses at ``claim_until``, so a claim held by a
process that died is taken over once its lease has run out. Long work (a create, a download, a
post) renews its claim while it runs.

Every claim is held under a token of its own, ``<process id>/<n>``: the store lets a holder
take its own claim again, so two workers of one process (a callback's completion and a poll's)
must not share one.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Collection

from bot.tasks.models import ClaimPurpose, TaskRecord, TaskState
from bot.tasks.store import TaskStore

log = logging.getLogger(__name__)

LEASE = 30.0  # seconds a claim lives unless renewed; after a crash, work resumes this late


def new_process_id() -> str:
    return uuid.uuid4().hex


class Claims:
    """Takes, keeps and gives back claims for one process."""

    def __init__(
        self,
        store: TaskStore,
        *,
        process_id: str,
        lease: float = LEASE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self.process_id = process_id
        self.lease = lease
        self._clock = clock
        self._numbers = itertools.count(1)

    def token(self) -> str:
        """A fresh holder name: one per piece of work."""
        return f"{self.process_id}/{next(self._numbers)}"

    def until(self, lease: float | None = None) -> float:
        return self._clock() + (self.lease if lease is None else lease)

    async def take(
        self,
        task_id: int,
        purpose: ClaimPurpose,
        token: str,
        *,
        states: Collection[TaskState],
        until: float | None = None,
    ) -> TaskRecord | None:
        """The fresh record if ``token`` now holds the claim, else None."""
        return await self._store.claim(
            task_id,
            purpose.value,
            token,
            until=self.until() if until is None else until,
            states=states,
            now=self._clock(),
        )

    async def release(self, task_id: int, token: str) -> None:
        """Give the claim back (a no-op once a transition ended it). Never raises: a claim
        that could not be released lapses on its own."""
        try:
            await self._store.release_claim(task_id, token)
        except Exception as exc:
            log.warning("task %s: could not release its claim (%r); it lapses", task_id, exc)

    @contextlib.asynccontextmanager
    async def kept(
        self, task_id: int, token: str, *, lease: float | None = None
    ) -> AsyncIterator[None]:
        """Renew the claim (to ``lease`` seconds ahead) every third of it while the block runs."""
        lease = self.lease if lease is None else lease
        renewer = asyncio.create_task(self._renew(task_id, token, lease), name=f"claim-{task_id}")
        try:
            yield
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer

    async def _renew(self, task_id: int, token: str, lease: float) -> None:
        while True:
            await asyncio.sleep(lease / 3)
            try:
                if not await self._store.renew_claim(task_id, token, until=self.until(lease)):
                    log.warning("task %s: its claim was lost while working on it", task_id)
                    return
            except Exception as exc:
                log.warning("task %s: could not renew its claim (%r)", task_id, exc)
