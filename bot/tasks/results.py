"""Download a finished task's result files to DATA_DIR/results/<id>/<index>.<ext>.

Kling deletes results after 30 days and signs its URLs, so files are fetched as soon as a task
succeeds. Each download is streamed to a temporary file, capped in size and time, and renamed
into place only when complete. 5xx answers, network errors and stalls are retried with backoff;
a 403 or 404 means the file is gone, which no retry fixes.

Only public addresses are fetched from, so a forged or tampered answer cannot make the bot probe
its own network: https only, literal IPs checked on every hop (redirects are followed here), and
names checked on the addresses they resolve to, inside the connector's resolver, so the address
checked is the address connected to. The one exception is Kling's own configured origin
(``KLING_BASE_URL``: the simulator, a local gateway), which the bot already trusts with its keys.
A refusal is final and its message names no address: the details go to the log.

Time is capped per step, not per transfer: ``timeout`` bounds connecting and each wait for the
next bytes (a stalled server), so a 200 MB video on a slow but moving link still arrives. Only a
generous overall cap (``MAX_TRANSFER_SECONDS``) stops a trickle that never ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import random
import socket
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from bot.config import Settings
from bot.tasks import failures as reasons
from bot.tasks.failures import Failure

log = logging.getLogger(__name__)

_EXTENSIONS = {".png": "png", ".jpg": "jpg", ".jpeg": "jpg", ".mp4": "mp4", ".webp": "webp"}
_CONTENT_TYPES = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/jpg": "jpg",
    "video/mp4": "mp4",
    "image/webp": "webp",
}
_DEFAULT_PORTS = {"http": 80, "https": 443}
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_GONE = frozenset({401, 403, 404, 410})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5
_CHUNK = 64 * 1024
# One file's whole transfer, however steadily it moves: 200 MB at about 1 Mbit/s.
MAX_TRANSFER_SECONDS = 1800.0

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Origin = tuple[str, str, int]  # scheme, host, port


class DownloadError(Exception):
    """A result could not be fetched, for the reason ``failure`` (``str(e)``: its words).

    ``final``: retrying later cannot help. Otherwise (network errors, 5xx after the retries
    here, odd answers) the task core tries again later: the results live at Kling 30 days.
    """

    final = False

    def __init__(self, code: str, **params: str | int | float) -> None:
        self.failure = Failure(code, dict(params))
        super().__init__(self.failure.words())


class ResultsGone(DownloadError):
    """Kling no longer serves the file (403/404/410): retrying will not help."""

    final = True


class ResultsRefused(DownloadError):
    """No result address, or one the bot refuses to fetch (also after a redirect)."""

    final = True


class ResultDownloader:
    """Fetches result URLs into a directory as ``<index>.<ext>``, one file after another.

    ``trusted_origin``: Kling's configured base URL; its scheme, host and port are fetched from
    even when plain http or private. ``resolver`` answers host names (aiohttp's default one
    when None); only the public addresses in its answers are connected to.
    """

    def __init__(
        self,
        *,
        max_bytes: int,
        timeout: float,
        trusted_origin: str | None = None,
        resolver: AbstractResolver | None = None,
        attempts: int = 4,
        base_delay: float = 0.5,
    ) -> None:
        self._max_bytes = max_bytes
        self._timeout = transfer_timeout(timeout)
        self._trusted = origin_of(trusted_origin) if trusted_origin else None
        self._resolver = resolver
        self._attempts = attempts
        self._base_delay = base_delay

    async def download_all(self, urls: Sequence[str], directory: Path) -> list[Path]:
        """Fetch every URL in order into ``directory``; returns the files written."""
        if not urls:
            raise ResultsRefused(reasons.RESULTS_NONE)
        for url in urls:
            self.check_url(url)
        await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
        async with self._session() as session:
            return [
                await self._download(session, url, index, directory)
                for index, url in enumerate(urls)
            ]

    def check_url(self, url: str) -> None:
        """Only https, and no literal non-public address, unless it is Kling's own origin.
        Checked again on every redirect hop; names are checked by the resolver."""
        origin = origin_of(url)
        if origin is not None and origin == self._trusted:
            return
        scheme = urlsplit(url).scheme
        if scheme != "https":
            raise ResultsRefused(reasons.RESULTS_BAD_SCHEME, scheme=scheme or "no")
        if origin is None:
            raise ResultsRefused(reasons.RESULTS_INVALID_ADDRESS)
        # Kling's host and port under another scheme: the resolver, seeing only host and port,
        # would let it through.
        other_scheme = self._trusted is not None and origin[1:] == self._trusted[1:]
        if other_scheme or not _literal_may_be_public(origin[1]):
            log.warning("result URL refused: %s://%s:%d is not a public address", *origin)
            raise ResultsRefused(reasons.RESULTS_PRIVATE_ADDRESS)

    @contextlib.asynccontextmanager
    async def _session(self) -> AsyncIterator[aiohttp.ClientSession]:
        """A session of its own, whose connector connects only to checked addresses. No
        proxy from the environment (trust_env is off): a proxy would resolve names itself."""
        names = self._resolver or DefaultResolver()
        trusted = self._trusted[1:] if self._trusted else None
        connector = aiohttp.TCPConnector(resolver=PublicAddressResolver(names, trusted=trusted))
        try:
            async with aiohttp.ClientSession(connector=connector) as session:
                yield session
        finally:
            if self._resolver is None:
                await names.close()

    async def _download(
        self, session: aiohttp.ClientSession, url: str, index: int, directory: Path
    ) -> Path:
        failures = 0
        while True:
            try:
                return await self._download_once(session, url, index, directory)
            except (ResultsGone, _TooBig):
                raise
            except (aiohttp.ClientError, TimeoutError, _Retryable) as exc:
                if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(
                    exc.os_error, AddressRefused
                ):
                    # Logged by the resolver.
                    raise ResultsRefused(reasons.RESULTS_PRIVATE_ADDRESS) from exc
                failures += 1
                if failures >= self._attempts:
                    log.warning("%s result %d: giving up after %d attempts: %r",
                                directory, index, failures, exc)  # fmt: skip
                    raise _gave_up(exc) from exc
                delay = random.uniform(0.5, 1.0) * self._base_delay * 2 ** (failures - 1)
                log.info("%s result %d: attempt %d failed (%r), retrying in %.2fs",
                         directory, index, failures, exc, delay)  # fmt: skip
                await asyncio.sleep(delay)

    async def _download_once(
        self, session: aiohttp.ClientSession, url: str, index: int, directory: Path
    ) -> Path:
        started = time.monotonic()
        current = url
        # Redirects are followed here, not by aiohttp, so that every hop is checked.
        for _ in range(MAX_REDIRECTS + 1):
            async with session.get(
                current, timeout=self._timeout, allow_redirects=False
            ) as response:
                if response.status in _REDIRECTS:
                    location = response.headers.get("Location")
                    if not location:
                        raise DownloadError(
                            reasons.RESULTS_REDIRECT_NOWHERE, status=response.status
                        )
                    current = urljoin(current, location)
                    self.check_url(current)
                    continue
                final = await self._save(response, url, index, directory)
            log.info("%s: fetched in %.2fs", final, time.monotonic() - started)
            return final
        raise ResultsRefused(reasons.RESULTS_TOO_MANY_REDIRECTS, limit=MAX_REDIRECTS)

    async def _save(
        self, response: aiohttp.ClientResponse, url: str, index: int, directory: Path
    ) -> Path:
        if response.status in _GONE:
            raise ResultsGone(reasons.RESULTS_GONE, status=response.status)
        if response.status >= 500 or response.status == 429:
            raise _Retryable(response.status)
        if response.status != 200:
            raise DownloadError(reasons.RESULTS_HTTP, status=response.status)
        if (response.content_length or 0) > self._max_bytes:
            # Refused on the header alone: leaving the block closes the connection unread.
            raise self._too_big()
        extension = extension_for(url, response.headers.get("Content-Type"))
        final = directory / f"{index}.{extension}"
        # Written under a temporary name and renamed: a crash never leaves half a file.
        temp = directory / f".{index}.{extension}.{os.getpid()}.part"
        try:
            size = await self._stream_to(response, temp)
            os.replace(temp, final)
        finally:
            temp.unlink(missing_ok=True)
        log.info("%s: %d bytes", final, size)
        return final

    async def _stream_to(self, response: aiohttp.ClientResponse, temp: Path) -> int:
        size = 0
        # Small blocking writes of 64 KiB chunks; a thread per chunk would cost more than it saves.
        with temp.open("wb") as out:
            async for chunk in response.content.iter_chunked(_CHUNK):
                size += len(chunk)
                if size > self._max_bytes:
                    raise self._too_big()
                out.write(chunk)
        return size

    def _too_big(self) -> _TooBig:
        return _TooBig(reasons.RESULTS_TOO_BIG, megabytes=self._max_bytes // (1024 * 1024))


def transfer_timeout(stall_seconds: float) -> aiohttp.ClientTimeout:
    """Connecting, and every wait for more bytes, may take ``stall_seconds``; the whole
    transfer up to MAX_TRANSFER_SECONDS (never less than one stall)."""
    return aiohttp.ClientTimeout(
        total=max(MAX_TRANSFER_SECONDS, stall_seconds),
        connect=stall_seconds,
        sock_read=stall_seconds,
    )


def kling_origin(settings: Settings) -> str | None:
    """Kling's configured base URL, whose origin results may come from even when it is local
    (the simulator, a gateway on the operator's network). Real Kling serves https."""
    return settings.kling_base_url or settings.provider.default_base_url


async def download_results(
    urls: Sequence[str],
    out_dir: Path,
    *,
    max_bytes: int,
    timeout: float,  # noqa: ASYNC109 - the per-step stall timeout, the name the CLI uses
    trusted_origin: str | None = None,
) -> list[Path]:
    """One-shot download (the CLI): ``out_dir/<index>.<ext>`` for each URL."""
    downloader = ResultDownloader(
        max_bytes=max_bytes, timeout=timeout, trusted_origin=trusted_origin
    )
    return await downloader.download_all(urls, Path(out_dir))


class AddressRefused(OSError):
    """A host name resolved only to addresses the bot does not fetch from."""


class PublicAddressResolver(AbstractResolver):
    """Wraps a resolver and answers only the public addresses among its answers; refuses a
    name with none. ``trusted`` (host, port) is answered unfiltered: Kling's own origin.

    The connector connects to exactly what this returns, so a second DNS answer cannot slip a
    private address in between the check and the connection.
    """

    def __init__(self, resolver: AbstractResolver, *, trusted: tuple[str, int] | None = None):
        self._resolver = resolver
        self._trusted = trusted

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        answers = await self._resolver.resolve(host, port, family)
        if self._trusted == (host.lower(), port):
            return answers
        public = [answer for answer in answers if _is_public_text(answer["host"])]
        if len(public) < len(answers):
            refused = sorted({a["host"] for a in answers} - {a["host"] for a in public})
            log.warning("result host %s:%d resolves to %s: not fetching from those",
                        host, port, ", ".join(refused))  # fmt: skip
        if not public:
            raise AddressRefused(f"{host} resolves to no public address")
        return public

    async def close(self) -> None:
        await self._resolver.close()


class _Retryable(Exception):
    """A 5xx or 429 from the file server: tried again."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


class _TooBig(DownloadError):
    final = True


def origin_of(url: str) -> Origin | None:
    """(scheme, host, port) of an http(s) URL, the port filled in; None for anything else."""
    parts = urlsplit(url)
    try:
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    except ValueError:  # a port out of range
        return None
    if port is None or not parts.hostname:
        return None
    return parts.scheme, parts.hostname, port


def is_public_address(address: IPAddress) -> bool:
    """On the public internet: not loopback, private, link-local, multicast, unspecified or
    reserved, nor an IPv6 form carrying such an IPv4 address (mapped, 6to4, Teredo, NAT64)."""
    return all(a.is_global and not a.is_multicast for a in _with_embedded(address))


def _with_embedded(address: IPAddress) -> list[IPAddress]:
    found: list[IPAddress] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        found += [a for a in (address.ipv4_mapped, address.sixtofour) if a is not None]
        found += address.teredo or ()
        if address in _NAT64:
            found.append(ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF))
    return found


def _is_public_text(text: str) -> bool:
    try:
        return is_public_address(ipaddress.ip_address(text))
    except ValueError:
        return False  # not an address we can judge: not connected to


def _literal_may_be_public(host: str) -> bool:
    """False for a literal IP address off the public internet, and for what looks like one but
    is not canonical (``127.1``, ``2130706433``: sockets still map those somewhere). True for a
    name: the resolver judges the addresses it resolves to."""
    try:
        return is_public_address(ipaddress.ip_address(host))
    except ValueError:
        return not (":" in host or host.replace(".", "").isdigit())


def extension_for(url: str, content_type: str | None) -> str:
    """png/jpg/mp4 from the URL's path, else from the content type; ``bin`` if neither says."""
    suffix = os.path.splitext(urlsplit(url).path)[1].lower()
    if suffix in _EXTENSIONS:
        return _EXTENSIONS[suffix]
    if content_type:
        mime = content_type.split(";")[0].strip().lower()
        if mime in _CONTENT_TYPES:
            return _CONTENT_TYPES[mime]
    return "bin"


def _gave_up(exc: BaseException) -> DownloadError:
    """For members: never aiohttp's own text, which names hosts and ports (the log has it)."""
    if isinstance(exc, TimeoutError):
        return DownloadError(reasons.RESULTS_TIMED_OUT)
    if isinstance(exc, _Retryable):
        return DownloadError(reasons.RESULTS_SERVER_ERROR, status=exc.status)
    return DownloadError(reasons.RESULTS_CONNECTION_FAILED)
