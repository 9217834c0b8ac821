"""The tracker's records: a task's state, the row it is stored as, and the events it emits.

A task moves ``queued -> submitted -> processing -> succeed | failed`` at Kling, then
``delivered | undeliverable`` once the Discord side has posted (or given up on) the result.
``cancelled`` ends a task that was never posted. Each state has its own timestamp on the record,
so durations and cleanup never depend on ``updated_at``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from bot.kling.models import TaskKind


class TaskState(StrEnum):
    QUEUED = "queued"
    SUBMITTED = "submitted"
    PROCESSING = "processing"
    SUCCEED = "succeed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    DELIVERED = "delivered"
    UNDELIVERABLE = "undeliverable"


# Not finished at Kling (a queued task holds no slot yet, the other two do).
ACTIVE_STATES: frozenset[TaskState] = frozenset(
    {TaskState.QUEUED, TaskState.SUBMITTED, TaskState.PROCESSING}
)
# Finished at Kling, not yet posted to Discord.
AWAITING_DELIVERY: frozenset[TaskState] = frozenset({TaskState.SUCCEED, TaskState.FAILED})
# Nothing more will happen to these; their files may be cleaned up after the retention period.
FINAL_STATES: frozenset[TaskState] = frozenset(
    {TaskState.CANCELLED, TaskState.DELIVERED, TaskState.UNDELIVERABLE}
)


class ClaimPurpose(StrEnum):
    """What a process claims a task for (``TaskStore.claim``): one owner at a time does it."""

    ADMIT = "admit"  # create it at Kling (holds its slots while the create runs)
    COMPLETE = "complete"  # settle a final status: fetch the results, end the task
    DELIVER = "deliver"  # post the outcome to Discord


# The states each claim lives in: a transition to any other state ends the claim.
CLAIM_STATES: dict[ClaimPurpose, frozenset[TaskState]] = {
    ClaimPurpose.ADMIT: frozenset({TaskState.QUEUED}),
    ClaimPurpose.COMPLETE: frozenset({TaskState.SUBMITTED, TaskState.PROCESSING}),
    ClaimPurpose.DELIVER: AWAITING_DELIVERY,
}


@dataclass(frozen=True, slots=True)
class Origin:
    """Who asked for a task and where its status and result are posted."""

    channel_id: int
    user_id: int
    guild_id: int | None = None
    message_id: int | None = None  # the status message, if any


@dataclass(slots=True)
class TaskRecord:
    """One task as stored. Field order is the order of the ``tasks`` table's columns (less the
    store-only ones, such as ``files_removed_at``)."""

    id: int  # local id, shown to members as "#12"
    kind: TaskKind
    provider: str  # settings.kling_provider
    simulated: bool
    external_task_id: str  # ours, sent to Kling
    kling_task_id: str | None
    state: TaskState
    # Request fields WITHOUT images: prompt, negative_prompt, model_name, n, aspect_ratio |
    # mode, duration. The images are where input_files say: "db:<id>/<label>.<ext>" in the
    # store's task_inputs (INPUT_STORAGE=database), or a path relative to DATA_DIR.
    params: dict[str, Any]
    input_files: list[str]  # in label order: "db:12/subject1.png" or "inputs/12/subject1.png"
    input_labels: list[str]  # "subject1".."subject4", "scene", "style" | "image1".."image4"
    slots: int  # Kling slots held while running (image: n, video: 1)
    guild_id: int | None
    channel_id: int
    user_id: int
    message_id: int | None
    created_at: float  # unix seconds
    submitted_at: float | None
    processing_at: float | None
    finished_at: float | None  # succeed, failed or cancelled
    delivered_at: float | None  # delivered or undeliverable
    kling_status: str | None  # Kling's last task_status
    result_urls: list[str]
    result_files: list[str]  # relative to DATA_DIR: "results/12/0.png"
    credits: str | None  # Kling's final_unit_deduction, as sent
    failure_reason: str | None  # plain words, for members (rows from before failure codes)
    delivery_attempts: int
    delivery_error: str | None
    cancel_requested: bool
    callback_token: str | None
    next_check_at: float | None  # poller
    check_count: int
    submit_attempts: int  # admission backoff after Kling's 1303 (too many tasks)
    not_before: float | None
    updated_at: float
    # Coordination (``TaskStore.claim``): who works on the task now, for what, until when. A
    # claim whose ``claim_until`` has passed is free to take (its owner died or gave up).
    claim_owner: str | None = None
    claim_purpose: ClaimPurpose | None = None
    claim_until: float | None = None
    posted_message_id: int | None = None  # the result's message, recorded before "delivered"
    # Why it failed at Kling / could not be delivered, as a catalogue key's code and its
    # parameters (bot.tasks.failures); the words are chosen when shown.
    failure_code: str | None = None
    failure_params: dict[str, str | int | float] = field(default_factory=dict)
    delivery_error_code: str | None = None
    delivery_error_params: dict[str, str | int | float] = field(default_factory=dict)

    @property
    def is_active(self) -> bool:
        """Not finished at Kling yet."""
        return self.state in ACTIVE_STATES

    @property
    def awaiting_delivery(self) -> bool:
        """Finished at Kling, not yet posted."""
        return self.state in AWAITING_DELIVERY

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def short_ref(self) -> str:
        """How members refer to the task: ``#12``."""
        return f"#{self.id}"

    @property
    def origin(self) -> Origin:
        return Origin(
            channel_id=self.channel_id,
            user_id=self.user_id,
            guild_id=self.guild_id,
            message_id=self.message_id,
        )

    def duration(self) -> float | None:
        """Seconds from creation to the end at Kling, or None while it is still running."""
        if self.finished_at is None:
            return None
        return self.finished_at - self.created_at

    def elapsed(self, now: float) -> float:
        """Seconds since creation, stopping at the end at Kling."""
        end = self.finished_at if self.finished_at is not None else now
        return max(0.0, end - self.created_at)


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One member's usage over a period (``TaskStore.usage``)."""

    user_id: int
    tasks: int
    succeeded: int
    failed: int
    credits: float


@dataclass(frozen=True, slots=True)
class QueuedTask:
    """One task in line for admission: what queue positions and waits are made of."""

    id: int
    slots: int
    not_before: float | None  # backing off until then


@dataclass(frozen=True, slots=True)
class QueueSnapshot:
    """A kind's admission queue as the store sees it (``TaskStore.queue_snapshot``)."""

    line: tuple[QueuedTask, ...]  # in the order admit_next would take them, claimed ones out
    queued: int  # every queued task of the kind, those being created included
    oldest_created_at: float | None  # of those
    slots_in_use: int

    @property
    def ids(self) -> list[int]:
        return [task.id for task in self.line]


class EventType(StrEnum):
    STATE = "state"  # any state change, for live status messages
    COMPLETED = "completed"  # succeeded and results downloaded (task.result_files)
    FAILED = "failed"  # failed at Kling or results could not be fetched (task.failure_reason)


@dataclass(frozen=True, slots=True)
class TaskEvent:
    type: EventType
    task: TaskRecord
