"""Taking a task in: validate it, store its row, save its images, announce it.

Everything that can be refused is refused before anything is stored or sent: the parameters
(pydantic), the request the flavour would send (``KlingInvalidRequest``), and the slots against
the account's limit (``SlotsExceedLimit``). The row then goes in first, with its external id
and callback token, and the images after it (``inputs``: the database or DATA_DIR): a crash
between the two leaves a row without images, which the next start ends (nothing reached
Kling). Images that cannot be stored (a full disk or database, a database that refuses the
write) end the task at once (``InputsNotStored``), so it never counts against the member's
limit.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from bot.config import Settings
from bot.kling.client import new_external_task_id
from bot.kling.images import PreparedImage
from bot.kling.models import TaskKind
from bot.kling.params import TaskParams, params_for
from bot.kling.providers import Flavour
from bot.tasks import failures
from bot.tasks.events import EventBus
from bot.tasks.failures import Failure
from bot.tasks.inputs import TaskInputs
from bot.tasks.limits import Limits, check_fits
from bot.tasks.models import EventType, Origin, TaskRecord, TaskState
from bot.tasks.requests import request_for
from bot.tasks.store import TaskStore
from bot.tasks.webhook import callback_token

log = logging.getLogger(__name__)

Inputs = Sequence[tuple[str, bytes, str]]  # (label, data, extension)


class InputsNotStored(OSError):
    """``submit`` could not store the task's input images: the task has ended (failed, with
    this reason) and nothing was sent to Kling. str() is for the member."""

    def __init__(self, task_id: int) -> None:
        self.failure = Failure(failures.INPUTS_NOT_STORED)
        super().__init__(self.failure.words())
        self.task_id = task_id
        self.user_message = self.failure.words()


class Intake:
    def __init__(
        self,
        *,
        store: TaskStore,
        inputs: TaskInputs,
        settings: Settings,
        flavour: Flavour,
        limits: Limits,
        bus: EventBus,
    ) -> None:
        self._store = store
        self._inputs = inputs
        self._settings = settings
        self._flavour = flavour
        self._limits = limits
        self._bus = bus

    async def submit(
        self,
        kind: TaskKind,
        params: TaskParams,
        images: Sequence[PreparedImage],
        origin: Origin,
    ) -> TaskRecord:
        """Validate, store and queue a task (see the module docstring for what raises)."""
        if params.kind is not kind:
            raise ValueError(f"{type(params).__name__} given for a {kind} task")
        inputs = [(image.label, image.data, image.extension) for image in images]
        return await self._take(kind, params, inputs, origin)

    async def resubmit(self, task_id: int, origin: Origin) -> TaskRecord:
        """ "Again": a new task with the same parameters and stored input images."""
        record = await self._store.get(task_id)
        if record is None:
            raise LookupError(f"task #{task_id} does not exist")
        try:
            stored = await self._inputs.read(record)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"the input images of #{task_id} were deleted after "
                f"{self._settings.retention_days:g} days"
            ) from None
        inputs = [
            (label, data, Path(path).suffix.lstrip("."))
            for (label, data), path in zip(stored, record.input_files, strict=True)
        ]
        return await self._take(record.kind, params_for(record.kind, record.params), inputs, origin)

    async def _take(
        self, kind: TaskKind, params: TaskParams, inputs: Inputs, origin: Origin
    ) -> TaskRecord:
        request = await request_for(params, [(label, data) for label, data, _ in inputs])
        self._flavour.check(request)
        check_fits(self._limits, kind, request.slots)
        external_task_id = new_external_task_id()
        secret = self._settings.webhook_secret
        record = await self._store.create(
            kind=kind,
            provider=self._settings.kling_provider,
            simulated=self._settings.simulated,
            external_task_id=external_task_id,  # in the row before any create: see admission
            params=params.stored(),
            input_labels=[label for label, _, _ in inputs],
            slots=request.slots,
            origin=origin,
            callback_token=(
                callback_token(secret.get_secret_value(), external_task_id) if secret else None
            ),
        )
        try:
            input_files = await self._inputs.save(record.id, inputs)
        except OSError as exc:
            await self._fail_unstored(record, exc)
            raise InputsNotStored(record.id) from exc
        await self._store.set_inputs(record.id, input_files)
        record.input_files = input_files
        log.info("task %s: queued %s task for user %s (%d slots)",
                 record.id, kind, origin.user_id, request.slots)  # fmt: skip
        self._bus.emit(EventType.STATE, record)
        return record

    async def _fail_unstored(self, record: TaskRecord, exc: OSError) -> None:
        """The images could not be stored (disk full, say): the task ends now, so it does not
        count against the member's limit, and is announced like any failure."""
        log.error("task %s: its input images could not be stored (%s); failing it", record.id, exc)
        try:
            ended = await self._store.transition(
                record.id,
                [TaskState.QUEUED],
                TaskState.FAILED,
                **Failure(failures.INPUTS_NOT_STORED).as_failure(),
            )
            if ended:
                await self._bus.emit_outcome(record.id)
        except Exception:
            # The row stays queued without images: the next start fails it the same way.
            log.exception("task %s: could not record that its images were not stored", record.id)
