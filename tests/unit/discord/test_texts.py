"""Every sentence the Discord side shows comes from the catalogue (bot/text/locales/en/
discord.po), in the reader's language: every key the code names exists in English, every key
of discord.po is used, and the refusals, embeds and command descriptions take a locale."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import discord
from babel.messages.pofile import read_po

from bot.discord import checks, embeds
from bot.discord.localized import CatalogueTranslator, described
from bot.discord.moderation import DEFAULT_NAMES
from bot.kling.models import TaskKind
from bot.kling.options import VIDEO_MODES
from bot.tasks.models import TaskState
from bot.text import DEFAULT_LOCALE, catalogue_keys, t
from testing.paths import REPO_ROOT

DISCORD_PO = REPO_ROOT / "bot" / "text" / "locales" / "en" / "discord.po"
SOURCES = [*(REPO_ROOT / "bot" / "discord").glob("*.py"), *(REPO_ROOT / "cogs").glob("*.py")]
KEY = re.compile(r"[a-z_]+(\.[a-z0-9_]+)+")
# The first part of every key the Discord side owns.
PREFIXES = {key.split(".")[0] for key in ("refused.x", "error.x", "button.x", "modal.x")}


def discord_keys() -> set[str]:
    with DISCORD_PO.open("rb") as file:
        catalogue = read_po(file)
    return {m.id if isinstance(m.id, str) else m.id[0] for m in catalogue if m.id}


def literal_keys(path: Path) -> set[str]:
    """String literals in the code that name a catalogue key of the Discord side."""
    prefixes = {key.split(".")[0] for key in discord_keys()}
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if KEY.fullmatch(node.value) and node.value.split(".")[0] in prefixes | PREFIXES:
                found.add(node.value)
    return found


def dynamic_keys() -> set[str]:
    """Keys the code builds from a value (``f"state.{state}"``)."""
    return {
        *(f"state.{state.value}" for state in TaskState),
        *(f"kind.{kind.value}" for kind in TaskKind),
        *(f"post.ready.{kind.value}" for kind in TaskKind),
        *(f"post.failed.{kind.value}" for kind in TaskKind),
        *(f"choice.mode.{mode}" for mode in VIDEO_MODES),
        *(f"config.default.{name}" for name in DEFAULT_NAMES),
    }


def test_every_key_the_discord_side_names_is_in_the_english_catalogue() -> None:
    used = set().union(*(literal_keys(path) for path in SOURCES)) | dynamic_keys()
    assert used - catalogue_keys(DEFAULT_LOCALE) == set()


def test_every_key_of_discord_po_is_used() -> None:
    used = set().union(*(literal_keys(path) for path in SOURCES)) | dynamic_keys()
    assert discord_keys() - used == set()


def test_a_refusal_is_worded_when_shown_in_the_readers_language() -> None:
    refusal = checks.Refused("refused.blocked_word", word="cube")
    assert str(refusal) == refusal.words("en-US") == t("refused.blocked_word", "en", word="cube")
    assert "“cube”" in refusal.words("fr")  # no French catalogue yet: English


def test_embeds_take_the_readers_locale() -> None:
    assert embeds.state_words(TaskState.QUEUED, "en-GB") == "Waiting for a Kling slot"


async def test_command_descriptions_are_translated_only_where_a_catalogue_differs() -> None:
    text = described("command.help")
    assert text.message == "How to use the Kling bot." and text.extras["key"] == "command.help"
    translator = CatalogueTranslator()
    assert await translator.translate(text, discord.Locale.french, None) is None  # type: ignore[arg-type]
