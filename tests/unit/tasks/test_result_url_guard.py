"""Result links may only reach the public internet, or Kling's own configured origin.

Names are judged on the addresses they resolve to, inside the downloader's resolver; a fixed
fake resolver stands in for DNS (no real lookups here) except for ``localhost``, which the
system answers locally. A refused link fails the task at once, saying nothing about the
address, and nothing connects to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from pathlib import Path

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from bot.tasks import results
from bot.tasks.failures import RESULTS_PRIVATE_ADDRESS, describe_failure
from bot.tasks.models import EventType, TaskState
from kling_sim.simulator import KlingSimulator
from testing.images import make_png
from testing.settings import settings_for
from testing.tracker_harness import harness

REFUSED_ADDRESS = (
    "Kling's result link points to a private or local network address, which the bot refuses"
    " to fetch from, so the result files were not downloaded. The bot's operator can find the"
    " details in its log."
)
PUBLIC_V4 = "93.184.215.14"
PUBLIC_V6 = "2606:2800:21f:cb07:6820:80da:af6b:8b2c"
NOT_PUBLIC = [
    "127.0.0.1",  # loopback
    "127.8.9.10",
    "::1",
    "10.1.2.3",  # private
    "172.16.0.9",
    "192.168.1.1",
    "fd00::5",
    "100.64.0.1",  # carrier-grade NAT
    "169.254.169.254",  # link-local (cloud metadata)
    "fe80::1",
    "224.0.0.251",  # multicast
    "ff02::1",
    "ff0e::1",  # "global" multicast: still not a file server
    "0.0.0.0",  # unspecified
    "::",
    "::ffff:127.0.0.1",  # IPv4-mapped loopback
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "64:ff9b::a01:203",  # NAT64 of 10.1.2.3
]


class FixedResolver(AbstractResolver):
    """Answers each name with fixed addresses, counting the lookups."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.lookups = 0

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.lookups += 1
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=0,
            )
            for address in self.answers[host]
        ]

    async def close(self) -> None:
        pass


class Bait:
    """A loopback file server a refused link points at: it must never see a connection."""

    def __init__(self) -> None:
        self.hits = 0
        self._servers: list[asyncio.Server] = []

    async def __aenter__(self) -> Bait:
        self._servers.append(await asyncio.start_server(self._serve, "127.0.0.1", 0))
        with contextlib.suppress(OSError):  # "localhost" may also mean ::1
            self._servers.append(await asyncio.start_server(self._serve, "::1", self.port))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for server in self._servers:
            server.close()

    @property
    def port(self) -> int:
        return int(self._servers[0].sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.hits += 1
        png = make_png()
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\n"
            + f"Content-Length: {len(png)}\r\nConnection: close\r\n\r\n".encode()
            + png
        )
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()


def downloader(**kw: object) -> results.ResultDownloader:
    return results.ResultDownloader(max_bytes=1 << 20, timeout=2, base_delay=0.01, **kw)  # type: ignore[arg-type]


def assert_names_no_address(message: str, *secrets: object) -> None:
    for secret in ("127.0.0.1", "localhost", "::1", *map(str, secrets)):
        assert secret not in message


# --- the whole path: Kling's answer -> refused -> the member told ---------------------------


@pytest.mark.parametrize(
    ("scheme", "reason"),
    [
        ("http", "Kling sent a result address the bot refuses to fetch (http scheme; only https"
         " is allowed)."),
        ("https", None),  # None: REFUSED_ADDRESS
    ],
)  # fmt: skip
async def test_a_result_link_to_another_local_port_fails_the_task_within_seconds(
    simulator: KlingSimulator, scheme: str, reason: str | None
) -> None:
    simulator.config.processing_seconds = 1.0  # time to rewrite the link before it is served
    async with Bait() as bait, harness(settings_for(simulator)) as h:
        record = await h.submit()
        await h.wait_until(lambda: simulator.tasks)
        kling_task = next(iter(simulator.tasks.values()))
        # Kling (or whoever tampered with its answer) names a local port that is not Kling.
        kling_task.origin = f"{scheme}://localhost:{bait.port}"
        ended = {EventType.COMPLETED, EventType.FAILED}
        await h.wait_until(lambda: any(e.type in ended for e in h.events))
        told_after = time.time() - kling_task.done_at
        event = next(e for e in h.events if e.type in ended)
        assert event.type is EventType.FAILED and event.task.id == record.id
        words = describe_failure(event.task)
        assert words == (reason or REFUSED_ADDRESS)
        assert_names_no_address(words, bait.port)
        assert told_after < 5  # final: no retry later, the member hears now
        failed = await h.wait_for_state(record.id, {TaskState.DELIVERED})
        assert failed.kling_status == "succeed" and failed.result_files == []
    assert bait.hits == 0


# --- names: checked on what they resolve to ---------------------------------------------------


async def test_localhost_over_https_is_refused_without_connecting(tmp_path: Path) -> None:
    async with Bait() as bait:
        with pytest.raises(results.ResultsRefused) as caught:
            await downloader().download_all([f"https://localhost:{bait.port}/0.png"], tmp_path)
        assert caught.value.final and caught.value.failure.code == RESULTS_PRIVATE_ADDRESS
        assert str(caught.value) == REFUSED_ADDRESS
    assert bait.hits == 0


async def test_a_name_resolving_to_a_private_address_is_refused_once_not_retried(
    tmp_path: Path,
) -> None:
    names = FixedResolver({"cdn.example": ["10.0.0.8", "127.0.0.1"]})
    async with Bait() as bait:
        with pytest.raises(results.ResultsRefused) as caught:
            await downloader(resolver=names, attempts=4).download_all(
                [f"https://cdn.example:{bait.port}/0.png"], tmp_path
            )
        assert caught.value.final and names.lookups == 1
        assert_names_no_address(str(caught.value), "cdn.example", "10.0.0.8", bait.port)
    assert bait.hits == 0


@pytest.mark.parametrize("address", NOT_PUBLIC)
async def test_the_resolver_refuses_names_answering_only_non_public_addresses(
    address: str,
) -> None:
    resolver = results.PublicAddressResolver(FixedResolver({"cdn.example": [address]}))
    with pytest.raises(results.AddressRefused):
        await resolver.resolve("cdn.example", 443, socket.AF_UNSPEC)


async def test_the_resolver_keeps_only_the_public_addresses_of_a_mixed_answer() -> None:
    answers = {"cdn.example": ["10.0.0.8", PUBLIC_V4, "fe80::1", PUBLIC_V6]}
    resolver = results.PublicAddressResolver(FixedResolver(answers))
    found = await resolver.resolve("cdn.example", 443, socket.AF_UNSPEC)
    assert [answer["host"] for answer in found] == [PUBLIC_V4, PUBLIC_V6]


async def test_the_resolver_trusts_only_klings_own_host_and_port() -> None:
    answers = {"kling.internal": ["10.0.0.8"], "localhost": ["127.0.0.1", "::1"]}
    resolver = results.PublicAddressResolver(
        FixedResolver(answers), trusted=("kling.internal", 8080)
    )
    found = await resolver.resolve("kling.internal", 8080)
    assert [answer["host"] for answer in found] == ["10.0.0.8"]
    for host, port in (("kling.internal", 8081), ("localhost", 8080)):
        with pytest.raises(results.AddressRefused):
            await resolver.resolve(host, port)


# --- literal addresses: they never reach the resolver -----------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1:8443/0.png",
        "https://[::1]/0.png",
        "https://10.1.2.3/0.png",
        "https://169.254.169.254/latest/meta-data",
        "https://[fe80::1]/0.png",
        "https://[ff02::1]/0.png",
        "https://0.0.0.0/0.png",
        "https://[::ffff:127.0.0.1]/0.png",
        "https://2130706433/0.png",  # 127.0.0.1 in a legacy numeric form
        "https://127.1/0.png",
    ],
)
def test_literal_non_public_addresses_are_refused(url: str) -> None:
    with pytest.raises(results.ResultsRefused) as caught:
        downloader().check_url(url)
    assert str(caught.value) == REFUSED_ADDRESS


def test_only_klings_own_scheme_host_and_port_pass_when_local() -> None:
    kling = downloader(trusted_origin="http://localhost:8080/kling")
    kling.check_url("http://localhost:8080/results/1/0.png")
    kling.check_url(f"https://{PUBLIC_V4}/0.png")
    with pytest.raises(results.ResultsRefused, match="only https"):
        kling.check_url("http://localhost:8081/0.png")
    with pytest.raises(results.ResultsRefused) as caught:
        kling.check_url("https://localhost:8080/0.png")  # the resolver would not tell them apart
    assert str(caught.value) == REFUSED_ADDRESS


async def test_a_connection_failure_tells_the_member_no_address_or_port(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    closed = f"http://127.0.0.1:{port}"
    with pytest.raises(results.DownloadError) as caught:
        await downloader(trusted_origin=closed, attempts=1).download_all(
            [f"{closed}/0.png"], tmp_path
        )
    assert not caught.value.final  # a network error: the task core tries again later
    assert str(caught.value) == (
        "The bot could not download Kling's result files (the connection failed)."
    )
