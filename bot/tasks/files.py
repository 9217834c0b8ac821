"""Where a task's files live under DATA_DIR, and their removal after the retention period.

``inputs/<id>/<label>.<ext>`` holds the prepared images with ``INPUT_STORAGE=files`` (and for
tasks stored so before; by default they are kept in the database: ``bot.tasks.inputs``);
``results/<id>/<index>.<ext>`` holds Kling's downloaded results, always here: a download and
its post happen under one claim, so a process taking a task over downloads it again. Paths
stored in the database are relative to DATA_DIR, so the directory can move.
Every write goes to a temporary name first and is renamed into place: a crash never leaves
a half-written file under the final name, and a write that fails (a full disk) removes its
temporary file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

INPUTS = "inputs"
RESULTS = "results"


class TaskFiles:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)

    def absolute(self, relative: str) -> Path:
        return self.data_dir / relative

    def input_relative(self, task_id: int, label: str, extension: str) -> str:
        return f"{INPUTS}/{task_id}/{label}.{extension}"

    def result_dir(self, task_id: int) -> Path:
        return self.data_dir / RESULTS / str(task_id)

    def relative(self, path: Path) -> str:
        return path.relative_to(self.data_dir).as_posix()

    async def save_inputs(
        self, task_id: int, images: Sequence[tuple[str, bytes, str]]
    ) -> list[str]:
        """Write ``(label, data, extension)`` images; returns their relative paths in order.
        On OSError nothing of the task's inputs is left behind: all or none are stored."""
        relative = [self.input_relative(task_id, label, ext) for label, _, ext in images]
        contents = [data for _, data, _ in images]
        files = list(zip(relative, contents, strict=True))
        try:
            await asyncio.to_thread(self._write_all, files)
        except OSError:
            await asyncio.to_thread(self.remove_task_files, task_id)
            raise
        return relative

    def read_inputs(
        self, input_files: Sequence[str], labels: Sequence[str]
    ) -> list[tuple[str, bytes]]:
        """``(label, bytes)`` of stored inputs; FileNotFoundError if they were cleaned up."""
        return [
            (label, self.absolute(path).read_bytes())
            for label, path in zip(labels, input_files, strict=True)
        ]

    def _write_all(self, files: Sequence[tuple[str, bytes]]) -> None:
        for relative, data in files:
            write_atomically(self.absolute(relative), data)

    def remove_task_files(self, task_id: int) -> int:
        """Delete a task's input and result directories; returns how many were removed."""
        removed = 0
        for top in (INPUTS, RESULTS):
            directory = self.data_dir / top / str(task_id)
            if directory.exists():
                shutil.rmtree(directory, ignore_errors=True)
                removed += 1
        return removed

    async def cleanup(self, task_ids: Sequence[int]) -> int:
        """Remove the files of the given (final, old) tasks, off the event loop."""
        return await asyncio.to_thread(
            lambda: sum(self.remove_task_files(task_id) for task_id in task_ids)
        )


def write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        temp.write_bytes(data)
        os.replace(temp, path)
    except BaseException:
        # A full disk leaves a partial file that only takes more space: remove it.
        with contextlib.suppress(OSError):
            temp.unlink(missing_ok=True)
        raise
