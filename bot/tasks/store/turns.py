"""The order of admission, the same in every store: members take turns.

Each admission sends its member to the back, so one task per member per round. The store keeps,
per kind and member, the turn number of the member's last admission; a store's query supplies
each queued task with its member's turn, and ``fair_order`` lays out the line.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from bot.tasks.models import QueuedTask


def fair_order(entries: Iterable[tuple[int, int | None, QueuedTask]]) -> list[QueuedTask]:
    """``(user_id, turn, task)`` in id order per member -> the order of admission: each
    admission sends its member to the back, so one task per member per round, the members in
    turn order (never admitted first, then the oldest turn; ties by their oldest task)."""
    lines: dict[int, list[QueuedTask]] = defaultdict(list)
    turns: dict[int, int | None] = {}
    for user_id, turn, task in entries:
        lines[user_id].append(task)
        turns[user_id] = turn
    users = sorted(lines, key=lambda u: (turns[u] is not None, turns[u] or 0, lines[u][0].id))
    order: list[QueuedTask] = []
    depth = 0
    while users:
        users = [user for user in users if depth < len(lines[user])]
        order.extend(lines[user][depth] for user in users)
        depth += 1
    return order
