"""Each server's settings on PostgreSQL: one JSON object per guild in ``guild_config``.

It shares the task store's pool: one database, whichever process writes.
"""

from __future__ import annotations

import json
from typing import Any

from bot.tasks.store.codec import dumps
from bot.tasks.store.pg import PgDatabase


class PgGuildSettingsStore:
    """``GuildSettingsStore`` over an open ``PgDatabase`` (the task store's)."""

    def __init__(self, database: PgDatabase) -> None:
        self._database = database

    async def get_guild_config(self, guild_id: int) -> dict[str, Any]:
        rows = await self._database.fetch(
            "SELECT config FROM guild_config WHERE guild_id = $1", guild_id
        )
        return json.loads(rows[0][0]) if rows else {}

    async def set_guild_config(self, guild_id: int, config: dict[str, Any]) -> None:
        """Replace the guild's settings (insert or update, in one statement)."""
        await self._database.execute(
            "INSERT INTO guild_config (guild_id, config, updated_at) VALUES ($1, $2, $3) "
            "ON CONFLICT (guild_id) DO UPDATE SET config = excluded.config, "
            "updated_at = excluded.updated_at",
            guild_id,
            dumps(config),
            self._database.now(),
        )
