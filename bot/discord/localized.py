"""Slash-command descriptions and choice names from the catalogue, in each member's language.

Discord shows a command's description and choices in the member's language when the command
was registered with translations. ``described`` gives discord.py the English text (the default
every client falls back to) and the catalogue key; ``CatalogueTranslator`` looks each key up
in every language Discord knows when the commands are synced, and leaves out the languages
whose catalogue says nothing different from English.
"""

from __future__ import annotations

from typing import Any

from discord import Locale, app_commands
from discord.app_commands import Choice, TranslationContextTypes, locale_str

from bot.text import t


def described(key: str, /, **params: Any) -> locale_str:
    """The English words of ``key`` for discord.py, carrying the key for the translator."""
    return locale_str(t(key, None, **params), key=key, params=params)


def choice(key: str, value: str) -> Choice[str]:
    """An option's choice whose name is worded by the catalogue."""
    return Choice(name=described(key), value=value)


def plain_choices(values: tuple[str, ...]) -> list[Choice[str]]:
    """Choices named by their values (models, aspect ratios): nothing to translate."""
    return [Choice(name=value, value=value) for value in values]


class CatalogueTranslator(app_commands.Translator):
    async def translate(
        self, string: locale_str, locale: Locale, context: TranslationContextTypes
    ) -> str | None:
        key = string.extras.get("key")
        if key is None:
            return None
        words = t(key, locale.value, **string.extras.get("params", {}))
        return None if words == string.message else words
