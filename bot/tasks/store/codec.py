"""A task's row and its ``TaskRecord``, both ways, and the small SQL-text helpers around them.

Lists and mappings are stored as compact JSON text, booleans as 0/1, enums by value. Decoding
runs for every row read (``in_states`` over thousands of tasks at a restart), so it converts the
few columns that need it by position instead of building a dict per row.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from bot.kling.models import TaskKind
from bot.tasks.models import ClaimPurpose, TaskRecord, TaskState

# A param longer than this is almost certainly an image (base64) that slipped in by mistake;
# images are stored as files, never in the database.
MAX_PARAM_CHARS = 10_000

# The record's fields, in table column order; the single source of truth for SELECTs.
COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TaskRecord))
SELECT = f"SELECT {', '.join(COLUMNS)} FROM tasks"
RETURNING = f"RETURNING {', '.join(COLUMNS)}"

_JSON_COLUMNS = frozenset({"params", "input_files", "input_labels", "result_urls", "result_files"})
# JSON objects that may be absent: an empty one is stored as NULL and read back as {}.
_OPTIONAL_JSON_COLUMNS = frozenset({"failure_params", "delivery_error_params"})
_BOOL_COLUMNS = frozenset({"simulated", "cancel_requested"})
# Changed only through the claim methods, never by update()/transition() fields.
CLAIM_COLUMNS = frozenset({"claim_owner", "claim_purpose", "claim_until"})
# update()/transition() may set these; id is fixed and state only changes through transition().
MUTABLE_COLUMNS = frozenset(COLUMNS) - {"id", "state"} - CLAIM_COLUMNS


def dumps(value: Any) -> str:
    # Compact and key-sorted: stable text, and '[]' for an empty list (usage() relies on it).
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def check_no_long_strings(value: Any, where: str = "params") -> None:
    """Refuse huge strings anywhere in params: they are images that belong on disk."""
    if isinstance(value, str):
        if len(value) > MAX_PARAM_CHARS:
            raise ValueError(
                f"{where} holds a {len(value)}-character string (limit {MAX_PARAM_CHARS}); "
                "images must be saved as input files, not stored in params"
            )
    elif isinstance(value, bytes | bytearray):
        raise ValueError(f"{where} holds bytes; images must be saved as input files")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            check_no_long_strings(item, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            check_no_long_strings(item, f"{where}[{index}]")


def encode(column: str, value: Any) -> Any:
    if column in _JSON_COLUMNS:
        if column == "params":
            check_no_long_strings(value)
        return dumps(value)
    if column in _OPTIONAL_JSON_COLUMNS:
        return dumps(dict(value)) if value else None
    if column in _BOOL_COLUMNS:
        return int(bool(value))
    if column == "kind":
        return TaskKind(value).value
    return value


def encode_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Check the names (they end up in SQL text) and encode the values."""
    if "state" in fields:
        raise ValueError("the state changes only through transition(), not update()")
    unknown = set(fields) - MUTABLE_COLUMNS
    if unknown:
        raise ValueError(f"unknown or read-only task fields: {', '.join(sorted(unknown))}")
    return {name: encode(name, value) for name, value in fields.items()}


# Enum lookups by value through a dict: several times faster than calling the enum class, and
# decoding is what in_states() over thousands of rows spends its time on.
_KIND_BY_VALUE: dict[str, TaskKind] = {k.value: k for k in TaskKind}
_STATE_BY_VALUE: dict[str, TaskState] = {s.value: s for s in TaskState}
_PURPOSE_BY_VALUE: dict[str, ClaimPurpose] = {p.value: p for p in ClaimPurpose}


def _loads_list(text: str) -> list[Any]:
    return [] if text == "[]" else json.loads(text)  # most lists are empty: skip the parser


def _loads_object(text: str | None) -> dict[str, Any]:
    return {} if text is None else json.loads(text)


# Where decode() converts: the columns whose stored form is not the record's.
_AT = {name: index for index, name in enumerate(COLUMNS)}
_LISTS = tuple(_AT[name] for name in sorted(_JSON_COLUMNS - {"params"}))
_OBJECTS = tuple(_AT[name] for name in sorted(_OPTIONAL_JSON_COLUMNS))
_BOOLS = tuple(_AT[name] for name in sorted(_BOOL_COLUMNS))
_KIND, _STATE, _PARAMS, _PURPOSE = (_AT[n] for n in ("kind", "state", "params", "claim_purpose"))


def decode(row: Sequence[Any]) -> TaskRecord:
    """A row selected with ``SELECT`` (columns in ``COLUMNS`` order) to a fresh record."""
    values = list(row)
    kind, state, purpose = values[_KIND], values[_STATE], values[_PURPOSE]
    values[_KIND] = _KIND_BY_VALUE.get(kind) or TaskKind(kind)  # TaskKind() raises if unknown
    values[_STATE] = _STATE_BY_VALUE.get(state) or TaskState(state)
    values[_PARAMS] = json.loads(values[_PARAMS])
    for index in _LISTS:
        values[index] = _loads_list(values[index])
    for index in _OBJECTS:
        values[index] = _loads_object(values[index])
    for index in _BOOLS:
        values[index] = bool(values[index])
    if purpose is not None:
        values[_PURPOSE] = _PURPOSE_BY_VALUE.get(purpose, purpose)
    return TaskRecord(*values)


def credits_number(text: Any) -> float | None:
    """SQL function for usage(): Kling's credits text as a number, None when it is not one."""
    if text is None:
        return None
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def placeholders(n: int) -> str:
    return ", ".join("?" * n)


def state_values(states: Collection[TaskState]) -> list[str]:
    return [TaskState(s).value for s in states]
