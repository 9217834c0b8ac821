"""Kling's task statuses in order, and the callbacks that arrive before the create's answer.

A status only ever moves forward (``submitted < processing < succeed | failed``): a duplicate or
a stale one arriving late is ignored. A callback can beat the answer to its own create (the task
is still ``queued`` here): it is kept in ``EarlyStatuses`` and applied once the answer is
recorded, or, when the create seemed to fail, taken as proof that Kling runs the task. It is a
cache of this process only: a status lost with it is fetched again by the poller.
"""

from __future__ import annotations

from bot.kling.models import KlingTask

RANK = {"submitted": 0, "processing": 1, "succeed": 2, "failed": 2}


def rank(status: str | None) -> int:
    return RANK.get(status or "", -1)


def is_news(task: KlingTask, known: str | None) -> bool:
    """Whether ``task``'s status is further along than the ``known`` one."""
    return rank(task.task_status.value) > rank(known)


class EarlyStatuses:
    """The latest status a callback brought for each task whose create is not answered yet."""

    def __init__(self) -> None:
        self._latest: dict[int, KlingTask] = {}

    def offer(self, task_id: int, task: KlingTask) -> bool:
        """Keep ``task`` if it is news for ``task_id``; True if it was."""
        known = self._latest.get(task_id)
        if known is not None and not is_news(task, known.task_status.value):
            return False
        self._latest[task_id] = task
        return True

    def peek(self, task_id: int) -> KlingTask | None:
        return self._latest.get(task_id)

    def take(self, task_id: int) -> KlingTask | None:
        return self._latest.pop(task_id, None)
