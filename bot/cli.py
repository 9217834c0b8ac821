"""The ``kling-bot`` command: run, sync, simulate, generate, task.

Exit codes (scripts rely on them): 0 success; 1 the task failed at Kling; 2 bad usage or bad
input (nothing submitted, no credit spent); 3 configuration, authentication or API error.
Errors are one or two plain lines on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import logging
import re
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import aiohttp
from pydantic import SecretStr, ValidationError

from bot.config import ConfigError, Settings, load_settings
from bot.kling.client import NOT_FOUND_CODES
from bot.kling.errors import (
    KlingBillingError,
    KlingConfigError,
    KlingError,
    KlingInvalidRequest,
    KlingNetworkError,
    KlingPolicyError,
)
from bot.kling.models import (
    IMAGE_ASPECT_RATIOS,
    IMAGE_MODELS,
    MAX_INPUT_IMAGES,
    MAX_PROMPT_CHARS,
    VIDEO_ASPECT_RATIOS,
    ImageTaskRequest,
    KlingTask,
    TaskKind,
    TaskStatus,
    VideoTaskRequest,
)
from bot.logs import SecretFilter, setup_logging
from bot.text import t

log = logging.getLogger(__name__)

EXIT_OK, EXIT_TASK_FAILED, EXIT_BAD_INPUT, EXIT_CONFIG = 0, 1, 2, 3


class CliError(Exception):
    """An error to print as is, with its exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # Two lines, not argparse's whole usage block: what is wrong, and where help is.
        # "argument -n: must be 1..9 (got 10)" reads better as "-n must be 1..9 (got 10)".
        message = re.sub(r"^argument (\S+): (?=must be )", r"\1 ", message)
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n(see: {self.prog} -h)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kling-bot", description="Kling multi-image generation for Discord.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = commands.add_parser("run", help="run the Discord bot")
    run.add_argument("--simulate", action="store_true", help="use the built-in Kling simulator")

    sync = commands.add_parser("sync", help="register the slash commands with Discord")
    sync.add_argument("--guild", type=int, help="sync to one guild at once (else globally)")

    simulate = commands.add_parser("simulate", help="run the Kling simulator on its own")
    simulate.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    simulate.add_argument(
        "--port", type=int, default=8100, help="port to listen on (default: %(default)s)"
    )
    simulate.add_argument(
        "--submitted-seconds", type=float, default=1.0, metavar="S",
        help="how long a task stays submitted (default: %(default)s)",
    )  # fmt: skip
    simulate.add_argument(
        "--processing-seconds", type=float, default=5.0, metavar="S",
        help="how long a task then processes (default: %(default)s)",
    )  # fmt: skip
    simulate.add_argument(
        "--failure-rate", type=float, default=0.0, metavar="P",
        help="share of tasks that fail with a content-safety message (0..1)",
    )  # fmt: skip

    generate = commands.add_parser("generate", help="run one task and download its results")
    kinds = generate.add_subparsers(dest="kind", required=True, parser_class=_Parser)
    most = f"at most {MAX_PROMPT_CHARS:,} characters"
    repeat = f"repeat for up to {MAX_INPUT_IMAGES}"
    image = kinds.add_parser("image", help="multi-image to image")
    image.add_argument(
        "--subject", action="append", required=True, type=Path, metavar="PATH",
        help=f"an image of a subject (a person, animal or thing); {repeat}",
    )  # fmt: skip
    image.add_argument("--scene", type=Path, metavar="PATH", help="an image of the setting")
    image.add_argument("--style", type=Path, metavar="PATH", help="an image whose style to use")
    image.add_argument("--prompt", help=f"what to make of the images, {most}")
    image.add_argument(
        "-n", type=_int_between(1, 9), default=1, help="images to generate, 1..9 (default: 1)"
    )
    image.add_argument(
        "--aspect-ratio",
        default="16:9",
        choices=IMAGE_ASPECT_RATIOS,
        help="width:height (default: 16:9)",
    )
    image.add_argument("--model", choices=IMAGE_MODELS, help="default: KLING_IMAGE_MODEL")
    video = kinds.add_parser("video", help="multi-image to video")
    video.add_argument(
        "--image", action="append", required=True, type=Path, metavar="PATH",
        help=f"an image to put in the video; {repeat}",
    )  # fmt: skip
    video.add_argument("--prompt", required=True, help=f"what happens in the video, {most}")
    video.add_argument(
        "--mode", default="std", choices=("std", "pro"),
        help="pro: higher quality for more credits (default: std)",
    )  # fmt: skip
    video.add_argument("--duration", default="5", choices=("5", "10"), help="seconds (default: 5)")
    video.add_argument(
        "--aspect-ratio",
        default="16:9",
        choices=VIDEO_ASPECT_RATIOS,
        help="width:height (default: 16:9)",
    )
    for sub in (image, video):
        sub.add_argument("--negative-prompt", help=f"what to keep out of the results, {most}")
        sub.add_argument("--out", type=Path, help="default: ./out/<task id>/")
        sub.add_argument("--json", action="store_true", help="print one JSON object")
        sub.add_argument("--simulate", action="store_true", help="use the built-in simulator")
        sub.add_argument(
            "--timeout",
            type=float,
            default=1800.0,
            help="seconds to wait for the result (default: 1800)",
        )

    task = commands.add_parser("task", help="Kling's view of tasks")
    actions = task.add_subparsers(dest="action", required=True, parser_class=_Parser)
    get = actions.add_parser("get", help="one task, by task id or external task id")
    get.add_argument("kind", choices=[k.value for k in TaskKind], help="image or video")
    get.add_argument("id", type=_non_empty, help="Kling's task id or the external task id")
    listing = actions.add_parser("list", help="recent tasks, newest first")
    listing.add_argument("kind", choices=[k.value for k in TaskKind], help="image or video")
    listing.add_argument(
        "--page", type=_int_between(1, 1000), default=1, help="which page, 1..1000 (default: 1)"
    )
    listing.add_argument(
        "--page-size",
        type=_int_between(1, 500),
        default=30,
        help="tasks per page, 1..500 (default: 30)",
    )
    for sub in (get, listing):
        sub.add_argument("--json", action="store_true", help="print JSON")
        sub.add_argument("--simulate", action="store_true", help="use the built-in simulator")
    return parser


def _int_between(low: int, high: int) -> Callable[[str], int]:
    """An argparse type; the parser prefixes its complaint with the flag."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be a whole number {low}..{high} (got {text!r})"
            ) from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {low}..{high} (got {value})")
        return value

    return parse


def _non_empty(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("the task id is empty")
    return text.strip()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # The client's retry warnings are for the bot's log; a one-shot command reports only how
    # it ended (-v shows every step).
    secret_filter = setup_logging(logging.DEBUG if args.verbose else logging.ERROR)
    try:
        return asyncio.run(_dispatch(args, secret_filter))
    except CliError as exc:
        return _fail(secret_filter, str(exc), exc.exit_code)
    except ConfigError as exc:
        return _fail(secret_filter, str(exc), EXIT_CONFIG)
    except KeyboardInterrupt:
        return _fail(secret_filter, "interrupted", 130)
    except Exception as exc:  # the contract: one plain line, never a traceback (-v shows it)
        log.debug("the traceback of the unexpected error", exc_info=exc)
        return _fail(secret_filter, _describe_unexpected(exc), EXIT_CONFIG)


def _fail(secret_filter: SecretFilter, message: str, exit_code: int) -> int:
    """The line that says how the command ended, masked as the log is (it may quote an
    exception's text)."""
    print(f"kling-bot: {secret_filter.mask(message)}", file=sys.stderr)
    return exit_code


def _describe_unexpected(exc: Exception) -> str:
    import discord

    if isinstance(exc, discord.LoginFailure):
        return "Discord refused DISCORD_TOKEN: copy the bot token again from the developer portal"
    if isinstance(exc, discord.PrivilegedIntentsRequired):
        return "Discord refused the bot's intents: the bot needs no privileged intent"
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        return f"{exc.strerror}: another program uses WEBHOOK_PORT; set WEBHOOK_PORT to a free port"
    return f"unexpected error: {type(exc).__name__}: {exc} (run with -v for details)"


async def _dispatch(args: argparse.Namespace, secret_filter: SecretFilter) -> int:
    overrides: dict[str, Any] = (
        {"kling_provider": "simulator"} if args.__dict__.get("simulate") else {}
    )
    settings = load_settings(**overrides)
    secret_filter.hide(*_configured_secrets(settings))
    if args.command == "simulate":
        return await _serve_simulator(args)
    if args.command in ("run", "sync"):
        from bot.discord.runner import run_bot, sync_commands

        logging.getLogger().setLevel(logging.DEBUG if args.verbose else settings.log_level)
        if args.command == "run":
            await run_bot(settings, simulate=args.simulate)
        else:
            await sync_commands(settings, args.guild)
        return EXIT_OK
    if args.command == "generate":
        return await _generate(settings, args)
    return await _task(settings, args)


def _configured_secrets(settings: Settings) -> list[str]:
    """The values of every secret setting (the bot token, the Kling keys, WEBHOOK_SECRET)."""
    values = (getattr(settings, name) for name in type(settings).model_fields)
    return [value.get_secret_value() for value in values if isinstance(value, SecretStr)]


async def _serve_simulator(args: argparse.Namespace) -> int:
    from bot.config import SIMULATOR_ACCESS_KEY, SIMULATOR_SECRET_KEY
    from kling_sim.simulator import Faults, KlingSimulator, SimulatorConfig

    config = SimulatorConfig(
        submitted_seconds=args.submitted_seconds,
        processing_seconds=args.processing_seconds,
        faults=Faults(task_failure_rate=args.failure_rate),
    )
    simulator = KlingSimulator(config)
    try:
        base_url = await simulator.start(args.host, args.port)
        print(f"Kling simulator listening on {base_url} (Ctrl+C to stop)", flush=True)
        print(
            f"Use it with KLING_PROVIDER=simulator KLING_BASE_URL={base_url}, or as the official "
            f"API with KLING_ACCESS_KEY={SIMULATOR_ACCESS_KEY} "
            f"KLING_SECRET_KEY={SIMULATOR_SECRET_KEY}",
            flush=True,
        )
        await asyncio.Event().wait()
    finally:
        await simulator.close()
    return EXIT_OK


@contextlib.asynccontextmanager
async def kling_session(
    settings: Settings, *, simulate: bool = False
) -> AsyncIterator[tuple[Settings, Any, aiohttp.ClientSession]]:
    """A client on one shared session; with the simulator provider, the simulator in-process.

    ``simulate`` (the ``--simulate`` flag) always starts one here, whatever ``KLING_BASE_URL``
    says: a flag that means "no credits" must never reach a real API.
    """
    from bot.kling.client import KlingClient

    async with contextlib.AsyncExitStack() as stack:
        if settings.simulated or simulate:
            from kling_sim.simulator import simulated_settings

            settings = await simulated_settings(settings, stack, force=simulate)
        settings.require_kling_credentials()
        session = await stack.enter_async_context(aiohttp.ClientSession())
        yield settings, KlingClient.from_settings(settings, session), session


async def _generate(settings: Settings, args: argparse.Namespace) -> int:
    from bot.kling.images import ImageRejected, prepare_images

    kind = TaskKind(args.kind)
    _check_prompts(args)
    inputs = _read_inputs(args, kind)
    try:
        prepared = await prepare_images(inputs, fit=settings.image_fit)
    except ImageRejected as exc:
        raise CliError(str(exc), EXIT_BAD_INPUT) from None
    for image in prepared:
        for change in image.changes:
            _progress(f"{image.label}: {change}")
    request = _build_request(settings, args, kind, [image.base64() for image in prepared])

    async with kling_session(settings, simulate=args.simulate) as (settings, client, session):
        try:
            task = await _submit(client, request)
            task = await _wait(client, kind, task, wait_limit=args.timeout)
        except KlingError as exc:
            raise CliError(_kling_failure(exc, settings), EXIT_CONFIG) from None
        if task.task_status is TaskStatus.FAILED:
            reason = task.task_status_msg or "no reason given"
            if args.json:
                print(json.dumps(_summary(task, [])))
            else:
                print(f"kling-bot: task {task.task_id} failed: {reason}", file=sys.stderr)
            return EXIT_TASK_FAILED
        out_dir = args.out or Path("out") / task.task_id
        paths = await _download(session, settings, task, out_dir)
    if args.json:
        print(json.dumps(_summary(task, paths)))
    else:
        deduction = task.final_unit_deduction
        credits = f", {t('count.credit', count=deduction)}" if deduction else ""
        _progress(f"task {task.task_id} succeeded{credits}; {t('count.file', count=len(paths))}:")
        for path in paths:
            print(path)
    return EXIT_OK


def _check_prompts(args: argparse.Namespace) -> None:
    """Kling's length limit, counted in words before any image is read or any credit spent."""
    for name, what in (("prompt", "the prompt"), ("negative_prompt", "the negative prompt")):
        text = getattr(args, name)
        if text is not None and len(text) > MAX_PROMPT_CHARS:
            raise CliError(
                f"{what} is {len(text):,} characters; Kling takes at most {MAX_PROMPT_CHARS:,}",
                EXIT_BAD_INPUT,
            )


def _read_inputs(args: argparse.Namespace, kind: TaskKind) -> list[tuple[str, bytes]]:
    if kind is TaskKind.IMAGE:
        named = [(f"subject{i}", path) for i, path in enumerate(args.subject, 1)]
        named += [(label, path) for label, path in (("scene", args.scene), ("style", args.style))]
        limit, flag = MAX_INPUT_IMAGES, "--subject"
    else:
        named = [(f"image{i}", path) for i, path in enumerate(args.image, 1)]
        limit, flag = MAX_INPUT_IMAGES, "--image"
    if sum(label.startswith(("subject", "image")) for label, _ in named) > limit:
        raise CliError(f"at most {limit} {flag} images are allowed", EXIT_BAD_INPUT)
    inputs = []
    for label, path in named:
        if path is None:
            continue
        try:
            inputs.append((label, path.read_bytes()))
        except OSError as exc:
            raise CliError(f"{label}: cannot read {path}: {exc.strerror}", EXIT_BAD_INPUT) from None
    return inputs


def _build_request(
    settings: Settings, args: argparse.Namespace, kind: TaskKind, images: list[str]
) -> ImageTaskRequest | VideoTaskRequest:
    common = {"prompt": args.prompt, "negative_prompt": args.negative_prompt}
    try:
        if kind is TaskKind.IMAGE:
            roles = {"scene_image": args.scene, "style_image": args.style}
            subjects = images[: len(args.subject)]
            extra = iter(images[len(args.subject) :])
            optional = {field: next(extra) for field, path in roles.items() if path is not None}
            return ImageTaskRequest(
                **common,
                **optional,
                subject_images=subjects,
                n=args.n,
                aspect_ratio=args.aspect_ratio,
                model_name=args.model or settings.kling_image_model,
            )
        return VideoTaskRequest(
            **common,
            images=images,
            mode=args.mode,
            duration=args.duration,
            aspect_ratio=args.aspect_ratio,
        )
    except ValidationError as exc:  # the checks above leave little: a blank --prompt, say
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else "request"
        flag = _FLAGS.get(field, "--" + field.replace("_", "-"))
        problem = (
            "is empty" if error["type"] == "string_too_short" else f"is refused: {error['msg']}"
        )
        raise CliError(f"{flag} {problem}", EXIT_BAD_INPUT) from None


# The flag of each request field whose name does not say it.
_FLAGS = {"n": "-n", "subject_images": "--subject", "images": "--image", "model_name": "--model"}


async def _submit(client: Any, request: ImageTaskRequest | VideoTaskRequest) -> KlingTask:
    try:
        task = await client.create_task(request)
    except (KlingInvalidRequest, KlingPolicyError) as exc:
        raise CliError(f"Kling refused the request: {exc.message}", EXIT_BAD_INPUT) from None
    _progress(f"submitted task {task.task_id} ({task.external_task_id})")
    return task


async def _wait(client: Any, kind: TaskKind, task: KlingTask, *, wait_limit: float) -> KlingTask:
    """Poll one task until it ends, printing its state and the elapsed time."""
    started = time.monotonic()
    delay = 1.0
    last_status = None
    while not task.is_terminal:
        elapsed = time.monotonic() - started
        if elapsed > wait_limit:
            raise CliError(
                f"task {task.task_id} did not finish within {wait_limit:.0f} s; "
                f"check it later with: kling-bot task get {kind.value} {task.task_id}",
                EXIT_CONFIG,
            )
        if task.task_status != last_status or sys.stderr.isatty():
            _progress(f"{task.task_status.value} · {elapsed:.0f} s", same_line=sys.stderr.isatty())
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
        raise CliError(f"task {task.task_id} succeeded but {exc}", EXIT_CONFIG) from None


async def _task(settings: Settings, args: argparse.Namespace) -> int:
    kind = TaskKind(args.kind)
    async with kling_session(settings, simulate=args.simulate) as (settings, client, _session):
        try:
            if args.action == "get":
                tasks = [await client.get_task(kind, args.id)]
            else:
                tasks = await client.list_tasks(kind, args.page, args.page_size)
        except KlingError as exc:
            if args.action == "get" and exc.code in NOT_FOUND_CODES:
                raise CliError(
                    f"Kling has no {kind.value} task {args.id!r} (give a task id or an external "
                    f"task id of this account; Kling keeps tasks for 30 days)",
                    EXIT_BAD_INPUT,
                ) from None
            if isinstance(exc, KlingInvalidRequest):
                raise CliError(
                    f"Kling refused the request: {exc.message}", EXIT_BAD_INPUT
                ) from None
            raise CliError(_kling_failure(exc, settings), EXIT_CONFIG) from None
    if args.json:
        payload = [task.model_dump(mode="json") for task in tasks]
        print(json.dumps(payload[0] if args.action == "get" else payload))
        return EXIT_OK
    for task in tasks:
        line = f"{task.task_id}  {task.task_status.value:<10}  {task.external_task_id or '-'}"
        if task.final_unit_deduction:
            line += f"  {t('count.credit', count=task.final_unit_deduction)}"
        if task.task_status_msg and task.task_status is TaskStatus.FAILED:
            line += f"  {task.task_status_msg}"
        print(line)
        for url in task.result_urls():
            print(f"    {url}")
    if not tasks:
        print("no tasks")
    return EXIT_OK


def _kling_failure(exc: KlingError, settings: Settings) -> str:
    """Kling's error, and what the operator can do about it from the command line."""
    if isinstance(exc, KlingNetworkError):
        return describe_unreachable(exc, settings)
    if exc.retryable:
        return f"{exc} (gave up after KLING_MAX_ATTEMPTS tries; try again later)"
    if isinstance(exc, KlingConfigError):
        return f"{exc} (check KLING_PROVIDER, KLING_BASE_URL and the keys)"
    if isinstance(exc, KlingBillingError):
        return f"{exc} (the Kling account has no credits left)"
    return str(exc)


def describe_unreachable(exc: KlingNetworkError, settings: Settings) -> str:
    """A network failure in words: no operation or exception class names."""
    return (
        f"cannot reach Kling at {settings.kling_base()}: {_network_cause(exc.__cause__, settings)}"
        " (check KLING_BASE_URL, or try again later)"
    )


_ERRNO_WORDS = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "the connection was reset",
    errno.ETIMEDOUT: "the connection timed out",
    errno.EHOSTUNREACH: "no route to the host",
    errno.ENETUNREACH: "the network is unreachable",
}


def _network_cause(cause: BaseException | None, settings: Settings) -> str:
    # Subclasses before their bases: a DNS or TLS failure is a ClientConnectorError too (and a
    # TLS error's errno is OpenSSL's, not the OS's), a connect timeout a TimeoutError too.
    if isinstance(cause, aiohttp.ClientConnectorDNSError):
        return "its host name is unknown"
    if isinstance(cause, aiohttp.ClientConnectorCertificateError):
        return "its TLS certificate is not trusted"
    if isinstance(cause, aiohttp.ClientSSLError):
        return "the TLS handshake failed"
    if isinstance(cause, aiohttp.ServerTimeoutError):  # the only aiohttp timeout the client sets
        return f"no connection within {settings.kling_connect_timeout:g} s"
    if isinstance(cause, TimeoutError):
        return f"no answer within {settings.kling_request_timeout:g} s"
    if isinstance(cause, aiohttp.ServerDisconnectedError):
        return "the server closed the connection without answering"
    if isinstance(cause, OSError) and cause.errno in _ERRNO_WORDS:
        return _ERRNO_WORDS[cause.errno]
    return "the connection failed"


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


def _progress(message: str, *, same_line: bool = False) -> None:
    if same_line:
        print(f"\r\033[K{message}", end="", file=sys.stderr, flush=True)
    else:
        print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
