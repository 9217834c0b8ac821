"""The text catalogue: every key the code uses exists in English, and every other language
matches English's keys and placeholders."""

from __future__ import annotations

import re
import string

import pytest

from bot.text import DEFAULT_LOCALE, catalogue, catalogue_keys, locales, t
from testing.paths import REPO_ROOT

# t("key" ... or t('key' ... : the catalogue lookups written in the code.
KEY_USE = re.compile(r"""\bt\(\s*["']([a-z0-9_.]+)["']""")


def keys_used_in_code() -> set[str]:
    used: set[str] = set()
    for folder in ("bot", "cogs"):
        for path in (REPO_ROOT / folder).rglob("*.py"):
            used.update(KEY_USE.findall(path.read_text(encoding="utf-8")))
    return used


def placeholders(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def test_every_key_the_code_uses_is_in_the_english_catalogue() -> None:
    used = keys_used_in_code()
    assert used, "the scan found no lookups at all"
    assert used - catalogue_keys(DEFAULT_LOCALE) == set()


@pytest.mark.parametrize("locale", [name for name in locales() if name != DEFAULT_LOCALE])
def test_every_language_matches_english_keys_and_placeholders(locale: str) -> None:
    english = {m.id if isinstance(m.id, str) else m.id[0]: m for m in catalogue("en") if m.id}
    for message in catalogue(locale):
        if not message.id or not message.string:
            continue
        key = message.id if isinstance(message.id, str) else message.id[0]
        assert key in english, f"{locale}: {key} is not an English key"
        forms = message.string if isinstance(message.string, tuple) else (message.string,)
        source = english[key].string
        want = placeholders(source[-1] if isinstance(source, tuple) else source)
        for form in forms:
            assert placeholders(form) <= want | {"count"}, f"{locale}: {key}: {form!r}"


def test_plural_forms_follow_the_number() -> None:
    assert t("count.credit", count=1) == "1 credit"
    assert t("count.credit", count=4) == "4 credits"
    assert t("count.credit", count="0.5") == "0.5 credits"  # Kling sends credits as text


def test_an_unknown_language_falls_back_to_english() -> None:
    assert t("count.image", "xx-YY", count=2) == "2 images"
    assert t("count.image", "en-GB", count=1) == "1 image"
