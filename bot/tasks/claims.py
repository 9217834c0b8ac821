"""Claims: which worker of which process acts on a task now, for what, and until when.

A claim is a conditional update in the store (``TaskStore.claim``): it succeeds only while no
live claim of another holder exists, and it lapses at ``claim_until``, so a claim held by a
process that died is taken over once its lease has run out.

Every claim is held under a token of its own, ``<process id>/<n>``: the store lets a holder
take its own claim again, so two workers of one process (a callback's completion and a poll's)
must not share one. The process keeps all its claims alive with one heartbeat
(``start_heartbeat``, every third of the shortest lease): each beat registers the process
(``ProcessRegistry.beat``) and extends every live claim it holds, in one transaction. So work
under a claim (a create, a download, a post) costs no statement of its own however long it
runs, and a process that stops beating loses its claims one lease after its last beat.

A beat that fails (the store is down) is tried again every second. Once none has been written
for a lease, this process's claims may be taken over: that is logged, and the work under way
goes on (in a single process nobody else would do it; with several, the store's conditional
transitions let only one of them finish a task). A clean stop gives every claim back
(``stop_heartbeat``); a killed process's claims lapse.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Collection

from bot.tasks.models import ClaimPurpose, TaskRecord, TaskState
from bot.tasks.store import TaskStore

log = logging.getLogger(__name__)

LEASE = 30.0  # LEASE_TIMEOUT's default: after a crash, work resumes this late
# A delivery's claim lapses sooner: after a crash mid-post, the next attempt looks for the
# earlier post in the channel's last messages only, which a busy channel scrolls past.
PURPOSE_LEASES: dict[ClaimPurpose, float] = {ClaimPurpose.DELIVER: 10.0}
BEAT_RETRY = 1.0  # seconds between tries while the heartbeat cannot be written


def new_process_id() -> str:
    return uuid.uuid4().hex


class Claims:
    """Takes, keeps and gives back claims for one process; its heartbeat keeps them alive."""

    def __init__(
        self,
        store: TaskStore,
        *,
        process_id: str,
        lease: float = LEASE,
        role: str = "run",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self.process_id = process_id
        self.lease = lease
        self.role = role
        self._clock = clock
        self._numbers = itertools.count(1)
        self._leases = {
            purpose: min(lease, PURPOSE_LEASES.get(purpose, lease)) for purpose in ClaimPurpose
        }
        self._shortest_lease = min(self._leases.values())
        self.beat_interval = self._shortest_lease / 3
        self._retry_delay = min(BEAT_RETRY, self.beat_interval)
        self._where = (socket.gethostname(), os.getpid())
        self._held: dict[str, int] = {}  # token -> task id, while a kept() block runs
        self._unreleased: dict[str, int] = {}  # token -> task id: give back at the next beat
        self._heartbeat: asyncio.Task[None] | None = None
        self._last_beat: float | None = None
        self._failing_since: float | None = None
        self._lost_reported = False

    def token(self) -> str:
        """A fresh holder name: one per piece of work."""
        return f"{self.process_id}/{next(self._numbers)}"

    def until(self) -> float:
        """When a claim taken now lapses unless the heartbeat renews it."""
        return self._clock() + self.lease

    def lease_for(self, purpose: ClaimPurpose) -> float:
        return self._leases[purpose]

    async def take(
        self,
        task_id: int,
        purpose: ClaimPurpose,
        token: str,
        *,
        states: Collection[TaskState],
        until: float | None = None,
    ) -> TaskRecord | None:
        """The fresh record if ``token`` now holds the claim, else None. It lasts the
        purpose's lease (``until``: longer), and as long as the heartbeat runs."""
        record = await self._store.claim(
            task_id,
            purpose.value,
            token,
            until=self._clock() + self.lease_for(purpose) if until is None else until,
            states=states,
            now=self._clock(),
        )
        if record is not None:
            self._unreleased.pop(token, None)  # held again: not to be given back now
        return record

    async def release(self, task_id: int, token: str) -> None:
        """Give the claim back (a no-op once a transition ended it). Never raises: a claim
        that could not be released is given back by the next beat."""
        try:
            await self._store.release_claim(task_id, token)
        except Exception as exc:
            log.warning("task %s: could not release its claim (%r); trying again", task_id, exc)
            self._unreleased[token] = task_id

    @contextlib.asynccontextmanager
    async def kept(self, task_id: int, token: str) -> AsyncIterator[None]:
        """Work on the claim while the block runs. The heartbeat keeps it: no statement here;
        the block is only remembered, to name it if the heartbeat fails for too long."""
        self._held[token] = task_id
        try:
            yield
        finally:
            self._held.pop(token, None)

    # --- the heartbeat

    async def start_heartbeat(self) -> None:
        """Register this process with a first beat, then beat in the background."""
        if self._heartbeat is None:
            await self.beat()
            self._heartbeat = asyncio.create_task(self._beat_forever(), name="heartbeat")

    async def stop_heartbeat(self, *, give_back: bool = True) -> None:
        """Stop beating; ``give_back``: a clean stop, every claim of this process released
        (False: as a killed process, its claims lapse a lease after the last beat)."""
        heartbeat, self._heartbeat = self._heartbeat, None
        if heartbeat is not None:
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)
        if not give_back:
            return
        try:
            await self._store.forget_process(self.process_id)
        except Exception as exc:
            log.warning("could not give back this process's claims (%r); they lapse", exc)

    async def beat(self) -> bool:
        """One beat: the claims not given back yet released, then the process's row and its
        claims renewed. False (and logged) if the store refused."""
        now = self._clock()
        await self._release_leftovers()
        host, pid = self._where
        try:
            await self._store.beat(
                self.process_id,
                now=now,
                until=now + self.lease,
                until_by_purpose={
                    purpose: now + lease
                    for purpose, lease in self._leases.items()
                    if lease != self.lease
                },
                role=self.role,
                host=host,
                pid=pid,
            )
        except Exception as exc:
            self._beat_failed(now, exc)
            return False
        if self._failing_since is not None:
            log.warning("heartbeat written again, after %.0f s", now - self._failing_since)
        self._last_beat, self._failing_since, self._lost_reported = now, None, False
        return True

    async def _beat_forever(self) -> None:
        while True:
            ok = await self.beat()
            await asyncio.sleep(self.beat_interval if ok else self._retry_delay)

    async def _release_leftovers(self) -> None:
        """The claims whose release failed: the beat would keep them alive for nobody."""
        for token, task_id in list(self._unreleased.items()):
            try:
                await self._store.release_claim(task_id, token)
            except Exception:
                continue  # the store still refuses: next beat
            del self._unreleased[token]

    def _beat_failed(self, now: float, exc: Exception) -> None:
        """Logged once when it starts failing, and once more when the claims have lapsed."""
        if self._failing_since is None:
            self._failing_since = now
            log.warning("heartbeat not written (%r); trying again every %.1f s",
                        exc, self._retry_delay)  # fmt: skip
        since = self._last_beat if self._last_beat is not None else self._failing_since
        silent = now - since
        if silent < self._shortest_lease or self._lost_reported:
            return
        self._lost_reported = True
        log.warning(
            "no heartbeat written for %.0f s (%r): the claims of this process have lapsed and "
            "another process may take them over; the work under way on tasks %s goes on",
            silent, exc, sorted(set(self._held.values())) or "none",
        )  # fmt: skip
