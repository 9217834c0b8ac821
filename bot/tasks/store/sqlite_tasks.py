"""``TaskStore`` on SQLite: one task's row, made, read and changed.

State changes go through ``transition``: one conditional ``UPDATE ... WHERE id=? AND state IN
(...)``. Whoever changes the row first wins and everyone else gets ``False``, which is how the
poller, the webhook and a cancel racing on the same task stay consistent without locks. The
reads over many tasks come from ``SqliteTaskQueries``, the coordination (claims, admission, due
polls) from ``SqliteCoordination``, the processes and their heartbeats from ``SqliteProcesses``.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Collection
from typing import Any

from bot.kling.models import TaskKind
from bot.tasks.models import Origin, TaskRecord, TaskState
from bot.tasks.store import settings as guild_settings
from bot.tasks.store.codec import (
    SELECT,
    decode,
    dumps,
    encode,
    encode_fields,
    placeholders,
    state_values,
)
from bot.tasks.store.protocols import DuplicateTaskError
from bot.tasks.store.sqlite import SEQUENCE_SQL
from bot.tasks.store.sqlite_claims import SqliteCoordination
from bot.tasks.store.sqlite_processes import SqliteProcesses
from bot.tasks.store.sqlite_queries import SqliteTaskQueries
from bot.tasks.store.transitions import STATE_STAMPS, clear_claim_sql

log = logging.getLogger(__name__)


class SqliteTaskStore(SqliteCoordination, SqliteProcesses, SqliteTaskQueries):
    """``TaskStore`` on one SQLite file, one aiosqlite connection per instance."""

    # --- tasks

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
    ) -> TaskRecord:
        """Insert a queued task. A duplicate external_task_id or callback_token raises
        ``DuplicateTaskError``; a param string longer than MAX_PARAM_CHARS ``ValueError``; a
        database file deleted or replaced since open ``DatabaseFileChanged``."""
        self.refuse_if_file_changed()
        now = self.now()
        values: dict[str, Any] = {
            "kind": encode("kind", kind),
            "provider": provider,
            "simulated": int(bool(simulated)),
            "external_task_id": external_task_id,
            "state": TaskState.QUEUED.value,
            "params": encode("params", params),
            "input_files": "[]",  # the files are saved under inputs/<id>/ once the id exists
            "input_labels": dumps(list(input_labels)),
            "slots": slots,
            "guild_id": origin.guild_id,
            "channel_id": origin.channel_id,
            "user_id": origin.user_id,
            "message_id": origin.message_id,
            "created_at": now,
            "callback_token": callback_token,
            "updated_at": now,
        }
        names = ", ".join(values)
        floor = await self._next_id_floor()
        # The id: above the table's sequence and above every id handed out before (the mark,
        # for a database that is new or older than the ids in use). RETURNING: the new id in
        # the same round trip to the connection's thread.
        try:
            rows = await self.write_returning(
                f"INSERT INTO tasks (id, {names}) VALUES ("
                f"MAX(IFNULL(({SEQUENCE_SQL}), 0), ?) + 1, {placeholders(len(values))}) "
                "RETURNING id",
                (floor, *values.values()),
            )
        except sqlite3.IntegrityError as exc:
            if "UNIQUE" not in str(exc):
                raise  # a NOT NULL or CHECK failure: a bug here, not a duplicate
            raise DuplicateTaskError(str(exc)) from exc
        task_id = int(rows[0][0])
        await self._id_handed_out(task_id)
        # Built from what was stored (decoded JSON), so it equals what get() returns.
        return TaskRecord(
            id=task_id,
            kind=TaskKind(values["kind"]),
            provider=provider,
            simulated=bool(simulated),
            external_task_id=external_task_id,
            kling_task_id=None,
            state=TaskState.QUEUED,
            params=json.loads(values["params"]),
            input_files=[],
            input_labels=json.loads(values["input_labels"]),
            slots=slots,
            guild_id=origin.guild_id,
            channel_id=origin.channel_id,
            user_id=origin.user_id,
            message_id=origin.message_id,
            created_at=now,
            submitted_at=None,
            processing_at=None,
            finished_at=None,
            delivered_at=None,
            kling_status=None,
            result_urls=[],
            result_files=[],
            credits=None,
            failure_reason=None,
            delivery_attempts=0,
            delivery_error=None,
            cancel_requested=False,
            callback_token=callback_token,
            next_check_at=None,
            check_count=0,
            submit_attempts=0,
            not_before=None,
            updated_at=now,
        )

    async def set_inputs(self, task_id: int, input_files: list[str]) -> None:
        await self.update(task_id, input_files=list(input_files))

    async def set_posted_message(self, task_id: int, message_id: int) -> None:
        await self.update(task_id, posted_message_id=message_id)

    async def get(self, task_id: int) -> TaskRecord | None:
        return await self._one("id = ?", (task_id,))

    async def find(self, ref: str) -> TaskRecord | None:
        """``#12`` is a local id; ``12`` too, unless no such task exists and it is a Kling or
        external id (Kling's ids are digits); anything else is a Kling or external id."""
        ref = ref.strip()
        if not ref:
            return None
        if ref.startswith("#"):
            number = ref[1:].strip()
            return await self.get(int(number)) if number.isdecimal() else None
        if ref.isdecimal() and len(ref) < 19:  # fits a SQLite integer
            task = await self.get(int(ref))
            if task is not None:
                return task
        return await self.by_kling_id(ref) or await self.by_external_id(ref)

    async def by_external_id(self, external_task_id: str) -> TaskRecord | None:
        return await self._one("external_task_id = ?", (external_task_id,))

    async def by_kling_id(self, kling_task_id: str) -> TaskRecord | None:
        return await self._one("kling_task_id = ?", (kling_task_id,))

    async def by_callback_token(self, token: str) -> TaskRecord | None:
        return await self._one("callback_token = ?", (token,))

    async def transition(
        self, task_id: int, from_states: Collection[TaskState], to: TaskState, **fields: Any
    ) -> bool:
        """Move the task to ``to`` if it is in one of ``from_states``; True if this call won.

        Stamps the target state's timestamp (unless given in ``fields``) and updated_at, and
        sets ``fields`` in the same statement, so a losing caller changes nothing. A claim
        that does not live in ``to`` ends with the move.
        """
        to = TaskState(to)
        sources = state_values(from_states)
        if not sources:
            return False
        values = encode_fields(fields)
        now = self.now()
        stamp = STATE_STAMPS.get(to)
        if stamp is not None:
            values.setdefault(stamp, now)
        values.setdefault("updated_at", now)
        assignments = ", ".join(f"{name} = ?" for name in values)
        changed = await self.write(
            f"UPDATE tasks SET state = ?, {assignments}, {clear_claim_sql(to)} "
            f"WHERE id = ? AND state IN ({placeholders(len(sources))})",
            [to.value, *values.values(), task_id, *sources],
        )
        return changed == 1

    async def update(self, task_id: int, **fields: Any) -> None:
        """Set non-state fields (and updated_at). Unknown names and ``state`` raise ValueError."""
        values = encode_fields(fields)
        if not values:
            return
        values.setdefault("updated_at", self.now())
        assignments = ", ".join(f"{name} = ?" for name in values)
        changed = await self.write(
            f"UPDATE tasks SET {assignments} WHERE id = ?", [*values.values(), task_id]
        )
        if changed == 0:
            log.debug("update of task %s matched no row", task_id)

    async def update_if_state(
        self, task_id: int, states: Collection[TaskState], **fields: Any
    ) -> bool:
        """Set non-state fields only while the task is in one of ``states``, in one conditional
        statement; True if it was (so a task that ended meanwhile is left alone)."""
        sources = state_values(states)
        values = encode_fields(fields)
        if not sources:
            return False
        values.setdefault("updated_at", self.now())
        assignments = ", ".join(f"{name} = ?" for name in values)
        changed = await self.write(
            f"UPDATE tasks SET {assignments} "
            f"WHERE id = ? AND state IN ({placeholders(len(sources))})",
            [*values.values(), task_id, *sources],
        )
        return changed == 1

    async def _one(self, where: str, params: tuple[Any, ...]) -> TaskRecord | None:
        rows = await self.fetch(f"{SELECT} WHERE {where} LIMIT 1", params)
        return decode(rows[0]) if rows else None

    # --- server settings, until every caller reads them from Stores.guild_settings

    async def get_guild_config(self, guild_id: int) -> dict[str, Any]:
        return await guild_settings.SqliteGuildSettingsStore(self).get_guild_config(guild_id)

    async def set_guild_config(self, guild_id: int, config: dict[str, Any]) -> None:
        await guild_settings.SqliteGuildSettingsStore(self).set_guild_config(guild_id, config)
