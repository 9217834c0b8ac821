"""The ``kling-bot`` command line: its commands, options and their allowed values.

The choices come from ``bot.kling.options``, the ones the slash commands offer, and the help
texts from the catalogue (``cli.po``). A usage error is two lines (what is wrong, where help
is) and exit code 2.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from bot.cli.errors import EXIT_BAD_INPUT
from bot.kling.models import TaskKind
from bot.kling.options import (
    DEFAULT_IMAGE_ASPECT_RATIO,
    DEFAULT_IMAGE_COUNT,
    DEFAULT_VIDEO_ASPECT_RATIO,
    DEFAULT_VIDEO_DURATION,
    DEFAULT_VIDEO_MODE,
    IMAGE_ASPECT_RATIOS,
    IMAGE_COUNT_MAX,
    IMAGE_COUNT_MIN,
    IMAGE_MODELS,
    MAX_INPUT_IMAGES,
    MAX_PROMPT_CHARS,
    VIDEO_ASPECT_RATIOS,
    VIDEO_DURATIONS,
    VIDEO_MODES,
)
from bot.text import t

KINDS = [kind.value for kind in TaskKind]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # Two lines, not argparse's whole usage block: what is wrong, and where help is.
        # "argument -n: must be 1..9 (got 10)" reads better as "-n must be 1..9 (got 10)".
        message = re.sub(r"^argument (\S+): (?=must be )", r"\1 ", message)
        self.exit(EXIT_BAD_INPUT, t("cli.usage_error", prog=self.prog, message=message) + "\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kling-bot", description=t("cli.help.description"))
    parser.add_argument("-v", "--verbose", action="store_true", help=t("cli.help.verbose"))
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = commands.add_parser("run", help=t("cli.help.run"))
    run.add_argument("--simulate", action="store_true", help=t("cli.help.run_simulate"))

    worker = commands.add_parser("worker", help=t("cli.help.worker"))
    worker.add_argument("--simulate", action="store_true", help=t("cli.help.run_simulate"))

    sync = commands.add_parser("sync", help=t("cli.help.sync"))
    sync.add_argument("--guild", type=int, help=t("cli.help.sync_guild"))

    migrate = commands.add_parser("migrate-db", help=t("cli.help.migrate_db"))
    migrate.add_argument(
        "--from", dest="source", required=True, metavar="sqlite:///PATH",
        help=t("cli.help.migrate_from"),
    )  # fmt: skip
    migrate.add_argument(
        "--to", dest="target", required=True, metavar="postgresql://...",
        help=t("cli.help.migrate_to"),
    )  # fmt: skip

    _add_simulate(commands.add_parser("simulate", help=t("cli.help.simulate")))
    _add_generate(commands.add_parser("generate", help=t("cli.help.generate")))
    _add_task(commands.add_parser("task", help=t("cli.help.task")))
    return parser


def _add_simulate(simulate: argparse.ArgumentParser) -> None:
    simulate.add_argument("--host", default="127.0.0.1", help=t("cli.help.simulate_host"))
    simulate.add_argument("--port", type=int, default=8100, help=t("cli.help.simulate_port"))
    simulate.add_argument(
        "--submitted-seconds", type=float, default=1.0, metavar="S",
        help=t("cli.help.submitted_seconds"),
    )  # fmt: skip
    simulate.add_argument(
        "--processing-seconds", type=float, default=5.0, metavar="S",
        help=t("cli.help.processing_seconds"),
    )  # fmt: skip
    simulate.add_argument(
        "--failure-rate", type=float, default=0.0, metavar="P", help=t("cli.help.failure_rate")
    )


def _add_generate(generate: argparse.ArgumentParser) -> None:
    kinds = generate.add_subparsers(dest="kind", required=True, parser_class=_Parser)
    most = t("cli.help.at_most_chars", chars=f"{MAX_PROMPT_CHARS:,}")
    repeat = t("cli.help.repeat", most=MAX_INPUT_IMAGES)
    image = kinds.add_parser("image", help=t("cli.help.image"))
    image.add_argument(
        "--subject", action="append", required=True, type=Path, metavar="PATH",
        help=t("cli.help.subject", repeat=repeat),
    )  # fmt: skip
    image.add_argument("--scene", type=Path, metavar="PATH", help=t("cli.help.scene"))
    image.add_argument("--style", type=Path, metavar="PATH", help=t("cli.help.style"))
    image.add_argument("--prompt", help=t("cli.help.image_prompt", most=most))
    image.add_argument(
        "-n", type=_int_between(IMAGE_COUNT_MIN, IMAGE_COUNT_MAX), default=DEFAULT_IMAGE_COUNT,
        help=t("cli.help.count", low=IMAGE_COUNT_MIN, high=IMAGE_COUNT_MAX,
               default=DEFAULT_IMAGE_COUNT),
    )  # fmt: skip
    image.add_argument(
        "--aspect-ratio", default=DEFAULT_IMAGE_ASPECT_RATIO, choices=IMAGE_ASPECT_RATIOS,
        help=t("cli.help.aspect_ratio", default=DEFAULT_IMAGE_ASPECT_RATIO),
    )  # fmt: skip
    image.add_argument("--model", choices=IMAGE_MODELS, help=t("cli.help.model"))
    video = kinds.add_parser("video", help=t("cli.help.video"))
    video.add_argument(
        "--image", action="append", required=True, type=Path, metavar="PATH",
        help=t("cli.help.video_image", repeat=repeat),
    )  # fmt: skip
    video.add_argument("--prompt", required=True, help=t("cli.help.video_prompt", most=most))
    video.add_argument(
        "--mode", default=DEFAULT_VIDEO_MODE, choices=VIDEO_MODES,
        help=t("cli.help.mode", default=DEFAULT_VIDEO_MODE),
    )  # fmt: skip
    video.add_argument(
        "--duration", default=DEFAULT_VIDEO_DURATION, choices=VIDEO_DURATIONS,
        help=t("cli.help.duration", default=DEFAULT_VIDEO_DURATION),
    )  # fmt: skip
    video.add_argument(
        "--aspect-ratio", default=DEFAULT_VIDEO_ASPECT_RATIO, choices=VIDEO_ASPECT_RATIOS,
        help=t("cli.help.aspect_ratio", default=DEFAULT_VIDEO_ASPECT_RATIO),
    )  # fmt: skip
    for sub in (image, video):
        sub.add_argument("--negative-prompt", help=t("cli.help.negative_prompt", most=most))
        sub.add_argument("--out", type=Path, help=t("cli.help.out"))
        sub.add_argument("--json", action="store_true", help=t("cli.help.json_object"))
        sub.add_argument("--simulate", action="store_true", help=t("cli.help.simulate_flag"))
        sub.add_argument(
            "--timeout", type=float, default=1800.0, help=t("cli.help.timeout", default=1800)
        )


def _add_task(task: argparse.ArgumentParser) -> None:
    actions = task.add_subparsers(dest="action", required=True, parser_class=_Parser)
    get = actions.add_parser("get", help=t("cli.help.task_get"))
    get.add_argument("kind", choices=KINDS, help=t("cli.help.kind"))
    get.add_argument("id", type=_non_empty, help=t("cli.help.task_id"))
    listing = actions.add_parser("list", help=t("cli.help.task_list"))
    listing.add_argument("kind", choices=KINDS, help=t("cli.help.kind"))
    listing.add_argument(
        "--page", type=_int_between(1, 1000), default=1,
        help=t("cli.help.page", low=1, high=1000, default=1),
    )  # fmt: skip
    listing.add_argument(
        "--page-size", type=_int_between(1, 500), default=30,
        help=t("cli.help.page_size", low=1, high=500, default=30),
    )  # fmt: skip
    for sub in (get, listing):
        sub.add_argument("--json", action="store_true", help=t("cli.help.json"))
        sub.add_argument("--simulate", action="store_true", help=t("cli.help.simulate_flag"))


def _int_between(low: int, high: int) -> Callable[[str], int]:
    """An argparse type; the parser prefixes its complaint with the flag."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                t("cli.arg.not_a_whole_number", low=low, high=high, text=repr(text))
            ) from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(
                t("cli.arg.out_of_range", low=low, high=high, value=value)
            )
        return value

    return parse


def _non_empty(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError(t("cli.arg.empty_task_id"))
    return text.strip()
