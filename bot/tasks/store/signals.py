"""Telling the other processes on the same database that something changed.

A process that changes what another one caches or waits on publishes a signal: ``QUEUE`` (the
admission queue of a kind changed: positions move, and it may be another process's turn) and
``GUILD`` (a server's settings changed: drop the cached copy). Task state needs none: the
process that moves a task edits its status message itself (by its stored ids). ``RESYNC`` is
not published: a listener delivers it after it lost its connection and got it back, since
anything may have been missed meanwhile.

Signals only make things happen sooner: the truth is the database, and every cache also
refreshes on its own clock. A process does not hear its own signals (it acted already).
With SQLite there is only one process (``LocalSignals``: nothing to tell); PostgreSQL uses
LISTEN/NOTIFY (``pg_signals``).
"""

from __future__ import annotations

from collections.abc import Callable

QUEUE = "queue"
GUILD = "guild"
RESYNC = "resync"

Handler = Callable[[str, str], None]  # (topic, key), called on the event loop


class LocalSignals:
    """One process alone on its database: there is nobody else to tell or to hear from."""

    def __init__(self) -> None:
        self.handlers: list[Handler] = []

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def subscribe(self, handler: Handler) -> None:
        self.handlers.append(handler)

    async def publish(self, topic: str, key: str = "") -> None:
        pass
