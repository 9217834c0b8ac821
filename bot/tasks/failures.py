"""Why a task failed or could not be delivered: a code and its parameters, never a sentence.

The store keeps ``failure_code``/``failure_params`` (and ``delivery_error_code``/``..._params``);
the words come from the catalogue (``bot/text/locales/<locale>/tasks.po``, key
``failure.<code>``) when they are shown, so a reply can be in the reader's language. Rows from
before the codes keep their English prose in ``failure_reason``/``delivery_error``, and are
shown as they are.

Parameters are plain values (str, int, float). Two naming rules let a parameter carry words of
its own, looked up in the same language when shown: ``<name>_key`` is a catalogue key whose
sentence fills ``{<name>}``; ``<name>_clause`` the same, cut to its first clause (Kling's
"Kling is busy right now; the bot will try again shortly." reads "Kling is busy right now").
A ``seconds`` parameter fills ``{duration}`` with words ("5 minutes").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bot.kling.errors import KlingError
from bot.text import t

__all__ = [
    "Failure",
    "FailureParams",
    "describe_delivery_error",
    "describe_failure",
    "duration_words",
    "kling_gave_up",
    "kling_refused",
]

FailureParams = dict[str, str | int | float]

# --- the codes (each is the catalogue key "failure.<code>") ---------------------------------

# Before anything reached Kling: no credits were used.
INTERRUPTED_BEFORE_SUBMIT = "interrupted_before_submit"
INPUTS_NOT_STORED = "inputs_not_stored"
INPUTS_UNREADABLE = "inputs_unreadable"
REQUEST_UNUSABLE = "request_unusable"
NOT_SUBMITTED = "not_submitted"
TOO_MANY_IMAGES = "too_many_images"  # {slots} {limit}
KIND_UNAVAILABLE = "kind_unavailable"  # {kind}
KLING_REFUSED = "kling_refused"  # {error_key} {message}: a refusal, in Kling's own words too
KLING_REFUSED_PLAIN = "kling_refused_plain"  # {error_key}
KLING_GAVE_UP = "kling_gave_up"  # {error_clause} {tries}
# At Kling.
KLING_FAILED = "kling_failed"  # {message}
KLING_FAILED_SILENTLY = "kling_failed_silently"
KLING_TIMEOUT = "kling_timeout"  # {seconds}
# Fetching the results (bot/tasks/results.py).
RESULTS_NONE = "results_none"
RESULTS_BAD_SCHEME = "results_bad_scheme"  # {scheme}
RESULTS_INVALID_ADDRESS = "results_invalid_address"
RESULTS_PRIVATE_ADDRESS = "results_private_address"
RESULTS_GONE = "results_gone"  # {status}
RESULTS_HTTP = "results_http"  # {status}
RESULTS_REDIRECT_NOWHERE = "results_redirect_nowhere"  # {status}
RESULTS_TOO_MANY_REDIRECTS = "results_too_many_redirects"  # {limit}
RESULTS_TOO_BIG = "results_too_big"  # {megabytes}
RESULTS_TIMED_OUT = "results_timed_out"
RESULTS_SERVER_ERROR = "results_server_error"  # {status}
RESULTS_CONNECTION_FAILED = "results_connection_failed"
# Delivery (recorded by the Discord side through TaskCore.mark_undeliverable).
DELIVERY_CANCELLED = "delivery_cancelled"
DISCORD_REFUSED = "discord_refused"  # {error}
DISCORD_REFUSED_SILENTLY = "discord_refused_silently"
CHANNEL_GONE = "channel_gone"  # {channel_id} {direct_message_key}
CHANNEL_FORBIDDEN = "channel_forbidden"  # {channel_id} {direct_message_key}
# The values of ``direct_message_key`` above (what became of the direct message instead).
DIRECT_MESSAGE_SENT = "failure.direct_message.sent"
DIRECT_MESSAGE_REFUSED = "failure.direct_message.refused"
DIRECT_MESSAGE_FAILED = "failure.direct_message.failed"  # also {status}


@dataclass(frozen=True, slots=True)
class Failure:
    """One reason, as stored: a code and its parameters."""

    code: str
    params: FailureParams = field(default_factory=dict)

    def words(self, locale: str | None = None) -> str:
        return t(f"failure.{self.code}", locale, **_filled(self.params, locale))

    def __str__(self) -> str:  # the English sentence: logs, exceptions
        return self.words()

    def as_failure(self) -> dict[str, Any]:
        """The store fields that record it as why the task failed."""
        return {"failure_code": self.code, "failure_params": dict(self.params)}

    def as_delivery_error(self) -> dict[str, Any]:
        """The store fields that record it as why the task could not be delivered."""
        return {"delivery_error_code": self.code, "delivery_error_params": dict(self.params)}


def describe_failure(record: Any, locale: str | None = None) -> str | None:
    """Why the task failed, in words (a row from before the codes: its stored prose)."""
    code = getattr(record, "failure_code", None)
    if code:
        return Failure(code, dict(getattr(record, "failure_params", None) or {})).words(locale)
    return getattr(record, "failure_reason", None)


def describe_delivery_error(record: Any, locale: str | None = None) -> str | None:
    """Why the task could not be delivered, in words (or an older row's prose)."""
    code = getattr(record, "delivery_error_code", None)
    if code:
        params = dict(getattr(record, "delivery_error_params", None) or {})
        return Failure(code, params).words(locale)
    return getattr(record, "delivery_error", None)


def kling_refused(exc: KlingError) -> Failure:
    """A refusal from Kling: the member-facing sentence plus Kling's own words, which name the
    offending field (left out when the sentence says it already)."""
    if exc.message and exc.message not in exc.user_message:
        return Failure(KLING_REFUSED, {"error_key": exc.text_key, "message": exc.message})
    return Failure(KLING_REFUSED_PLAIN, {"error_key": exc.text_key})


def kling_gave_up(exc: KlingError, *, tries: int) -> Failure:
    """The last create failed: a refusal in Kling's words; after failures worth retrying
    (Kling has confirmed it has no such task), that no credit was used."""
    if not exc.retryable:
        return kling_refused(exc)
    return Failure(KLING_GAVE_UP, {"error_clause": exc.text_key, "tries": tries})


def duration_words(seconds: float, locale: str | None = None) -> str:
    if seconds >= 2 * 3600:
        return t("failure.duration.hours", locale, count=f"{seconds / 3600:g}")
    if seconds >= 120:
        return t("failure.duration.minutes", locale, count=round(seconds / 60))
    return t("failure.duration.seconds", locale, count=f"{seconds:g}")


def _filled(params: Mapping[str, Any], locale: str | None) -> dict[str, Any]:
    """The placeholders of a stored reason: the naming rules of the module docstring. A
    sentence looked up by a ``_key``/``_clause`` parameter gets the plain parameters too."""
    plain = {name: value for name, value in params.items() if not name.endswith(_WORDS)}
    filled: dict[str, Any] = dict(plain)
    for name, value in params.items():
        if name.endswith("_key"):
            filled[name.removesuffix("_key")] = t(str(value), locale, **plain)
        elif name.endswith("_clause"):
            sentence = t(str(value), locale, **plain)
            filled[name.removesuffix("_clause")] = sentence.partition(";")[0].rstrip(".")
    if "seconds" in plain:
        filled["duration"] = duration_words(float(plain["seconds"]), locale)
    return filled


_WORDS = ("_key", "_clause")
