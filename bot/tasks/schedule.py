"""When a running task is next asked about: the safety-net poll's backoff.

Each task's next check is its ``next_check_at`` in the store (with ``check_count``, which keeps
the backoff across restarts). Checks back off x2 (with jitter) from ``first_delay`` up to
``max_interval``. With callbacks (``PUBLIC_BASE_URL`` set) the polls are only the safety net,
so they start late and stay rare.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from bot.config import Settings


@dataclass(frozen=True, slots=True)
class PollSchedule:
    first_delay: float
    max_interval: float
    # Due checks this close to the earliest are pulled forward into the same cycle, so tasks
    # submitted moments apart share one list call.
    batch_window: float

    def interval(self, check_count: int) -> float:
        """Seconds until the next check after ``check_count`` checks: x2 each time, +-15%."""
        base = min(self.max_interval, self.first_delay * 2.0 ** min(check_count, 30))
        return min(self.max_interval, base * random.uniform(0.85, 1.15))


def poll_schedule(settings: Settings) -> PollSchedule:
    if settings.public_base_url:
        ceiling = settings.poll_interval_with_callbacks
        first = min(ceiling, max(settings.poll_first_delay, ceiling / 2))
    else:
        ceiling, first = settings.poll_max_interval, settings.poll_first_delay
    return PollSchedule(first_delay=first, max_interval=ceiling, batch_window=min(1.0, first))
