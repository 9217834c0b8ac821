"""``kling-bot migrate-db``: a SQLite database copied into an empty PostgreSQL one.

The copy itself is the store's (``bot.tasks.store.copy``); this prints what was copied. A
PostgreSQL URL may hold a password: only its ``HOST:PORT/DBNAME`` is printed.
"""

from __future__ import annotations

from bot.cli.errors import EXIT_OK
from bot.tasks.store.copy import copy_database
from bot.tasks.store.urls import postgres_target
from bot.text import t


async def migrate_database(source_url: str, target_url: str) -> int:
    copied = await copy_database(source_url, target_url)
    print(
        t(
            "cli.migrate.done",
            tasks=t("count.task", count=copied.rows.get("tasks", 0)),
            servers=t("count.server", count=copied.rows.get("guild_config", 0)),
            target=postgres_target(target_url),
            next_id=copied.next_id,
        )
    )
    return EXIT_OK
