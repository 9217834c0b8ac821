"""Logging for every ``kling-bot`` command, with secrets masked at every level.

``setup_logging`` puts one stderr handler on the root logger and a ``SecretFilter`` on each root
handler. The filter is on the handlers, not on a logger, because a logger's filters never see
the records that propagate up from its children (``discord.http``'s, say). It rewrites each
record before it is formatted (the message with its arguments, the exception text, the stack),
so that no handler downstream sees the secret either.

Masked, by shape: interaction and webhook tokens in URLs (``/webhooks/<app id>/<token>``,
``/interactions/<id>/<token>/callback``; each lets anyone post as the bot for 15 minutes),
Discord interaction tokens anywhere, the value of any ``token``/``secret``/``*_key``/``password``
field in a dict, JSON or repr (discord.py's DEBUG log prints whole gateway events), bot tokens,
JWTs, ``Authorization`` header values and ``Bearer`` tokens, and Kling callback tokens
(``/kling/callback/<token>``). Masked literally: the configured secrets (``hide``).
"""

from __future__ import annotations

import logging
import re
import sys

MASK = "***"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Shorter values are no real secret, and masking every "abc" in the log would garble it.
MIN_LITERAL_CHARS = 8

_B64 = r"[A-Za-z0-9_-]"
_VALUE_CHAR = r"""[^\s'"/?#&,;)}\]]"""

# (pattern, replacement); the first group of a pattern is the context that stays.
_SHAPES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(rf"(/(?:webhooks|interactions)/\d+/){_VALUE_CHAR}+"), rf"\g<1>{MASK}"),
    (re.compile(rf"(/kling/callback/){_VALUE_CHAR}+"), rf"\g<1>{MASK}"),
    # Field names ending in token/secret/_key/password, then the value, maybe quoted or wrapped.
    (
        re.compile(
            r"""(\b\w*(?:token|secret|_key|password)"""
            # A quoted name ('token': ...), an assignment (token=...), or name:value with no
            # space: "WEBHOOK_SECRET: must be ..." (a sentence naming the setting) stays readable.
            r"""(?:['"]\s*[:=]\s*|\s*=\s*|:)(?:SecretStr\()?['"]?)"""
            rf"{_VALUE_CHAR}+",
            re.IGNORECASE,
        ),
        rf"\g<1>{MASK}",
    ),
    (
        re.compile(
            r"""(\bAuthorization['"]?\s*[:=]\s*['"]?(?:(?:Bearer|Bot|Basic)\s+)?)[^\s'",}]+""",
            re.IGNORECASE,
        ),
        rf"\g<1>{MASK}",
    ),
    (re.compile(r"(\bBearer\s+)[A-Za-z0-9._~+/=-]+"), rf"\g<1>{MASK}"),
    (re.compile(rf"\beyJ{_B64}*\.{_B64}+\.{_B64}*"), MASK),  # a JWT: {"... header first
    (re.compile(rf"\b{_B64}{{23,28}}\.{_B64}{{6,7}}\.{_B64}{{27,}}"), MASK),  # a bot token
    (re.compile(r"\baW50ZXJhY3Rpb24[A-Za-z0-9_.:=-]*"), MASK),  # base64 of "interaction..."
)


class SecretFilter(logging.Filter):
    """Masks secrets in every record that passes the handler it is attached to."""

    def __init__(self) -> None:
        super().__init__()
        self._literals: set[str] = set()
        self._literal_pattern: re.Pattern[str] | None = None
        self._exception_formatter = logging.Formatter()

    def hide(self, *values: str | None) -> None:
        """Mask these values wherever they appear (None, blank or short values are ignored)."""
        self._literals.update(v for v in values if v and len(v) >= MIN_LITERAL_CHARS)
        if self._literals:
            longest_first = sorted(self._literals, key=len, reverse=True)
            self._literal_pattern = re.compile("|".join(map(re.escape, longest_first)))

    def mask(self, text: str) -> str:
        if self._literal_pattern is not None:
            text = self._literal_pattern.sub(MASK, text)
        for pattern, replacement in _SHAPES:
            text = pattern.sub(replacement, text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken %-format must not raise into the code that logged it
            # The arguments are left out: nothing but the format says which one is a secret.
            message = f"{record.msg!s} (with arguments that do not fit the format)"
        record.msg, record.args = self.mask(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._exception_formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.mask(record.exc_text)
        if record.stack_info:
            record.stack_info = self.mask(record.stack_info)
        return True


def setup_logging(level: int | str) -> SecretFilter:
    """Log to stderr at ``level`` through a ``SecretFilter``, which is returned so that the
    caller can ``hide`` the configured secrets once it knows them."""
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(handler)
    root.setLevel(level)
    secret_filter = SecretFilter()
    for each in root.handlers:
        each.addFilter(secret_filter)
    return secret_filter
