"""The ``Authorization`` header for each flavour: a JWT for Kling's own API, a key for gateways.

Secrets never appear in ``repr`` or ``str`` of these objects, so they are safe in logs.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import jwt

from bot.config import SIMULATOR_ACCESS_KEY, SIMULATOR_SECRET_KEY, ConfigError, Settings
from bot.text import t

_JWT_HEADERS = {"alg": "HS256", "typ": "JWT"}


class JwtAuth:
    """Kling's official scheme: an HS256 JWT with ``iss``, ``exp`` and ``nbf``, cached until it
    has less than ``refresh_margin`` seconds left."""

    def __init__(
        self,
        access_key: str,
        secret_key: str,
        *,
        ttl: float = 1800,
        refresh_margin: float = 300,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not access_key or not secret_key:
            raise ValueError("JwtAuth needs an access key and a secret key")
        if refresh_margin >= ttl:
            raise ValueError("refresh_margin must be shorter than ttl")
        self._access_key = access_key
        self._secret_key = secret_key
        self._ttl = ttl
        self._margin = refresh_margin
        self._clock = clock
        self._token: str | None = None
        self._expires_at = 0.0

    def header(self) -> str:
        now = self._clock()
        if self._token is None or self._expires_at - now < self._margin:
            expires_at = int(now + self._ttl)
            claims = {"iss": self._access_key, "exp": expires_at, "nbf": int(now - 5)}
            self._token = jwt.encode(
                claims, self._secret_key, algorithm="HS256", headers=_JWT_HEADERS
            )
            self._expires_at = expires_at
        return f"Bearer {self._token}"

    def invalidate(self) -> None:
        """Forget the cached token: the next ``header()`` signs a new one."""
        self._token = None

    def __repr__(self) -> str:
        return f"JwtAuth(access_key=<{len(self._access_key)} chars>, secret_key=<hidden>)"

    __str__ = __repr__


class BearerAuth:
    """Gateways and resellers: ``Authorization: Bearer <api key>``."""

    def __init__(self, api_key: str) -> None:
        if not api_key:
            raise ValueError("BearerAuth needs an API key")
        self._api_key = api_key

    def header(self) -> str:
        return f"Bearer {self._api_key}"

    def invalidate(self) -> None:
        """Nothing to re-sign: a static key stays what it is."""

    def __repr__(self) -> str:
        return "BearerAuth(api_key=<hidden>)"

    __str__ = __repr__


Authenticator = JwtAuth | BearerAuth


def auth_from_settings(settings: Settings) -> Authenticator:
    """The authenticator the configured flavour needs.

    The simulator signs JWTs with the public ``SIMULATOR_*`` keys unless ``KLING_ACCESS_KEY`` and
    ``KLING_SECRET_KEY`` are both set.
    """
    provider = settings.provider
    if provider.auth == "bearer":
        key = settings.kling_api_key.get_secret_value() if settings.kling_api_key else ""
        if not key:
            raise ConfigError(t("kling.settings.api_key_missing", provider=provider.name))
        return BearerAuth(key)
    access = settings.kling_access_key.get_secret_value() if settings.kling_access_key else ""
    secret = settings.kling_secret_key.get_secret_value() if settings.kling_secret_key else ""
    if settings.simulated and not (access and secret):
        access, secret = SIMULATOR_ACCESS_KEY, SIMULATOR_SECRET_KEY
    if not access or not secret:
        raise ConfigError(t("kling.settings.jwt_keys_missing", provider=provider.name))
    return JwtAuth(access, secret)
