"""One simulated task: its status follows from timestamps, so idle tasks cost no timers."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from bot.kling.models import TaskKind, TaskStatus

FAILURE_MESSAGE = "Failure to pass the risk control system"
# The fields of a create's answer: the task as it is when just made, without results.
CREATE_FIELDS = frozenset({"task_id", "task_info", "task_status", "created_at", "updated_at"})


@dataclass(slots=True, eq=False)
class SimTask:
    """One simulated task. Times are Unix seconds; status follows from them."""

    task_id: str
    kind: TaskKind
    request: dict[str, Any]
    external_task_id: str | None
    callback_url: str | None
    n: int
    slots: int
    aspect_ratio: str
    prompt: str
    images: tuple[str, ...]
    scene: str | None
    style: str | None
    duration: str | None
    mode: str | None
    watermark: bool
    created_at: float
    processing_at: float
    done_at: float
    failed: bool
    expired: bool
    origin: str

    @property
    def status(self) -> TaskStatus:
        return self.status_at(time.time())

    def status_at(self, t: float) -> TaskStatus:
        if t < self.processing_at:
            return TaskStatus.SUBMITTED
        if t < self.done_at:
            return TaskStatus.PROCESSING
        return TaskStatus.FAILED if self.failed else TaskStatus.SUCCEED

    @property
    def final_status(self) -> TaskStatus:
        return TaskStatus.FAILED if self.failed else TaskStatus.SUCCEED

    def deduction(self) -> str:
        if self.failed:
            return "0"
        if self.kind is TaskKind.IMAGE:
            return str(self.n)
        units = (2 if self.mode == "pro" else 1) * int(self.duration or "5") / 5
        return f"{units:g}"

    def to_json(self, status: TaskStatus | None = None) -> dict[str, Any]:
        """The task object of queries, lists and callbacks (at ``status``, default now)."""
        status = status or self.status
        changed = {
            TaskStatus.SUBMITTED: self.created_at,
            TaskStatus.PROCESSING: self.processing_at,
        }.get(status, self.done_at)
        info = {"external_task_id": self.external_task_id} if self.external_task_id else {}
        data: dict[str, Any] = {
            "task_id": self.task_id,
            "task_status": status.value,
            "task_status_msg": FAILURE_MESSAGE if status is TaskStatus.FAILED else "",
            "task_info": info,
            "watermark_info": {"enabled": self.watermark},
            "created_at": int(self.created_at * 1000),
            "updated_at": int(changed * 1000),
        }
        if status.is_terminal:
            data["final_unit_deduction"] = self.deduction()
        if status is TaskStatus.SUCCEED:
            data["task_result"] = self._result()
        return data

    def create_answer(self) -> dict[str, Any]:
        """What a create answers: the task just made, submitted."""
        data = self.to_json(TaskStatus.SUBMITTED).items()
        return {key: value for key, value in data if key in CREATE_FIELDS}

    def result_count(self) -> int:
        return self.n if self.kind is TaskKind.IMAGE else 1

    def _result(self) -> dict[str, Any]:
        base = f"{self.origin}/results/{self.task_id}"
        if self.kind is TaskKind.VIDEO:
            video = {"id": f"{self.task_id}0", "url": f"{base}/0.mp4", "duration": self.duration}
            if self.watermark:
                video["watermark_url"] = f"{base}/0-wm.mp4"
            return {"videos": [video]}
        images = []
        for i in range(self.n):
            image: dict[str, Any] = {"index": i, "url": f"{base}/{i}.png"}
            if self.watermark:
                image["watermark_url"] = f"{base}/{i}-wm.png"
            images.append(image)
        return {"images": images}
