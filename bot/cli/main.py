"""The ``kling-bot`` command's entry point: parse, set up logging, run one command, exit.

Errors are one or two plain lines on stderr, never a traceback (``-v`` logs it); the exit
codes are ``bot.cli.errors``'.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import SecretStr

from bot.cli.errors import EXIT_CONFIG, EXIT_INTERRUPTED, EXIT_OK, CliError, describe_unexpected
from bot.cli.generate import generate
from bot.cli.migrate import migrate_database
from bot.cli.parser import build_parser
from bot.cli.task import show_tasks
from bot.config import (
    SIMULATOR_ACCESS_KEY,
    SIMULATOR_SECRET_KEY,
    ConfigError,
    Settings,
    load_settings,
)
from bot.logs import SecretFilter, setup_logging
from bot.text import t

log = logging.getLogger(__name__)


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
        return _fail(secret_filter, t("cli.interrupted"), EXIT_INTERRUPTED)
    except Exception as exc:  # the contract: one plain line, never a traceback (-v shows it)
        log.debug("the traceback of the unexpected error", exc_info=exc)
        return _fail(secret_filter, describe_unexpected(exc), EXIT_CONFIG)


def _fail(secret_filter: SecretFilter, message: str, exit_code: int) -> int:
    """The line that says how the command ended, masked as the log is (it may quote an
    exception's text)."""
    print(f"kling-bot: {secret_filter.mask(message)}", file=sys.stderr)
    return exit_code


async def _dispatch(args: argparse.Namespace, secret_filter: SecretFilter) -> int:
    overrides: dict[str, Any] = (
        {"kling_provider": "simulator"} if args.__dict__.get("simulate") else {}
    )
    settings = load_settings(**overrides)
    secret_filter.hide(*_configured_secrets(settings))
    if args.command == "simulate":
        return await _serve_simulator(args)
    if args.command in ("run", "worker", "sync"):
        from bot.discord import runner  # the Discord side, only here

        logging.getLogger().setLevel(logging.DEBUG if args.verbose else settings.log_level)
        if args.command == "run":
            await runner.run_bot(settings, simulate=args.simulate)
        elif args.command == "worker":
            await runner.run_worker(settings, simulate=args.simulate)
        else:
            await runner.sync_commands(settings, args.guild)
        return EXIT_OK
    if args.command == "migrate-db":
        return await migrate_database(args.source, args.target)
    if args.command == "generate":
        return await generate(settings, args)
    return await show_tasks(settings, args)


def _configured_secrets(settings: Settings) -> list[str]:
    """The values of every secret setting (the bot token, the Kling keys, WEBHOOK_SECRET)."""
    values = (getattr(settings, name) for name in type(settings).model_fields)
    return [value.get_secret_value() for value in values if isinstance(value, SecretStr)]


async def _serve_simulator(args: argparse.Namespace) -> int:
    from kling_sim import Faults, KlingSimulator, SimulatorConfig
    from kling_sim.media import VIDEO_EXTRA, video_encoder_missing

    config = SimulatorConfig(
        submitted_seconds=args.submitted_seconds,
        processing_seconds=args.processing_seconds,
        faults=Faults(task_failure_rate=args.failure_rate),
    )
    simulator = KlingSimulator(config)
    try:
        base_url = await simulator.start(args.host, args.port)
        print(t("cli.simulate.listening", base_url=base_url), flush=True)
        print(
            t("cli.simulate.how_to_use", base_url=base_url, access_key=SIMULATOR_ACCESS_KEY,
              secret_key=SIMULATOR_SECRET_KEY),
            flush=True,
        )  # fmt: skip
        if video_encoder_missing():
            print(t("cli.simulate.no_videos", extra=VIDEO_EXTRA), flush=True)
        await asyncio.Event().wait()
    finally:
        await simulator.close()
    return EXIT_OK
