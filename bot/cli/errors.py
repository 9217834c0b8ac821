"""How a ``kling-bot`` command ends badly: its exit code and one plain line saying why.

Exit codes (scripts rely on them): 0 success; 1 the task failed at Kling; 2 bad usage or bad
input (nothing submitted, no credit spent); 3 configuration, authentication or API error.
The words come from the catalogue (``cli.po``) and name what the operator can do.
"""

from __future__ import annotations

import errno

import aiohttp

from bot.config import Settings
from bot.kling.errors import KlingBillingError, KlingConfigError, KlingError, KlingNetworkError
from bot.text import t

EXIT_OK, EXIT_TASK_FAILED, EXIT_BAD_INPUT, EXIT_CONFIG = 0, 1, 2, 3
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """An error to print as is, with its exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def kling_failure(exc: KlingError, settings: Settings) -> str:
    """Kling's error, and what the operator can do about it from the command line."""
    if isinstance(exc, KlingNetworkError):
        return describe_unreachable(exc, settings)
    if exc.retryable:
        return t("cli.kling.gave_up", error=exc)
    if isinstance(exc, KlingConfigError):
        return t("cli.kling.check_settings", error=exc)
    if isinstance(exc, KlingBillingError):
        return t("cli.kling.no_credits", error=exc)
    return str(exc)


def describe_unreachable(exc: KlingNetworkError, settings: Settings) -> str:
    """A network failure in words: no operation or exception class names."""
    cause = _network_cause(exc.__cause__, settings)
    return t("cli.kling.unreachable", base_url=settings.kling_base(), cause=cause)


_ERRNO_KEYS = {
    errno.ECONNREFUSED: "cli.network.refused",
    errno.ECONNRESET: "cli.network.reset",
    errno.ETIMEDOUT: "cli.network.timed_out",
    errno.EHOSTUNREACH: "cli.network.no_route",
    errno.ENETUNREACH: "cli.network.unreachable",
}


def _network_cause(cause: BaseException | None, settings: Settings) -> str:
    # Subclasses before their bases: a DNS or TLS failure is a ClientConnectorError too (and a
    # TLS error's errno is OpenSSL's, not the OS's), a connect timeout a TimeoutError too.
    if isinstance(cause, aiohttp.ClientConnectorDNSError):
        return t("cli.network.unknown_host")
    if isinstance(cause, aiohttp.ClientConnectorCertificateError):
        return t("cli.network.untrusted_certificate")
    if isinstance(cause, aiohttp.ClientSSLError):
        return t("cli.network.tls_failed")
    if isinstance(cause, aiohttp.ServerTimeoutError):  # the only aiohttp timeout the client sets
        return t("cli.network.no_connection", seconds=f"{settings.kling_connect_timeout:g}")
    if isinstance(cause, TimeoutError):
        return t("cli.network.no_answer", seconds=f"{settings.kling_request_timeout:g}")
    if isinstance(cause, aiohttp.ServerDisconnectedError):
        return t("cli.network.disconnected")
    if isinstance(cause, OSError) and cause.errno in _ERRNO_KEYS:
        return t(_ERRNO_KEYS[cause.errno])
    return t("cli.network.failed")


def describe_unexpected(exc: Exception) -> str:
    """Any other exception in one line: the known causes in words, else its type and text."""
    import discord  # the Discord commands' errors; loaded only when one went wrong

    if isinstance(exc, discord.LoginFailure):
        return t("cli.unexpected.discord_token")
    if isinstance(exc, discord.PrivilegedIntentsRequired):
        return t("cli.unexpected.discord_intents")
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        return t("cli.unexpected.port_in_use", error=exc.strerror)
    return t("cli.unexpected.other", kind=type(exc).__name__, error=exc)
