"""Every sentence a member or operator reads, looked up by key in gettext catalogues (Babel).

The keys are the msgids (``"refused.blocked_word"``), so the English wording can change without
touching code, and each language is one set of ``.po`` files under ``locales/<locale>/``, one
file per part of the bot (``tasks.po``, ``discord.po``, ``cli.po``). English holds every key;
another language may lack some, and English is used for those. Placeholders are ``str.format``
fields (``{word}``); plural forms are gettext's (``msgid_plural``), chosen by each language's own
plural rule, so one key reads "1 credit" and "2 credits", and the right forms in any language.
"""

from __future__ import annotations

import functools
import gettext
import io
import logging
from importlib import resources
from typing import Any

from babel.messages.catalog import Catalog
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

log = logging.getLogger(__name__)

DEFAULT_LOCALE = "en"
_LOCALES = resources.files(__package__) / "locales"


def t(
    key: str, locale: str | None = None, /, *, count: float | str | None = None, **params: Any
) -> str:
    """The sentence for ``key`` in ``locale`` (English where the language lacks it), with its
    placeholders filled in. ``count`` picks the plural form and is also a placeholder (shown as
    given: Kling reports credits as text such as ``"0.5"``)."""
    translations = _translations(_known(locale))
    if count is None:
        text = translations.gettext(key)
    else:
        text = translations.ngettext(key, key, _plural_number(count))
        params["count"] = count
    if text == key and key not in catalogue_keys(DEFAULT_LOCALE):
        log.warning("text key %r is missing from the English catalogue", key)
        return key
    try:
        return text.format(**params)
    except (KeyError, IndexError, ValueError):
        log.warning("text key %r: placeholders do not match %s", key, sorted(params))
        return text


def _plural_number(count: float | str) -> int:
    """gettext's plural rules take whole numbers; a fraction reads as plural ("0.5 credits")."""
    try:
        number = float(count)
    except ValueError:
        return 2
    return int(number) if number.is_integer() else 2


def locales() -> list[str]:
    """Every locale with a catalogue, English first."""
    names = sorted(p.name for p in _LOCALES.iterdir() if p.is_dir())
    return sorted(names, key=lambda name: name != DEFAULT_LOCALE)


def catalogue(locale: str) -> Catalog:
    """All of one language's ``.po`` files as one Babel catalogue."""
    merged = Catalog(locale=locale.replace("-", "_"), domain="kling-bot")
    folder = _LOCALES / locale
    for po in sorted((p for p in folder.iterdir() if p.name.endswith(".po")), key=str):
        with po.open("rb") as file:
            part = read_po(file, locale=locale.replace("-", "_"))
        for message in part:
            if message.id:
                merged[message.id] = message
    return merged


@functools.cache
def catalogue_keys(locale: str) -> frozenset[str]:
    keys: set[str] = set()
    for message in catalogue(locale):
        if message.id:
            keys.add(message.id if isinstance(message.id, str) else message.id[0])
    return frozenset(keys)


@functools.cache
def _known(locale: str | None) -> str:
    if not locale:
        return DEFAULT_LOCALE
    if (_LOCALES / locale).is_dir():
        return locale
    base = locale.split("-")[0]  # "en-US" -> "en"; "zh-TW" has no catalogue of its own yet
    return base if (_LOCALES / base).is_dir() else DEFAULT_LOCALE


@functools.cache
def _translations(locale: str) -> gettext.NullTranslations:
    """One language compiled in memory (no build step), falling back to English."""
    buffer = io.BytesIO()
    write_mo(buffer, catalogue(locale), use_fuzzy=False)
    buffer.seek(0)
    translations: gettext.NullTranslations = gettext.GNUTranslations(buffer)
    if locale != DEFAULT_LOCALE:
        translations.add_fallback(_translations(DEFAULT_LOCALE))
    return translations
