"""Kling's failures as a small exception hierarchy.

Kling reports what went wrong in the body's ``code``, not the HTTP status (billing problems come
with HTTP 429, for example), so every decision here is made on the code. What a member is told
comes from the text catalogue (``kling.po``): each class names its key, ``text_key``.
"""

from __future__ import annotations

from typing import Any

from bot.text import t


class CatalogueText:
    """``user_message``: the sentence of the class's ``text_key``, read from the catalogue when
    it is used, on the class (``KlingPolicyError.user_message``) as on an instance. An instance
    may still be given a sentence of its own by assignment."""

    def __get__(self, obj: object | None, owner: type[Any] | None = None) -> str:
        cls: type[Any] = owner if owner is not None else type(obj)
        return t(cls.text_key)


class KlingError(Exception):
    """Base of every error from talking to Kling.

    ``message`` is Kling's own text (for logs and moderators); ``user_message`` is one short
    sentence fit to show a Discord member, the catalogue's ``text_key``.
    """

    text_key = "kling.error.generic"
    user_message = CatalogueText()
    retryable = False

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        http_status: int | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.http_status = http_status
        self.request_id = request_id

    def __str__(self) -> str:
        prefix = f"Kling error {self.code}: " if self.code is not None else ""
        return f"{prefix}{self.message}"


class KlingConfigError(KlingError):
    """Authentication, permission or endpoint problems: only the operator can fix them."""

    text_key = "kling.error.config"


class KlingAuthExpired(KlingConfigError):
    """The JWT is expired or not yet valid (1003, 1004): sign a new one and try once more."""

    retryable = True


class KlingBillingError(KlingError):
    """The account is in arrears or out of credits (1100-1102)."""

    text_key = "kling.error.billing"


class KlingInvalidRequest(KlingError):
    """Kling rejected a parameter (1200, 1201). The message names the field."""

    text_key = "kling.error.invalid_request"


class KlingPolicyError(KlingError):
    """Platform policy or content safety (1300, 1301)."""

    text_key = "kling.error.policy"


class KlingRateLimited(KlingError):
    """Requests too fast (1302)."""

    text_key = "kling.error.rate_limited"
    retryable = True


class KlingConcurrencyLimit(KlingError):
    """The account's concurrent tasks are all in use (1303)."""

    text_key = "kling.error.concurrency_limit"
    retryable = True


class KlingServerError(KlingError):
    """Kling's side failed (5000-5002, a 5xx, or a body we could not read)."""

    text_key = "kling.error.server"
    retryable = True


class KlingNetworkError(KlingError):
    """A timeout or a dropped connection: we do not know whether Kling saw the request."""

    text_key = "kling.error.network"
    retryable = True


_BY_CODE: dict[int, type[KlingError]] = {
    **dict.fromkeys((1000, 1001, 1002), KlingConfigError),
    **dict.fromkeys((1003, 1004), KlingAuthExpired),
    **dict.fromkeys((1100, 1101, 1102), KlingBillingError),
    1103: KlingConfigError,
    **dict.fromkeys((1200, 1201), KlingInvalidRequest),
    **dict.fromkeys((1202, 1203), KlingConfigError),
    **dict.fromkeys((1300, 1301), KlingPolicyError),
    1302: KlingRateLimited,
    1303: KlingConcurrencyLimit,
    1304: KlingConfigError,
    **dict.fromkeys((5000, 5001, 5002), KlingServerError),
}


def error_for_code(
    code: int,
    message: str,
    *,
    http_status: int | None = None,
    request_id: str | None = None,
) -> KlingError:
    """The exception for Kling's ``code``; unknown codes fall back on the HTTP status."""
    cls = _BY_CODE.get(code)
    if cls is None:
        if http_status is not None and http_status >= 500:
            cls = KlingServerError
        elif http_status == 429:
            cls = KlingRateLimited
        else:
            cls = KlingInvalidRequest
    return cls(message or f"code {code}", code=code, http_status=http_status, request_id=request_id)
