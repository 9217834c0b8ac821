"""The processes working on one database, the same in every store: what a heartbeat records.

Each process beats every few seconds (``bot.tasks.claims``): the beat upserts its row and, in
the same transaction, extends every live claim it holds, so a claim lives as long as its
process beats, however long the work under it runs, and lapses a lease after the last beat of a
process that died. A claim's owner is ``<process id>/<n>`` (one token per piece of work): the
claims of a process are the owners in ``claim_owner_range``, which an index on ``claim_owner``
answers without reading every task.
"""

from __future__ import annotations

from dataclasses import dataclass

# '0' is the character after '/': every "<process id>/..." sorts in [low, high).
_AFTER_SLASH = chr(ord("/") + 1)

# Rows of processes that stopped beating this long ago are removed by the next beat.
FORGET_DEAD_AFTER = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """A process sharing the database, as its last heartbeat left it (unix times)."""

    process_id: str
    role: str  # "run" or "worker"
    host: str
    pid: int
    started_at: float  # its first beat
    beat_at: float  # its last beat
    alive_until: float  # its claims hold until then unless it beats again


def claim_owner_range(process_id: str) -> tuple[str, str]:
    """``(low, high)``: the claim owners of ``process_id`` are exactly ``low <= owner < high``."""
    if "/" in process_id:
        raise ValueError(f"a process id holds no '/': {process_id!r}")
    return f"{process_id}/", f"{process_id}{_AFTER_SLASH}"
