"""The id mark: a small file beside the database holding the highest task id handed out.

Task ids are shown to members and sit in buttons ("again:12"), so none is handed out twice, not
even by a new database after the file was deleted or a backup restored. The store reserves
``ID_BLOCK`` ids per write of the mark and starts new ids above it.
"""

from __future__ import annotations

import os
from pathlib import Path

# Task ids reserved per write of the id mark file: one small write per this many new tasks. A
# process that stops without closing the store skips at most this many ids at the next start.
ID_BLOCK = 1_000


def id_mark_path(db_path: Path) -> Path:
    """The file holding the highest task id that may have been handed out for ``db_path``.

    Beside the database but not named after its file (``kling-bot.last-task-id`` for
    ``kling-bot.db``), so that ``rm kling-bot.db*`` leaves it in place.
    """
    return db_path.with_name(f"{db_path.stem}.last-task-id")


def read_id_mark(path: Path) -> int:
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        return 0
    try:
        return int(text.strip())
    except ValueError:
        # Guessing could hand out an id twice: better not to start.
        raise RuntimeError(
            f"{path} should hold one number, the highest task id the bot has handed out, "
            f"but holds {text.strip()[:40]!r}; write that number into it (or delete the file "
            "if the database beside it holds every task ever created) and start again"
        ) from None


def write_id_mark(path: Path, value: int) -> None:
    """Replace the mark atomically: a reader sees the old number or the new one, never half."""
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("w", encoding="ascii") as file:
        file.write(f"{value}\n")
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def file_identity(path: Path) -> tuple[int, int]:
    info = os.stat(path)
    return info.st_dev, info.st_ino
