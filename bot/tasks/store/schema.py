"""The schema's versions: numbered SQL files, applied in order, each exactly once.

``migrations/NNNN_name.sql`` brings a SQLite database from version ``NNNN - 1`` to ``NNNN``;
``PRAGMA user_version`` holds the number of files applied. PostgreSQL has its own numbered
files in ``migrations/postgres/`` (``POSTGRES_MIGRATIONS``), applied by ``pg.migrate`` and
counted in its ``schema_migrations`` table. Add a file with the next number; never edit a
released one (databases in use ran it as it was). The files ship in the package
(``package-data`` in pyproject.toml) and are read with importlib.resources, so an installed bot
finds them too.
"""

from __future__ import annotations

import logging
import re
import sqlite3
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import aiosqlite

log = logging.getLogger(__name__)

_FILE_NAME = re.compile(r"(\d{4})_[a-z0-9_]+\.sql")


def load_migrations(*folders: str) -> list[str]:
    """The scripts of ``migrations/`` (or of its subfolder ``folders``, e.g. ``"postgres"``),
    in version order; their numbers must run 1, 2, 3..."""
    folder = resources.files(__package__).joinpath("migrations", *folders)
    found: dict[int, str] = {}
    for entry in folder.iterdir():
        match = _FILE_NAME.fullmatch(entry.name)
        if match is not None:
            found[int(match.group(1))] = entry.read_text(encoding="utf-8")
    numbers = sorted(found)
    if numbers != list(range(1, len(numbers) + 1)):
        raise RuntimeError(f"the store's migration files are not numbered 1..n: {numbers}")
    return [found[number] for number in numbers]


# Read at call time by migrate(), so a test can add a script or run an older set.
MIGRATIONS: list[str] = load_migrations()
POSTGRES_MIGRATIONS: list[str] = load_migrations("postgres")


async def migrate(db: aiosqlite.Connection, path: Path) -> None:
    """Apply the scripts the database has not run yet, all in one transaction."""
    migrations = MIGRATIONS
    # IMMEDIATE takes the write lock before reading the version, so two processes opening a
    # fresh file at once cannot both apply the same migration.
    await db.execute("BEGIN IMMEDIATE")  # waits up to busy_timeout for another writer
    try:
        async with db.execute("PRAGMA user_version") as cursor:
            row = await cursor.fetchone()
        current = int(row[0]) if row else 0
        if current > len(migrations):
            raise RuntimeError(
                f"the database {path} is at schema version {current}, newer than this "
                f"bot knows ({len(migrations)}); upgrade the bot"
            )
        for version in range(current + 1, len(migrations) + 1):
            for statement in statements(migrations[version - 1]):
                await db.execute(statement)
            log.info("task store %s: applied schema migration %d", path, version)
        if current < len(migrations):
            await db.execute(f"PRAGMA user_version = {len(migrations)}")
        await db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            await db.execute("ROLLBACK")
        raise


def statements(script: str) -> Iterator[str]:
    """Split a migration script into statements (``executescript`` would commit midway)."""
    buffer = ""
    for part in script.split(";"):
        buffer += part + ";"
        # complete_statement knows about quotes, comments and trigger bodies.
        if sqlite3.complete_statement(buffer):
            statement = buffer.strip()
            if statement.strip(";").strip() and not _only_comments(statement):
                yield statement
            buffer = ""
    if buffer.strip(" \t\r\n;"):
        raise ValueError(f"incomplete SQL statement in migration: {buffer.strip()[:80]!r}")


def _only_comments(statement: str) -> bool:
    lines = [line.strip() for line in statement.rstrip(";").splitlines()]
    return all(not line or line.startswith("--") for line in lines)
