"""Small pieces of text shared by the Discord side's messages: durations, lists, timestamps.

Each takes the reader's locale and takes its words from the catalogue (``discord.po``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import discord

from bot.text import t


def short(text: str | None, limit: int) -> str:
    """``text`` cut to ``limit`` characters (Discord refuses longer embed parts)."""
    if not text:
        return ""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def duration_words(seconds: float | None, locale: str | None = None) -> str:
    if seconds is None:
        return t("words.none", locale)
    seconds = round(seconds)
    if seconds < 60:
        return t("duration.seconds", locale, seconds=seconds)
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return t("duration.minutes", locale, minutes=minutes, seconds=f"{seconds:02d}")
    hours, minutes = divmod(minutes, 60)
    return t("duration.hours", locale, hours=hours, minutes=f"{minutes:02d}")


def one_of_words(values: Sequence[object], locale: str | None = None) -> str:
    """``std or pro``: the allowed values of an option, as a member reads them."""
    texts = [str(value) for value in values]
    if len(texts) == 1:
        return texts[0]
    return t("words.one_of", locale, first=", ".join(texts[:-1]), last=texts[-1])


def timestamp(ts: float | None, style: str = "R", locale: str | None = None) -> str:
    """A Discord timestamp: each reader's client shows it in their own time zone."""
    if ts is None:
        return t("words.none", locale)
    moment = dt.datetime.fromtimestamp(ts, tz=dt.UTC)
    return discord.utils.format_dt(moment, style)  # type: ignore[arg-type]
