"""The account's concurrency limits per kind, and the refusal of a task that could never fit.

Kling counts concurrency per account and kind; an image task holds ``n`` slots, a video 1, from
its creation until it ends. A task needing more slots than the limit would wait forever, so it
is refused at submit (and failed, once Kling has disowned it, if the limit was lowered while it
waited).
"""

from __future__ import annotations

from bot.config import Settings
from bot.kling.errors import KlingInvalidRequest
from bot.kling.models import TaskKind
from bot.tasks import failures
from bot.tasks.failures import Failure

Limits = dict[TaskKind, int | None]  # None: unlimited


def limits_from(settings: Settings) -> Limits:
    return {
        TaskKind.IMAGE: settings.kling_image_concurrency,
        TaskKind.VIDEO: settings.kling_video_concurrency,
    }


class SlotsExceedLimit(KlingInvalidRequest):
    """The task needs more slots than the account has: it would wait forever, so refuse it."""

    def __init__(self, kind: TaskKind, slots: int, limit: int) -> None:
        super().__init__(f"{kind} task needs {slots} slots, the limit is {limit}")
        if kind is TaskKind.IMAGE:
            self.failure = Failure(failures.TOO_MANY_IMAGES, {"slots": slots, "limit": limit})
        else:
            self.failure = Failure(failures.KIND_UNAVAILABLE, {"kind": str(kind)})
        self.user_message = self.failure.words()


def check_fits(limits: Limits, kind: TaskKind, slots: int) -> None:
    limit = limits.get(kind)
    if limit is not None and slots > limit:
        raise SlotsExceedLimit(kind, slots, limit)
