"""``kling-bot generate image|video``: one task at Kling, waited for, its results downloaded.

Everything that can be checked is checked before anything is sent (exit 2, no credit spent):
the prompts' length, the input files, the images (prepared as the bot prepares them), then the
request as a typed ``ImageParams``/``VideoParams``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from pydantic import ValidationError

from bot.cli.errors import (
    EXIT_BAD_INPUT,
    EXIT_CONFIG,
    EXIT_OK,
    EXIT_TASK_FAILED,
    CliError,
    kling_failure,
)
from bot.config import Settings
from bot.kling.client import KlingClient, require_known_image_model
from bot.kling.errors import KlingError, KlingInvalidRequest, KlingPolicyError
from bot.kling.images import ImageRejected, prepare_images
from bot.kling.models import KlingTask, TaskKind, TaskRequest, TaskStatus
from bot.kling.options import (
    IMAGE_ROLE_LABELS,
    MAX_INPUT_IMAGES,
    MAX_PROMPT_CHARS,
    SUBJECT_LABELS,
    VIDEO_IMAGE_LABELS,
)
from bot.kling.params import ImageParams, TaskParams, VideoParams, build_request
from bot.text import t

# The flag of each request field whose name does not say it.
_FLAGS = {"n": "-n", "subject_images": "--subject", "images": "--image", "model_name": "--model"}


async def generate(settings: Settings, args: argparse.Namespace) -> int:
    kind = TaskKind(args.kind)
    require_known_image_model(settings)
    _check_prompts(args)
    inputs = _read_inputs(args, kind)
    try:
        prepared = await prepare_images(inputs, fit=settings.image_fit)
    except ImageRejected as exc:
        raise CliError(str(exc), EXIT_BAD_INPUT) from None
    for image in prepared:
        for change in image.changes:
            progress(f"{image.label}: {change}")
    params = _params(settings, args, kind)
    request = build_request(params, [(image.label, image.base64()) for image in prepared])

    from bot.app import open_kling  # the composition root: builds (and closes) the client

    async with open_kling(settings, simulate=args.simulate) as (settings, client, session):
        try:
            task = await _submit(client, request)
            task = await _wait(client, kind, task, wait_limit=args.timeout)
        except KlingError as exc:
            raise CliError(kling_failure(exc, settings), EXIT_CONFIG) from None
        if task.task_status is TaskStatus.FAILED:
            reason = task.task_status_msg or t("cli.generate.no_reason")
            if args.json:
                print(json.dumps(_summary(task, [])))
            else:
                message = t("cli.generate.failed", task_id=task.task_id, reason=reason)
                print(f"kling-bot: {message}", file=sys.stderr)
            return EXIT_TASK_FAILED
        out_dir = args.out or Path("out") / task.task_id
        paths = await _download(session, settings, task, out_dir)
    if args.json:
        print(json.dumps(_summary(task, paths)))
    else:
        progress(_succeeded(task, len(paths)))
        for path in paths:
            print(path)
    return EXIT_OK


def _succeeded(task: KlingTask, files: int) -> str:
    deduction = task.final_unit_deduction
    credits = f", {t('count.credit', count=deduction)}" if deduction else ""
    return t(
        "cli.generate.succeeded",
        task_id=task.task_id,
        credits=credits,
        files=t("count.file", count=files),
    )


def _check_prompts(args: argparse.Namespace) -> None:
    """Kling's length limit, counted in words before any image is read or any credit spent."""
    limit = f"{MAX_PROMPT_CHARS:,}"
    prompt, negative = args.prompt, args.negative_prompt
    if prompt is not None and len(prompt) > MAX_PROMPT_CHARS:
        message = t("cli.generate.prompt_too_long", length=f"{len(prompt):,}", limit=limit)
        raise CliError(message, EXIT_BAD_INPUT)
    if negative is not None and len(negative) > MAX_PROMPT_CHARS:
        message = t(
            "cli.generate.negative_prompt_too_long", length=f"{len(negative):,}", limit=limit
        )
        raise CliError(message, EXIT_BAD_INPUT)


def _read_inputs(args: argparse.Namespace, kind: TaskKind) -> list[tuple[str, bytes]]:
    """The input files as ``(label, bytes)``, labelled as the request takes them."""
    if kind is TaskKind.IMAGE:
        given, flag = args.subject, "--subject"
        named = list(zip(SUBJECT_LABELS, given, strict=False))
        named += [(label, getattr(args, label)) for label in IMAGE_ROLE_LABELS]
    else:
        given, flag = args.image, "--image"
        named = list(zip(VIDEO_IMAGE_LABELS, given, strict=False))
    if len(given) > MAX_INPUT_IMAGES:
        raise CliError(t("cli.generate.too_many_images", limit=MAX_INPUT_IMAGES, flag=flag),
                       EXIT_BAD_INPUT)  # fmt: skip
    inputs = []
    for label, path in named:
        if path is None:
            continue
        try:
            inputs.append((label, path.read_bytes()))
        except OSError as exc:
            message = t("cli.generate.unreadable", label=label, path=path, error=exc.strerror)
            raise CliError(message, EXIT_BAD_INPUT) from None
    return inputs


def _params(settings: Settings, args: argparse.Namespace, kind: TaskKind) -> TaskParams:
    """The request's options, typed; a value the model refuses names its flag."""
    common = {"prompt": args.prompt, "negative_prompt": args.negative_prompt}
    try:
        if kind is TaskKind.IMAGE:
            image = {"n": args.n, "aspect_ratio": args.aspect_ratio,
                     "model_name": args.model or settings.kling_image_model}  # fmt: skip
            return ImageParams.model_validate({**common, **image})
        video = {"mode": args.mode, "duration": args.duration, "aspect_ratio": args.aspect_ratio}
        return VideoParams.model_validate({**common, **video})
    except ValidationError as exc:  # the checks above leave little: a blank --prompt, say
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else "request"
        flag = _FLAGS.get(field, "--" + field.replace("_", "-"))
        if error["type"] == "string_too_short":
            message = t("cli.generate.flag_empty", flag=flag)
        else:
            message = t("cli.generate.flag_refused", flag=flag, error=error["msg"])
        raise CliError(message, EXIT_BAD_INPUT) from None


async def _submit(client: KlingClient, request: TaskRequest) -> KlingTask:
    try:
        task = await client.create_task(request)
    except (KlingInvalidRequest, KlingPolicyError) as exc:
        raise CliError(t("cli.kling.refused", error=exc.message), EXIT_BAD_INPUT) from None
    progress(t("cli.generate.submitted", task_id=task.task_id, external_id=task.external_task_id))
    return task


async def _wait(
    client: KlingClient, kind: TaskKind, task: KlingTask, *, wait_limit: float
) -> KlingTask:
    """Poll one task until it ends, printing its state and the elapsed time."""
    started = time.monotonic()
    delay = 1.0
    last_status = None
    while not task.is_terminal:
        elapsed = time.monotonic() - started
        if elapsed > wait_limit:
            raise CliError(
                t("cli.generate.timed_out", task_id=task.task_id,
                  seconds=f"{wait_limit:.0f}", kind=kind.value),
                EXIT_CONFIG,
            )  # fmt: skip
        if task.task_status != last_status or sys.stderr.isatty():
            line = t("cli.generate.waiting", status=task.task_status.value,
                     seconds=f"{elapsed:.0f}")  # fmt: skip
            progress(line, same_line=sys.stderr.isatty())
            last_status = task.task_status
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 5.0)
        task = await client.get_task(kind, task.task_id)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    return task


async def _download(
    session: aiohttp.ClientSession, settings: Settings, task: KlingTask, out_dir: Path
) -> list[Path]:
    from bot.tasks.results import DownloadError, download_results, kling_origin

    try:
        return await download_results(
            task.result_urls(),
            out_dir,
            max_bytes=settings.download_max_bytes,
            timeout=settings.download_timeout,
            trusted_origin=kling_origin(settings),
        )
    except DownloadError as exc:
        message = t("cli.generate.download_failed", task_id=task.task_id, error=exc)
        raise CliError(message, EXIT_CONFIG) from None


def _summary(task: KlingTask, paths: list[Path]) -> dict[str, Any]:
    return {
        "task_id": task.task_id,
        "external_task_id": task.external_task_id,
        "status": task.task_status.value,
        "reason": task.task_status_msg,
        "credits": task.final_unit_deduction,
        "urls": task.result_urls(),
        "files": [str(path) for path in paths],
    }


def progress(message: str, *, same_line: bool = False) -> None:
    """A line for the operator on stderr (stdout is the result, for scripts)."""
    if same_line:
        print(f"\r\033[K{message}", end="", file=sys.stderr, flush=True)
    else:
        print(message, file=sys.stderr, flush=True)
