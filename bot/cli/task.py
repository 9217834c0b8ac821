"""``kling-bot task get|list``: Kling's own view of tasks, by id or page by page."""

from __future__ import annotations

import argparse
import json

from bot.cli.errors import EXIT_BAD_INPUT, EXIT_CONFIG, EXIT_OK, CliError, kling_failure
from bot.config import Settings
from bot.kling.client import NOT_FOUND_CODES
from bot.kling.errors import KlingError, KlingInvalidRequest
from bot.kling.models import KlingTask, TaskKind, TaskStatus
from bot.text import t


async def show_tasks(settings: Settings, args: argparse.Namespace) -> int:
    kind = TaskKind(args.kind)
    from bot.app import open_kling  # the composition root: builds (and closes) the client

    async with open_kling(settings, simulate=args.simulate) as (settings, client, _session):
        try:
            if args.action == "get":
                tasks = [await client.get_task(kind, args.id)]
            else:
                tasks = await client.list_tasks(kind, args.page, args.page_size)
        except KlingError as exc:
            raise _refusal(exc, settings, args, kind) from None
    if args.json:
        payload = [task.model_dump(mode="json") for task in tasks]
        print(json.dumps(payload[0] if args.action == "get" else payload))
        return EXIT_OK
    for task in tasks:
        print(_line(task))
        for url in task.result_urls():
            print(f"    {url}")
    if not tasks:
        print(t("cli.task.none"))
    return EXIT_OK


def _refusal(
    exc: KlingError, settings: Settings, args: argparse.Namespace, kind: TaskKind
) -> CliError:
    if args.action == "get" and exc.code in NOT_FOUND_CODES:
        return CliError(t("cli.task.not_found", kind=kind.value, id=repr(args.id)), EXIT_BAD_INPUT)
    if isinstance(exc, KlingInvalidRequest):
        return CliError(t("cli.kling.refused", error=exc.message), EXIT_BAD_INPUT)
    return CliError(kling_failure(exc, settings), EXIT_CONFIG)


def _line(task: KlingTask) -> str:
    line = f"{task.task_id}  {task.task_status.value:<10}  {task.external_task_id or '-'}"
    if task.final_unit_deduction:
        line += f"  {t('count.credit', count=task.final_unit_deduction)}"
    if task.task_status_msg and task.task_status is TaskStatus.FAILED:
        line += f"  {task.task_status_msg}"
    return line
