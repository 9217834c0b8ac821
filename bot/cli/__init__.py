"""The ``kling-bot`` command: run, worker, sync, simulate, generate, task.

``main`` (``bot.cli.main``) is the console script; ``parser`` declares the commands,
``generate`` and ``task`` run the Kling ones (their client comes from the composition root,
``bot.app.open_kling``), ``errors`` turns failures into exit codes and words.
"""

from bot.cli.errors import describe_unreachable
from bot.cli.main import main
from bot.cli.parser import build_parser

__all__ = ["build_parser", "describe_unreachable", "main"]
