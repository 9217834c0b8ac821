"""A task's prepared input images: where they are kept, behind one small interface.

"Again", "Animate" (its video's images) and a create after a restart or a takeover by another
process read them back. ``INPUT_STORAGE`` says where new ones go: ``database`` (the default:
the store's ``InputStore``, so a process on any machine reads them) or ``files`` (under
DATA_DIR, ``TaskFiles``: one machine only). An S3-compatible object store would be a third
place behind this interface; it is not built.

The task's ``input_files`` say where its images are, one reference per image in label order:
``db:<id>/<label>.<ext>`` for the database, ``inputs/<id>/<label>.<ext>`` (relative to DATA_DIR)
for files. Reading follows the references, not the setting, so tasks stored as files before
(or before the setting changed) are still read. Either way a save stores all of a task's
images or none, and raises OSError when it cannot (``InputsNotSaved``, or the disk's own).
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence
from typing import Literal

from bot.tasks.files import TaskFiles
from bot.tasks.models import TaskRecord
from bot.tasks.store import InputStore

DATABASE_REF = "db:"

Storage = Literal["database", "files"]


class InputsUnavailable(RuntimeError):
    """The database did not give a task's images (a timeout, a lost connection): they may well
    be there, so this is no OSError, which would mean gone: the caller tries again later."""


def database_ref(task_id: int, label: str, extension: str) -> str:
    return f"{DATABASE_REF}{task_id}/{label}.{extension}"


class TaskInputs:
    """Saves new images where ``storage`` says; reads and removes them wherever they are."""

    def __init__(self, *, files: TaskFiles, store: InputStore | None, storage: Storage) -> None:
        if storage == "database" and store is None:
            raise ValueError("INPUT_STORAGE=database needs a store that keeps input images")
        self._files = files
        self._store = store
        self._storage = storage

    async def save(self, task_id: int, images: Sequence[tuple[str, bytes, str]]) -> list[str]:
        """Store ``(label, data, extension)`` images; their references, in order. OSError
        when they could not be stored (nothing of them is kept)."""
        if self._store is None or self._storage == "files":
            return await self._files.save_inputs(task_id, images)
        await self._store.save_inputs(task_id, images)
        return [database_ref(task_id, label, extension) for label, _, extension in images]

    async def read(self, record: TaskRecord) -> list[tuple[str, bytes]]:
        """``(label, bytes)`` of the task's images; FileNotFoundError when they are gone
        (retention removed them). A database that does not answer raises ``InputsUnavailable``
        or its own error, never an OSError: the images may well be there."""
        refs, labels = record.input_files, record.input_labels
        if not any(ref.startswith(DATABASE_REF) for ref in refs):
            return await asyncio.to_thread(self._files.read_inputs, refs, labels)
        stored = [] if self._store is None else await _read_stored(self._store, record.id)
        if [label for label, _ in stored] != list(labels):
            raise FileNotFoundError(f"the input images of task {record.id} are not stored")
        return stored

    async def remove_stored(self, task_ids: Collection[int]) -> int:
        """Delete the images the database keeps for these tasks (retention; files go with the
        task's directories, ``TaskFiles.cleanup``); how many tasks had some."""
        if self._store is None or not task_ids:
            return 0
        return await self._store.remove_inputs(task_ids)


async def _read_stored(store: InputStore, task_id: int) -> list[tuple[str, bytes]]:
    try:
        return await store.read_inputs(task_id)
    except OSError as exc:  # TimeoutError and a lost connection are OSErrors too
        raise InputsUnavailable(f"the database did not give task {task_id}'s images") from exc
