"""Callbacks as Kling sends them, for the listener's tests: a task stored as running at Kling,
the body of its callback, and a gzip bomb (a small body that inflates to many MiB)."""

from __future__ import annotations

import zlib
from typing import Any

from bot.kling.models import TaskKind
from bot.tasks.models import Origin, TaskRecord, TaskState
from bot.tasks.webhook import callback_token
from testing.tracker_harness import SECRET, Harness


async def running_task(
    h: Harness,
    kling_id: str = "kling-1",
    *,
    state: TaskState = TaskState.SUBMITTED,
    submitted_at: float | None = None,
    token: bool = True,
) -> TaskRecord:
    """A task stored as running at Kling under ``kling_id`` (which Kling may not know)."""
    external = f"ext-{kling_id}"
    record = await h.store.create(
        kind=TaskKind.IMAGE,
        provider="simulator",
        simulated=True,
        external_task_id=external,
        params={"prompt": "p"},
        input_labels=["subject1"],
        slots=1,
        origin=Origin(channel_id=1, user_id=1),
        callback_token=callback_token(SECRET, external) if token else None,
    )
    await h.store.transition(
        record.id,
        [TaskState.QUEUED],
        state,
        kling_task_id=kling_id,
        kling_status=state.value,
        **({} if submitted_at is None else {"submitted_at": submitted_at}),
    )
    fresh = await h.store.get(record.id)
    assert fresh is not None
    return fresh


def body(record: TaskRecord, status: str = "processing", **extra: Any) -> dict[str, Any]:
    return {
        "task_id": record.kling_task_id,
        "task_status": status,
        "task_info": {"external_task_id": record.external_task_id},
        **extra,
    }


def gzip_bomb(inflated_mib: int) -> bytes:
    """``inflated_mib`` MiB of zeros, gzipped: about 1 KiB per MiB."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # 16+: the gzip wrapper
    zeros = bytes(1024 * 1024)
    return b"".join(packer.compress(zeros) for _ in range(inflated_mib)) + packer.flush()
