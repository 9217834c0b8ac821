"""Download a finished task's result files to DATA_DIR/results/<id>/<index>.<ext>.

Kling deletes results after 30 days and signs its URLs, so files are fetched as soon as a task
succeeds. Each download is streamed to a temporary file, capped in size and time, and renamed
into place only when complete. 5xx answers, network errors and stalls are retried with backoff;
a 403 or 404 means the file is gone, which no retry fixes.

Time is capped per step, not per transfer: ``timeout`` bounds connecting and each wait for the
next bytes (a stalled server), so a 200 MB video on a slow but moving link still arrives. Only a
generous overall cap (``MAX_TRANSFER_SECONDS``) stops a trickle that never ends.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import random
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import aiohttp

from bot.config import Settings

log = logging.getLogger(__name__)

_EXTENSIONS = {".png": "png", ".jpg": "jpg", ".jpeg": "jpg", ".mp4": "mp4", ".webp": "webp"}
_CONTENT_TYPES = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/jpg": "jpg",
    "video/mp4": "mp4",
    "image/webp": "webp",
}
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_GONE = frozenset({401, 403, 404, 410})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5
_CHUNK = 64 * 1024
# One file's whole transfer, however steadily it moves: 200 MB at about 1 Mbit/s.
MAX_TRANSFER_SECONDS = 1800.0


class DownloadError(Exception):
    """A result could not be fetched. ``str(e)`` is a sentence fit for a member.

    ``final``: retrying later cannot help. Otherwise (network errors, 5xx after the retries
    here, odd answers) the tracker tries again later: the results live at Kling for 30 days.
    """

    final = False


class ResultsGone(DownloadError):
    """Kling no longer serves the file (403/404/410): retrying will not help."""

    final = True


class ResultsRefused(DownloadError):
    """No result address, or one the bot refuses to fetch (also after a redirect)."""

    final = True


class ResultDownloader:
    """Fetches result URLs into a directory as ``<index>.<ext>``, one file after another."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        max_bytes: int,
        timeout: float,
        allow_loopback: bool = False,
        attempts: int = 4,
        base_delay: float = 0.5,
    ) -> None:
        self._session = session
        self._max_bytes = max_bytes
        self._timeout = transfer_timeout(timeout)
        self._allow_loopback = allow_loopback
        self._attempts = attempts
        self._base_delay = base_delay

    async def download_all(self, urls: Sequence[str], directory: Path) -> list[Path]:
        """Fetch every URL in order into ``directory``; returns the files written."""
        if not urls:
            raise ResultsRefused("Kling reported success but sent no result files.")
        for url in urls:
            self.check_url(url)
        await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
        return [await self._download(url, index, directory) for index, url in enumerate(urls)]

    def check_url(self, url: str) -> None:
        """Only https, and no literal private address, so a forged or tampered answer (or a
        redirect) cannot point us at the local network. Checked again on every redirect hop."""
        parts = urlsplit(url)
        host = parts.hostname
        if self._allow_loopback and host in _LOOPBACK_HOSTS and parts.scheme in ("http", "https"):
            return
        if parts.scheme == "https" and host:
            if _is_private_address(host):
                raise ResultsRefused(
                    "Kling sent a result address the bot refuses to fetch (a private network"
                    " address)."
                )
            return
        raise ResultsRefused(
            f"Kling sent a result address the bot refuses to fetch ({parts.scheme or 'no'}"
            " scheme; only https is allowed)."
        )

    async def _download(self, url: str, index: int, directory: Path) -> Path:
        failures = 0
        while True:
            try:
                return await self._download_once(url, index, directory)
            except (ResultsGone, _TooBig):
                raise
            except (aiohttp.ClientError, TimeoutError, _Retryable) as exc:
                failures += 1
                if failures >= self._attempts:
                    log.warning("%s result %d: giving up after %d attempts: %r",
                                directory, index, failures, exc)  # fmt: skip
                    raise DownloadError(
                        f"The bot could not download Kling's result files ({_describe(exc)})."
                    ) from exc
                delay = random.uniform(0.5, 1.0) * self._base_delay * 2 ** (failures - 1)
                log.info("%s result %d: attempt %d failed (%s), retrying in %.2fs",
                         directory, index, failures, _describe(exc), delay)  # fmt: skip
                await asyncio.sleep(delay)

    async def _download_once(self, url: str, index: int, directory: Path) -> Path:
        started = time.monotonic()
        current = url
        # Redirects are followed here, not by aiohttp, so that every hop is checked.
        for _ in range(MAX_REDIRECTS + 1):
            async with self._session.get(
                current, timeout=self._timeout, allow_redirects=False
            ) as response:
                if response.status in _REDIRECTS:
                    location = response.headers.get("Location")
                    if not location:
                        raise DownloadError(
                            f"Kling's file server answered HTTP {response.status} without an"
                            " address to follow."
                        )
                    current = urljoin(current, location)
                    self.check_url(current)
                    continue
                final = await self._save(response, url, index, directory)
            log.info("%s: fetched in %.2fs", final, time.monotonic() - started)
            return final
        raise ResultsRefused(
            f"Kling's file server redirected more than {MAX_REDIRECTS} times for a result."
        )

    async def _save(
        self, response: aiohttp.ClientResponse, url: str, index: int, directory: Path
    ) -> Path:
        if response.status in _GONE:
            raise ResultsGone(
                f"Kling's result files are no longer available (HTTP {response.status})."
            )
        if response.status >= 500 or response.status == 429:
            raise _Retryable(f"HTTP {response.status}")
        if response.status != 200:
            raise DownloadError(
                f"Kling's file server answered HTTP {response.status} for a result."
            )
        if (response.content_length or 0) > self._max_bytes:
            # Refused on the header alone: leaving the block closes the connection unread.
            raise _TooBig(self._too_big_message())
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
                    raise _TooBig(self._too_big_message())
                out.write(chunk)
        return size

    def _too_big_message(self) -> str:
        return (
            f"A result file is larger than the bot's limit of {self._max_bytes // (1024 * 1024)}"
            " MB (DOWNLOAD_MAX_BYTES)."
        )


def transfer_timeout(stall_seconds: float) -> aiohttp.ClientTimeout:
    """Connecting, and every wait for more bytes, may take ``stall_seconds``; the whole
    transfer up to MAX_TRANSFER_SECONDS (never less than one stall)."""
    return aiohttp.ClientTimeout(
        total=max(MAX_TRANSFER_SECONDS, stall_seconds),
        connect=stall_seconds,
        sock_read=stall_seconds,
    )


def loopback_allowed(settings: Settings) -> bool:
    """Plain http to loopback only when Kling itself is local: the simulator (any flavour
    pointed at a loopback base URL). Real Kling serves results over https."""
    if settings.simulated:
        return True
    base = settings.kling_base_url or settings.flavour.default_base_url or ""
    return urlsplit(base).hostname in _LOOPBACK_HOSTS


async def download_results(
    session: aiohttp.ClientSession,
    urls: Sequence[str],
    out_dir: Path,
    *,
    max_bytes: int,
    timeout: float,  # noqa: ASYNC109 - the per-step stall timeout, the name the CLI uses
    allow_loopback: bool = False,
) -> list[Path]:
    """One-shot download (the CLI): ``out_dir/<index>.<ext>`` for each URL."""
    downloader = ResultDownloader(
        session, max_bytes=max_bytes, timeout=timeout, allow_loopback=allow_loopback
    )
    return await downloader.download_all(urls, Path(out_dir))


class _Retryable(Exception):
    pass


class _TooBig(DownloadError):
    final = True


def _is_private_address(host: str) -> bool:
    """A literal IP address outside the public internet (names are not resolved here)."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return not address.is_global


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


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__
