"""Each server's settings read once and kept, for every command reads them.

Writes go through to the store and are published (``GUILD``), so every other process drops its
copy at once; a lost signal connection (``RESYNC``) drops them all. The copies are also
dropped after ``MAX_AGE`` seconds, so a missed signal cannot keep a stale one for long.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

from bot.tasks.store.protocols import GuildSettingsStore, Signals
from bot.tasks.store.signals import GUILD, RESYNC

MAX_AGE = 60.0


class CachedGuildSettings:
    """A ``GuildSettingsStore`` keeping what it read, in front of the database's."""

    def __init__(
        self,
        store: GuildSettingsStore,
        signals: Signals,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._signals = signals
        self._clock = clock
        self._kept: dict[int, tuple[float, dict[str, Any]]] = {}
        signals.subscribe(self._changed_elsewhere)

    async def get_guild_config(self, guild_id: int) -> dict[str, Any]:
        kept = self._kept.get(guild_id)
        if kept is None or self._clock() - kept[0] > MAX_AGE:
            config = await self._store.get_guild_config(guild_id)
            kept = self._kept[guild_id] = (self._clock(), config)
        return copy.deepcopy(kept[1])  # callers may change theirs

    async def set_guild_config(self, guild_id: int, config: dict[str, Any]) -> None:
        self._kept.pop(guild_id, None)
        await self._store.set_guild_config(guild_id, config)
        await self._signals.publish(GUILD, str(guild_id))

    def _changed_elsewhere(self, topic: str, key: str) -> None:
        if topic == RESYNC:
            self._kept.clear()
        elif topic == GUILD and key.isdigit():
            self._kept.pop(int(key), None)
