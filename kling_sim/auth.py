"""The simulator's sign-in check: Kling's JWT on the official paths, an API key on the others.

JWTs are HS256 with ``iss`` = the access key, ``exp``/``nbf`` checked with Kling's ~5 s leeway;
the codes are Kling's (1000-1004).
"""

from __future__ import annotations

import time

import jwt

from kling_sim.config import SimulatorConfig
from kling_sim.validation import ApiError

JWT_LEEWAY = 5.0
_CACHE_LIMIT = 4096


class Authenticator:
    """Checks the ``Authorization`` header of one request against the simulator's keys."""

    def __init__(self, config: SimulatorConfig) -> None:
        self._config = config
        self._tokens: dict[tuple[str, str, str], tuple[float, float]] = {}  # -> (exp, nbf)

    def check(self, header: str, flavour: str) -> None:
        """Raise ApiError unless ``header`` signs in on ``flavour``'s paths."""
        parts = header.split(None, 1)
        if parts and parts[0].lower() == "bearer":
            parts = parts[1:]
        token = parts[0].strip() if parts else ""
        if not token:
            raise ApiError(401, 1001, "Authorization is empty")
        if flavour != "official":
            if token not in self._config.api_keys:
                raise ApiError(401, 1000, "authentication failed: unknown API key")
            return
        cache_key = (token, self._config.access_key, self._config.secret_key)
        cached = self._tokens.get(cache_key)
        if cached is not None:  # PyJWT costs ~0.4 ms a decode; clients reuse a token for minutes
            _check_times(*cached)
            return
        exp, nbf = self._verify(token)
        if len(self._tokens) >= _CACHE_LIMIT:
            self._tokens.clear()
        self._tokens[cache_key] = (exp, nbf)

    def _verify(self, token: str) -> tuple[float, float]:
        try:
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.InvalidTokenError:
            raise ApiError(401, 1002, "Authorization is invalid: not a JWT") from None
        if claims.get("iss") != self._config.access_key:
            raise ApiError(401, 1002, "Authorization is invalid: unknown access key (iss)")
        try:
            jwt.decode(
                token,
                self._config.secret_key,
                algorithms=["HS256"],
                leeway=JWT_LEEWAY,
                options={"require": ["exp"]},
            )
        except jwt.InvalidSignatureError:
            raise ApiError(401, 1000, "authentication failed: bad signature") from None
        except jwt.ExpiredSignatureError:
            raise ApiError(401, 1004, "Authorization has expired (exp)") from None
        except jwt.ImmatureSignatureError:
            raise ApiError(401, 1003, "Authorization is not yet valid (nbf)") from None
        except jwt.InvalidTokenError as exc:
            raise ApiError(401, 1002, f"Authorization is invalid: {exc}") from None
        return float(claims["exp"]), float(claims.get("nbf") or 0)


def _check_times(exp: float, nbf: float) -> None:
    now = time.time()
    if now > exp + JWT_LEEWAY:
        raise ApiError(401, 1004, "Authorization has expired (exp)")
    if now < nbf - JWT_LEEWAY:
        raise ApiError(401, 1003, "Authorization is not yet valid (nbf)")
