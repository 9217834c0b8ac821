"""The Discord side's shape (issue 12): one-way imports, no module over 400 lines, no reach into
the store, option values from ``bot.kling.options`` only, cogs that only declare commands, one
submission use-case, and no code only tests called.

Read from the source with ``ast``: what a module imports or writes, whatever runs.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.kling import options
from bot.tasks.models import TaskState
from testing.paths import REPO_ROOT

DISCORD = REPO_ROOT / "bot" / "discord"
COGS = REPO_ROOT / "cogs"
MAX_LINES = 400
# The bot itself, and the entry point that builds and runs it (its place is the composition root).
BUILDS_THE_BOT = {"bot.py", "runner.py"}


def modules(*folders: Path) -> list[Path]:
    return sorted(p for folder in folders for p in folder.glob("*.py"))


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts)


def imported(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top, in functions or under TYPE_CHECKING."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def nodes(path: Path) -> Iterator[ast.AST]:
    return ast.walk(ast.parse(path.read_text(encoding="utf-8")))


def test_no_module_of_the_discord_side_imports_the_bot() -> None:
    offenders = [
        module_name(path)
        for path in modules(DISCORD, COGS)
        if path.name not in BUILDS_THE_BOT and "bot.discord.bot" in imported(path)
    ]
    assert offenders == []


def test_the_modules_of_bot_discord_import_each_other_one_way() -> None:
    """No cycle among them (type-checking imports count too)."""
    names = {module_name(path): path for path in modules(DISCORD)}
    graph = {name: {i for i in imported(path) if i in names} for name, path in names.items()}
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, " -> ".join((*path, name))
        if name in done:
            return
        for other in graph[name]:
            visit(other, (*path, name))
        done.add(name)

    for name in graph:
        visit(name, ())


@pytest.mark.parametrize("path", modules(DISCORD, COGS), ids=module_name)
def test_no_module_is_over_400_lines(path: Path) -> None:
    assert len(path.read_text(encoding="utf-8").splitlines()) <= MAX_LINES


def test_the_discord_side_never_reaches_into_the_store() -> None:
    """Tasks are read through the core's read view and written through the core's methods."""
    reaches = [
        f"{module_name(path)}:{node.lineno}"
        for path in modules(DISCORD, COGS)
        for node in nodes(path)
        if isinstance(node, ast.Attribute) and node.attr == "store"
    ]
    assert reaches == []


def test_only_the_submission_use_case_starts_tasks() -> None:
    """Slash commands, Again and Animate all go through bot/discord/submission.py."""
    callers = {
        module_name(path)
        for path in modules(DISCORD, COGS)
        for node in nodes(path)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("submit", "resubmit")
        and isinstance(node.func.value, ast.Attribute)
        and node.func.value.attr in ("tracker", "core")
    }
    assert callers == {"bot.discord.submission"}


OPTION_VALUES = {
    *options.IMAGE_MODELS,
    *options.VIDEO_MODELS,
    *options.IMAGE_ASPECT_RATIOS,
    *options.VIDEO_ASPECT_RATIOS,
    *options.VIDEO_MODES,
    *options.VIDEO_DURATIONS,
}


def test_option_values_are_never_written_out_again() -> None:
    """Choices, defaults and checks read bot.kling.options: a new value is one line there."""
    written = [
        f"{module_name(path)}:{node.lineno}: {node.value!r}"
        for path in modules(DISCORD, COGS)
        for node in nodes(path)
        if isinstance(node, ast.Constant) and node.value in OPTION_VALUES
    ]
    assert written == []


def test_cogs_only_declare_commands() -> None:
    """No views, modals or embeds in cogs: those are bot.discord's."""
    found = []
    for path in modules(COGS):
        for node in nodes(path):
            if isinstance(node, ast.ClassDef):
                bases = {ast.unparse(base) for base in node.bases}
                if bases & {"discord.ui.View", "discord.ui.Modal"}:
                    found.append(f"{module_name(path)}: class {node.name}")
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "discord.Embed":
                found.append(f"{module_name(path)}:{node.lineno}: discord.Embed(...)")
    assert found == []


def test_code_only_tests_called_is_gone() -> None:
    from bot.discord.delivery import Delivery
    from bot.discord.status import StatusMessages

    assert not hasattr(Delivery, "wait_idle")
    assert "__contains__" not in vars(StatusMessages)


def test_every_state_has_choices_from_the_state_enum() -> None:
    from bot.discord.choices import STATE_CHOICES

    assert [c.value for c in STATE_CHOICES] == [s.value for s in TaskState]
