"""What a state change writes, the same in every store: the state's timestamp, the end of
the claims that do not live in the new state, and which states each claim may be taken in.
"""

from __future__ import annotations

from collections.abc import Collection

from bot.tasks.models import CLAIM_STATES, ClaimPurpose, TaskState

# The timestamp each target state stamps.
STATE_STAMPS: dict[TaskState, str] = {
    TaskState.SUBMITTED: "submitted_at",
    TaskState.PROCESSING: "processing_at",
    TaskState.SUCCEED: "finished_at",
    TaskState.FAILED: "finished_at",
    TaskState.CANCELLED: "finished_at",
    TaskState.DELIVERED: "delivered_at",
    TaskState.UNDELIVERABLE: "delivered_at",
}


def _claims_kept_in(to: TaskState) -> list[str]:
    """The claim purposes that live on in state ``to`` (any other claim ends there)."""
    return [purpose.value for purpose, states in CLAIM_STATES.items() if to in states]


def clear_claim_sql(to: TaskState) -> str:
    """SET assignments for a transition to ``to``: they end a claim that does not live there.
    (SQLite and PostgreSQL evaluate every SET expression on the row as it was: any order.)"""
    kept = _claims_kept_in(to)
    if not kept:
        return "claim_owner = NULL, claim_purpose = NULL, claim_until = NULL"
    keep = f"claim_purpose IN ({', '.join(repr(p) for p in kept)})"
    return ", ".join(
        f"{column} = CASE WHEN {keep} THEN {column} END"
        for column in ("claim_owner", "claim_purpose", "claim_until")
    )


def check_claim_states(purpose: ClaimPurpose, states: Collection[TaskState]) -> None:
    """A claim is taken only in states where its purpose lives (``CLAIM_STATES``)."""
    outside = set(states) - CLAIM_STATES[purpose]
    if outside:
        raise ValueError(
            f"a {purpose} claim lives in {sorted(CLAIM_STATES[purpose])}, not in {sorted(outside)}"
        )
