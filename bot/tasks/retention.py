"""Retention: the files of final tasks go after RETENTION_DAYS, once each.

The rows stay (usage, history); only the input images (kept in the database, or under
``inputs/<id>``) and ``results/<id>`` are deleted, and each task is marked so that the hourly
run never selects it again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from bot.tasks.files import TaskFiles
from bot.tasks.inputs import TaskInputs
from bot.tasks.store import TaskStore

log = logging.getLogger(__name__)

CLEANUP_INTERVAL = 3600.0


class Retention:
    def __init__(
        self,
        *,
        store: TaskStore,
        files: TaskFiles,
        inputs: TaskInputs,
        days: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._files = files
        self._inputs = inputs
        self._days = days
        self.clock = clock

    async def cleanup_files(self) -> int:
        """Delete inputs and results of final tasks older than the retention period; returns
        how many went (a task's directory of results or of input files, its images kept in the
        database: one each)."""
        cutoff = self.clock() - self._days * 86400
        old = await self._store.files_due_for_removal(cutoff)
        if not old:
            return 0
        removed = await self._files.cleanup(old)
        removed += await self._inputs.remove_stored(old)
        await self._store.mark_files_removed(old)
        if removed:
            log.info("retention: removed the files and images of %d old tasks", len(old))
        return removed

    async def run(self) -> None:
        while True:
            try:
                await self.cleanup_files()
            except Exception:
                log.exception("file cleanup failed; trying again in an hour")
            await asyncio.sleep(CLEANUP_INTERVAL)
