"""``TaskStore`` on PostgreSQL: one task's row, made, read and changed.

The same semantics as SQLite's (``sqlite_tasks``), and the same row codec (``codec``): state
changes go through ``transition``, one conditional ``UPDATE ... WHERE id = $n AND state =
ANY(...)``; under READ COMMITTED a second writer waits for the first's row lock, then re-checks
the condition on the row as changed, so exactly one of two racing callers wins, in one process
or in several. Ids come from an identity sequence, which never hands one out twice.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from typing import Any

import asyncpg

from bot.kling.models import TaskKind
from bot.tasks.models import Origin, TaskRecord, TaskState
from bot.tasks.store.codec import (
    RETURNING,
    SELECT,
    dumps,
    encode,
    encode_fields,
    state_values,
)
from bot.tasks.store.pg import task_record
from bot.tasks.store.pg_claims import PgCoordination
from bot.tasks.store.pg_processes import PgProcesses
from bot.tasks.store.pg_queries import PgTaskQueries
from bot.tasks.store.pg_settings import PgGuildSettingsStore
from bot.tasks.store.protocols import DuplicateTaskError
from bot.tasks.store.transitions import STATE_STAMPS, clear_claim_sql

log = logging.getLogger(__name__)


def assignments(fields: Mapping[str, Any], first: int) -> str:
    """``a = $first, b = $first+1, ...`` for the names of ``fields`` (checked by the codec)."""
    return ", ".join(f"{name} = ${number}" for number, name in enumerate(fields, first))


class PgTaskStore(PgCoordination, PgProcesses, PgTaskQueries):
    """``TaskStore`` on one PostgreSQL database, through a pool shared by its callers."""

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
        ``DuplicateTaskError``; a param string longer than MAX_PARAM_CHARS ``ValueError``."""
        now = self.now()
        values: dict[str, Any] = {
            "kind": encode("kind", kind),
            "provider": provider,
            "simulated": encode("simulated", simulated),
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
        numbers = ", ".join(f"${n}" for n in range(1, len(values) + 1))
        try:
            rows = await self.fetch(
                f"INSERT INTO tasks ({', '.join(values)}) VALUES ({numbers}) {RETURNING}",
                *values.values(),
            )
        except asyncpg.UniqueViolationError as exc:
            raise DuplicateTaskError(str(exc)) from exc
        # Decoded from what was stored, so it equals what get() returns.
        return task_record(rows[0])

    async def set_inputs(self, task_id: int, input_files: list[str]) -> None:
        await self.update(task_id, input_files=list(input_files))

    async def set_posted_message(self, task_id: int, message_id: int) -> None:
        await self.update(task_id, posted_message_id=message_id)

    async def get(self, task_id: int) -> TaskRecord | None:
        return await self._one("id = $1", task_id)

    async def find(self, ref: str) -> TaskRecord | None:
        """``#12`` is a local id; ``12`` too, unless no such task exists and it is a Kling or
        external id (Kling's ids are digits); anything else is a Kling or external id."""
        ref = ref.strip()
        if not ref:
            return None
        if ref.startswith("#"):
            number = ref[1:].strip()
            return await self.get(int(number)) if number.isdecimal() and len(number) < 19 else None
        if ref.isdecimal() and len(ref) < 19:  # fits a BIGINT
            task = await self.get(int(ref))
            if task is not None:
                return task
        return await self.by_kling_id(ref) or await self.by_external_id(ref)

    async def by_external_id(self, external_task_id: str) -> TaskRecord | None:
        return await self._one("external_task_id = $1", external_task_id)

    async def by_kling_id(self, kling_task_id: str) -> TaskRecord | None:
        return await self._one("kling_task_id = $1", kling_task_id)

    async def by_callback_token(self, token: str) -> TaskRecord | None:
        return await self._one("callback_token = $1", token)

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
        n = len(values)
        changed = await self.execute(
            f"UPDATE tasks SET state = $1, {assignments(values, 2)}, {clear_claim_sql(to)} "
            f"WHERE id = ${n + 2} AND state = ANY(${n + 3}::text[])",
            to.value,
            *values.values(),
            task_id,
            sources,
        )
        return changed == 1

    async def update(self, task_id: int, **fields: Any) -> None:
        """Set non-state fields (and updated_at). Unknown names and ``state`` raise ValueError."""
        values = encode_fields(fields)
        if not values:
            return
        values.setdefault("updated_at", self.now())
        changed = await self.execute(
            f"UPDATE tasks SET {assignments(values, 1)} WHERE id = ${len(values) + 1}",
            *values.values(),
            task_id,
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
        n = len(values)
        changed = await self.execute(
            f"UPDATE tasks SET {assignments(values, 1)} "
            f"WHERE id = ${n + 1} AND state = ANY(${n + 2}::text[])",
            *values.values(),
            task_id,
            sources,
        )
        return changed == 1

    async def _one(self, where: str, *args: Any) -> TaskRecord | None:
        rows = await self.fetch(f"{SELECT} WHERE {where} LIMIT 1", *args)
        return task_record(rows[0]) if rows else None

    # --- server settings, as SqliteTaskStore has them (callers read Stores.guild_settings)

    async def get_guild_config(self, guild_id: int) -> dict[str, Any]:
        return await PgGuildSettingsStore(self).get_guild_config(guild_id)

    async def set_guild_config(self, guild_id: int, config: dict[str, Any]) -> None:
        await PgGuildSettingsStore(self).set_guild_config(guild_id, config)
