"""What the rest of the bot may ask of storage, whatever database is behind it.

``TaskReader`` is the read-only part the Discord side gets; ``TaskStore`` adds the writes and
the coordination the task core needs; ``GuildSettingsStore`` keeps each server's settings;
``InputStore`` each task's prepared input images (``INPUT_STORAGE=database``). Every
implementation runs the contract suite (tests/unit/store/test_contract.py).

Coordination lives here, not in one process's memory: every piece of it is a row or a
conditional update, so several processes can share the work. A claim names an ``owner``
(``<process id>/<n>``) and runs ``until`` a unix time; a claim whose time has passed is free to
take, so the work of a process that died is taken over. ``ProcessRegistry`` (part of
``TaskStore``) keeps a claim alive while its process beats (``processes``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from bot.kling.models import TaskKind
from bot.tasks.models import (
    ClaimPurpose,
    Origin,
    QueueSnapshot,
    TaskRecord,
    TaskState,
    UsageRow,
)
from bot.tasks.store.processes import ProcessInfo


class DuplicateTaskError(Exception):
    """A task with this external_task_id or callback_token exists already (any backend)."""


class DatabaseFileChanged(RuntimeError):
    """The database file was deleted or replaced under the open store: no new task is taken."""


class InputsNotSaved(OSError):
    """A task's input images could not be stored (the database full, locked or unreachable):
    none of them were kept. An OSError, as a full disk is when they are files."""

    def __init__(self, task_id: int, cause: BaseException) -> None:
        super().__init__(f"the input images of task {task_id} were not stored: {cause!r}")
        self.task_id = task_id


@runtime_checkable
class TaskReader(Protocol):
    """Reading tasks: what the Discord side and the CLI need."""

    async def get(self, task_id: int) -> TaskRecord | None: ...
    async def find(self, ref: str) -> TaskRecord | None: ...

    async def in_states(
        self, states: Collection[TaskState], *, kind: TaskKind | None = None
    ) -> list[TaskRecord]: ...

    async def list_tasks(
        self,
        *,
        guild_id: int | None = None,
        user_id: int | None = None,
        states: Collection[TaskState] | None = None,
        limit: int = 20,
        offset: int = 0,
        since: float | None = None,
    ) -> list[TaskRecord]: ...

    async def count_tasks(
        self,
        *,
        guild_id: int | None = None,
        user_id: int | None = None,
        states: Collection[TaskState] | None = None,
        since: float | None = None,
    ) -> int: ...

    async def usage(
        self, *, guild_id: int | None, since: float, user_id: int | None = None
    ) -> list[UsageRow]: ...


@runtime_checkable
class ProcessRegistry(Protocol):
    """The processes sharing the database: the heartbeat that keeps their claims alive."""

    async def beat(
        self,
        process_id: str,
        *,
        now: float,
        until: float,
        role: str,
        host: str,
        pid: int,
        until_by_purpose: Mapping[ClaimPurpose, float] | None = None,
    ) -> int:
        """In one transaction: record that the process (``role``, ``host``, ``pid``) is
        alive at ``now`` until ``until`` (registered by its first beat), and extend each live
        claim it holds (owner ``<process_id>/...``) to at least ``until``, or to the time
        ``until_by_purpose`` gives its purpose; a claim already held longer keeps its time.
        Returns the number of claims extended."""
        ...

    async def processes(self, now: float) -> list[ProcessInfo]:
        """The processes alive at ``now`` (their last beat holds beyond it), oldest first."""
        ...

    async def forget_process(self, process_id: str) -> None:
        """A clean stop: the process's row removed and every claim it holds given back."""
        ...


@runtime_checkable
class TaskStore(TaskReader, ProcessRegistry, Protocol):
    """Tasks: the rows, their state changes, and the coordination of the work on them."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def ping(self) -> bool: ...

    async def create(
        self,
        *,
        kind: TaskKind,
        provider: str,
        simulated: bool,
        external_task_id: str,
        params: dict[str, Any],
        input_labels: list[str],
        slots: int,
        origin: Origin,
        callback_token: str | None,
    ) -> TaskRecord: ...

    async def set_inputs(self, task_id: int, input_files: list[str]) -> None: ...
    async def by_external_id(self, external_task_id: str) -> TaskRecord | None: ...
    async def by_kling_id(self, kling_task_id: str) -> TaskRecord | None: ...
    async def by_callback_token(self, token: str) -> TaskRecord | None: ...

    async def transition(
        self, task_id: int, from_states: Collection[TaskState], to: TaskState, **fields: Any
    ) -> bool:
        """Move the task to ``to`` if it is in one of ``from_states``; True if this call won.
        A claim whose purpose does not live in ``to`` (``CLAIM_STATES``) ends with it."""
        ...

    async def update(self, task_id: int, **fields: Any) -> None: ...

    async def update_if_state(
        self, task_id: int, states: Collection[TaskState], **fields: Any
    ) -> bool: ...

    async def counts_by_state(self) -> dict[TaskState, int]: ...
    async def files_due_for_removal(self, ts: float) -> list[int]: ...
    async def mark_files_removed(self, task_ids: Collection[int]) -> None: ...
    async def set_posted_message(self, task_id: int, message_id: int) -> None: ...

    # --- coordination

    async def claim(
        self,
        task_id: int,
        purpose: ClaimPurpose | str,
        owner: str,
        *,
        until: float,
        states: Collection[TaskState],
        now: float,
    ) -> TaskRecord | None:
        """Take the task for ``purpose`` until ``until`` if it is in ``states`` (which must be
        among the purpose's ``CLAIM_STATES``) and no other owner's claim is live; the fresh
        record, or None. The owner of a live claim may claim again (it renews it)."""
        ...

    async def renew_claim(self, task_id: int, owner: str, *, until: float) -> bool:
        """Extend ``owner``'s claim; False if the task is no longer claimed by it."""
        ...

    async def release_claim(self, task_id: int, owner: str) -> None:
        """End ``owner``'s claim (nothing happens if another owner holds it now)."""
        ...

    async def admit_next(
        self,
        kind: TaskKind,
        *,
        limit: int | None,
        owner: str,
        now: float,
        until: float,
        cap: int | None = None,
    ) -> TaskRecord | None:
        """One atomic admission step: claim ("admit") and return the next queued task of
        ``kind`` that may be created at Kling now, or None.

        Slots in use (``slots_in_use``) plus the task's slots must fit within ``limit`` and
        ``cap`` (None: no bound). Members take turns: the member whose last admission of this
        kind is the oldest goes first (never admitted: first of all, ties by their oldest
        queued task); each member's tasks go in id order. A head still backing off
        (``not_before > now``) passes its turn without using it; when the head whose turn it
        is does not fit, nobody goes (a big task is not overtaken by small ones). Queued
        tasks under a live claim are not in line. Cancel-requested tasks are returned too."""
        ...

    async def queue_snapshot(self, kind: TaskKind, *, now: float) -> QueueSnapshot:
        """The tasks in line for ``kind``, in the order ``admit_next`` would take them if
        nothing else happened (backoffs and slots aside), with the queue's totals and the
        slots in use: for queue positions, without reading whole rows."""
        ...

    async def slots_in_use(self, kind: TaskKind, now: float) -> int:
        """Slots of ``kind`` held: tasks running at Kling (submitted or processing, and Kling
        has not said they ended) and queued tasks under a live "admit" claim."""
        ...

    async def claim_due_polls(
        self, kind: TaskKind, *, now: float, until: float, owner: str, limit: int
    ) -> list[TaskRecord]:
        """Running tasks of ``kind`` (with a Kling id) whose ``next_check_at <= now`` and that
        no other owner holds a live claim on, earliest first, at most ``limit``; claimed by
        moving their ``next_check_at`` to ``until`` (a poller that dies leaves them due again
        then). Returned as they are after the move."""
        ...

    async def next_poll_at(self) -> float | None:
        """The earliest ``next_check_at`` of a running task with a Kling id, or None."""
        ...


@runtime_checkable
class GuildSettingsStore(Protocol):
    """Each server's settings, one JSON object per guild (bot.discord.guild_config reads it)."""

    async def get_guild_config(self, guild_id: int) -> dict[str, Any]:
        """The guild's settings, ``{}`` if none are stored; a fresh dict each call."""
        ...

    async def set_guild_config(self, guild_id: int, config: dict[str, Any]) -> None:
        """Replace the guild's settings (insert or update)."""
        ...


@runtime_checkable
class InputStore(Protocol):
    """Each task's prepared input images, kept in the database so that any process reads them
    (tests/unit/store/test_inputs_contract.py)."""

    async def save_inputs(self, task_id: int, images: Sequence[tuple[str, bytes, str]]) -> None:
        """Store the task's ``(label, data, extension)`` images, in their order: all of them,
        or none and ``InputsNotSaved``. A task has one save (a second is refused)."""
        ...

    async def read_inputs(self, task_id: int) -> list[tuple[str, bytes]]:
        """``(label, data)`` of the task's images in their order; ``[]`` if none are stored."""
        ...

    async def remove_inputs(self, task_ids: Collection[int]) -> int:
        """Delete the images of these tasks; returns how many of the tasks had some."""
        ...


@runtime_checkable
class Signals(Protocol):
    """Telling the other processes on the database that something changed (``signals``)."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...

    def subscribe(self, handler: Callable[[str, str], None]) -> None:
        """``handler(topic, key)`` runs on the event loop for each signal of another process."""
        ...

    async def publish(self, topic: str, key: str = "") -> None:
        """Tell every other process; it may not hear it (the database stays the truth)."""
        ...
