"""Kling's request body for a task: its typed parameters and its images, base64-encoded.

At submit the images come from the member; at admission (and after a restart or a takeover)
they are read back from where they were stored (``inputs``: the database or DATA_DIR), and the
parameters from the stored JSON (``params_for``). Encoding is CPU work, so it runs in a thread,
off the event loop, as a read of files does.
"""

from __future__ import annotations

import asyncio
from base64 import b64encode
from collections.abc import Sequence

from bot.config import Settings
from bot.kling.models import TaskRequest
from bot.kling.params import TaskParams, build_request, params_for
from bot.tasks.inputs import TaskInputs
from bot.tasks.models import TaskRecord
from bot.tasks.webhook import callback_url


def encode_all(images: Sequence[tuple[str, bytes]]) -> list[tuple[str, str]]:
    """``(label, base64)`` for every image."""
    return [(label, b64encode(data).decode("ascii")) for label, data in images]


async def request_for(
    params: TaskParams,
    images: Sequence[tuple[str, bytes]],
    *,
    external_task_id: str | None = None,
    callback: str | None = None,
) -> TaskRequest:
    """The validated request (pydantic's ValidationError, KlingInvalidRequest when refused)."""
    encoded = await asyncio.to_thread(encode_all, images)
    return build_request(params, encoded, external_task_id=external_task_id, callback_url=callback)


async def stored_request(record: TaskRecord, inputs: TaskInputs, settings: Settings) -> TaskRequest:
    """The create request of a stored task. OSError: its images are gone or unreadable;
    ValueError (pydantic's too): what was stored no longer makes a valid request; a database
    that does not answer: its own error (try again later)."""
    images = await inputs.read(record)
    url = None
    if settings.public_base_url and record.callback_token:
        url = callback_url(settings.public_base_url, record.callback_token)
    return await request_for(
        params_for(record.kind, record.params),
        images,
        external_task_id=record.external_task_id,
        callback=url,
    )
