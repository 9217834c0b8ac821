"""Each server's settings on SQLite: one JSON object per guild in ``guild_config``.

It shares the task store's connection (and its write lock): one database file, one writer.
"""

from __future__ import annotations

import json
from typing import Any

from bot.tasks.store.codec import dumps
from bot.tasks.store.sqlite import SqliteDatabase


class SqliteGuildSettingsStore:
    """``GuildSettingsStore`` over an open ``SqliteDatabase`` (the task store's)."""

    def __init__(self, database: SqliteDatabase) -> None:
        self._database = database

    async def get_guild_config(self, guild_id: int) -> dict[str, Any]:
        rows = await self._database.fetch(
            "SELECT config FROM guild_config WHERE guild_id = ?", (guild_id,)
        )
        return json.loads(rows[0][0]) if rows else {}

    async def set_guild_config(self, guild_id: int, config: dict[str, Any]) -> None:
        """Replace the guild's settings (insert or update)."""
        await self._database.write(
            "INSERT INTO guild_config (guild_id, config, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (guild_id) DO UPDATE SET config = excluded.config, "
            "updated_at = excluded.updated_at",
            (guild_id, dumps(config), self._database.now()),
        )
