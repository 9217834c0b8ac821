"""One process per SQLite database: an exclusive lock on a file beside it, held while the
read-write store is open.

SQLite would let several processes write the file, but a second bot process on it would
duplicate the coordination the store keeps for one (admission, polls, the id mark); several
processes need PostgreSQL. So the store takes ``flock(LOCK_EX | LOCK_NB)`` on ``<name>.lock``
(``kling-bot.lock`` for ``kling-bot.db``) before it connects, and refuses to open when another
holds it. The OS drops the lock when its holder ends however it ends, so a SIGKILL leaves no
stale lock (the file itself may stay: only the lock counts). The lock belongs to the open
file, so a second store in the same process is refused too. Readers (``task_rows``) take none.

The file is named after the database's stem, not its full name, so that ``rm kling-bot.db*``
under a running bot leaves it in place: a new process could otherwise start beside the old one.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

from bot.config import ConfigError
from bot.text import t

log = logging.getLogger(__name__)


def lock_path(db_path: Path) -> Path:
    return db_path.with_name(f"{db_path.stem}.lock")


class OneProcessLock:
    """The lock for one database file; ``acquire`` raises ``ConfigError`` if another holds it."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self.path = lock_path(db_path)
        self._fd: int | None = None

    def acquire(self) -> None:
        if self._fd is not None:
            return
        # No O_TRUNC: the holder's pid must stay readable until this process holds the lock.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _write_pid(fd)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise ConfigError(
                t("store.sqlite.one_process", pid=holder or "unknown", path=self.db_path)
            ) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        log.debug("holding %s for process %d", self.path, os.getpid())

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the file drops the lock


def _read_pid(fd: int) -> int | None:
    """The holder's pid, or None while it has not written it yet (it has just taken the lock)."""
    text = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip()
    return int(text) if text.isdigit() else None


def _write_pid(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
