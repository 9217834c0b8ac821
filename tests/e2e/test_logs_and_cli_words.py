"""Hardening of the ``kling-bot`` command: no secret in the log at any level, range errors that
name the flag and the value, connection problems in words, help on every flag, plural forms.

The CLI runs as a subprocess (``python -m bot``) against servers in the test process: the Kling
simulator, the fake Discord, or bare loopback sockets that refuse, stall or speak no TLS.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import os
import re
import socket
import ssl
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.client_reqrep import ConnectionKey
from aiohttp.test_utils import unused_port
from PIL import Image

from bot.cli import build_parser
from bot.config import SIMULATOR_SECRET_KEY, Settings
from bot.kling.errors import KlingNetworkError
from kling_sim.simulator import KlingSimulator, SimulatorConfig
from testing.bot_process import TOKEN, WEBHOOK_SECRET, BotProcess, bot_env, wait_all_final
from testing.fake_discord import FakeDiscord
from testing.images import make_png
from testing.paths import REPO_ROOT

pytestmark = pytest.mark.slow

README = REPO_ROOT / "README.md"
MASK = "***"  # what stands in the log for a secret


def _clean_env(**extra: str) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("KLING_", "DISCORD_", "WEBHOOK_", "PUBLIC_BASE_URL", "LOG_LEVEL"))
    }
    env.update(extra)
    return env


async def run_cli(*args: str, cwd: Path, env: dict[str, str]) -> tuple[int, str, str]:
    """``kling-bot ARGS`` without blocking the loop (the servers it talks to run on it)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", *args, cwd=cwd, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


def _simulator_env(simulator: KlingSimulator) -> dict[str, str]:
    return _clean_env(KLING_PROVIDER="simulator", KLING_BASE_URL=simulator.base_url)


@pytest.fixture
def subject(tmp_path: Path) -> Path:
    path = tmp_path / "subject.png"
    path.write_bytes(make_png(400, 400))
    return path


# --- point 12: no interaction token, bot token, JWT or key in the log ---------------------------


async def test_debug_log_of_the_running_bot_holds_no_interaction_token(tmp_path: Path) -> None:
    """The real bot at LOG_LEVEL=DEBUG answers a slash command: discord.py logs every webhook URL
    and gateway event, and none of them may carry the interaction's token."""
    async with FakeDiscord(token=TOKEN) as fake:
        guild = fake.add_guild(channels=("gen",))
        simulator = KlingSimulator(SimulatorConfig(submitted_seconds=0.1, processing_seconds=0.3))
        await simulator.start()
        env = bot_env(fake, simulator.base_url, tmp_path, webhook_port=unused_port())
        env["LOG_LEVEL"] = "DEBUG"
        bot = BotProcess(env, workdir=tmp_path)
        try:
            await bot.start(fake)
            interaction = await fake.send_slash_command(
                "kling",
                subcommand="image",
                options={"prompt": "a red square", "count": 1},
                attachments={"subject1": ("subject.png", make_png(400, 400))},
                channel_id=next(iter(guild.channels)),
            )
            await wait_all_final(bot, tmp_path / "bot.db", timeout=60, at_least=1)
            await bot.stop()
        finally:
            if bot.alive:
                bot.kill()
                await bot.wait_dead()
            await simulator.close()
    log = bot.log_text()
    for secret in (interaction.token, TOKEN, WEBHOOK_SECRET, SIMULATOR_SECRET_KEY):
        assert secret not in log
    # discord.py really logged the interaction's URLs and its gateway event, masked.
    assert f"/interactions/{interaction.id}/{MASK}/callback" in log
    assert f"/webhooks/{fake.app_id}/{MASK}/messages/@original" in log
    assert f"'token': '{MASK}'" in log


JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJhY2Nlc3Mta2V5IiwiZXhwIjoxNzAwMDAwMDAwfQ"
    ".c2lnbmF0dXJlLW9mLXRoZS1qd3QtMDEyMzQ1Njc4OQ"
)
BOT_TOKEN_SHAPE = "MTIzNDU2Nzg5MDEyMzQ1Njc4.GhIjKl.AbCdEfGhIjKlMnOpQrStUvWxYz0123456789ab"
INTERACTION_TOKEN = "aW50ZXJhY3Rpb246MTIzNDU2Nzg5MDEyMzQ1Njc4OTA6c2VjcmV0LXBhcnQ"


@pytest.fixture
def masked_log() -> Iterator[tuple[logging.Logger, io.StringIO, Any]]:
    """A root-like logger whose one handler carries the filter, and a child logger under it:
    the child's records reach the filter only through propagation, as discord.http's do."""
    from bot.logs import SecretFilter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    secret_filter = SecretFilter()
    handler.addFilter(secret_filter)
    parent = logging.getLogger("hardening-test-root")
    parent.addHandler(handler)
    parent.setLevel(logging.DEBUG)
    parent.propagate = False
    try:
        yield parent.getChild("discord.http"), stream, secret_filter
    finally:
        parent.removeHandler(handler)


@pytest.mark.parametrize(
    ("template", "secret", "shown"),
    [
        (
            "POST http://127.0.0.1/api/v10/webhooks/1234/%s with None has returned 200",
            "tok-en_123.abc",
            f"/webhooks/1234/{MASK} ",
        ),
        (
            "PATCH /api/v10/webhooks/1234/%s/messages/@original has returned 200",
            "ordinary-looking-token",
            f"/webhooks/1234/{MASK}/messages/@original",
        ),
        (
            "POST /api/v10/interactions/987654321/%s/callback has returned 204",
            "interaction-token-value",
            f"/interactions/987654321/{MASK}/callback",
        ),
        ("WebSocket Event: {'t': 'INTERACTION_CREATE', 'd': {'token': '%s'}}", "x" * 30, "'token'"),
        ('body {"token": "%s", "id": "1"}', "y" * 30, f'"token": "{MASK}"'),
        ("interaction %s arrived", INTERACTION_TOKEN, f"interaction {MASK} arrived"),
        ("logged in with %s", BOT_TOKEN_SHAPE, f"logged in with {MASK}"),
        ("signed %s for the request", JWT, f"signed {MASK} for"),
        ("headers {'Authorization': 'Bearer %s'}", "opaque-gateway-key-1234", "Authorization"),
        ("Authorization: %s", "Bot some.bot-token", "Authorization: "),
        ("callback at http://host/kling/callback/%s", "0123456789abcdef" * 2, "/kling/callback/"),
    ],
)
def test_filter_masks_each_secret_shape(
    masked_log: tuple[logging.Logger, io.StringIO, Any],
    template: str,
    secret: str,
    shown: str,
) -> None:
    logger, stream, _ = masked_log
    logger.debug(template, secret)
    text = stream.getvalue()
    assert secret not in text
    assert MASK in text and shown in text, text


def test_filter_masks_configured_values_in_messages_and_exceptions(
    masked_log: tuple[logging.Logger, io.StringIO, Any],
) -> None:
    logger, stream, secret_filter = masked_log
    secret_filter.hide("the-configured-kling-secret", "short", None)
    try:
        raise RuntimeError("key the-configured-kling-secret was refused")
    except RuntimeError:
        logger.exception("call with %s failed", "the-configured-kling-secret")
    text = stream.getvalue()
    assert "the-configured-kling-secret" not in text
    assert f"call with {MASK} failed" in text
    assert f"RuntimeError: key {MASK} was refused" in text
    # A value too short to be a real secret is not masked wherever it appears in words.
    logger.info("a short word")
    assert "a short word" in stream.getvalue()


def test_a_sentence_naming_a_secret_setting_stays_readable(
    masked_log: tuple[logging.Logger, io.StringIO, Any],
) -> None:
    """A configuration error names the setting; only its value would be a secret."""
    logger, stream, _ = masked_log
    logger.error("WEBHOOK_SECRET: must be at least 32 characters long (it has 3)")
    assert "WEBHOOK_SECRET: must be at least 32 characters long" in stream.getvalue()


def test_filter_does_not_raise_on_a_broken_format(
    masked_log: tuple[logging.Logger, io.StringIO, Any],
) -> None:
    logger, stream, _ = masked_log
    logger.warning("%d tasks for token=%s", "many", "tok-en-value-1")  # %d of a str
    assert "tok-en-value-1" not in stream.getvalue()
    assert "do not fit" in stream.getvalue()


# --- point 14: range errors name the flag and the value -----------------------------------------


@pytest.mark.parametrize(
    ("value", "complaint"),
    [("10", "-n must be 1..9 (got 10)"), ("0", "-n must be 1..9 (got 0)"),
     ("many", "-n must be a whole number 1..9 (got 'many')")],
)  # fmt: skip
async def test_n_out_of_range_names_the_flag_and_value(
    tmp_path: Path, subject: Path, value: str, complaint: str
) -> None:
    args = ("generate", "image", "--simulate", "--subject", str(subject), "-n", value)
    code, _, stderr = await run_cli(*args, cwd=tmp_path, env=_clean_env())
    assert code == 2
    assert stderr == (
        f"kling-bot generate image: error: {complaint}\n(see: kling-bot generate image -h)\n"
    )


async def test_page_out_of_range_names_the_flag_and_value(tmp_path: Path) -> None:
    args = ("task", "list", "image", "--simulate", "--page-size", "501")
    code, _, stderr = await run_cli(*args, cwd=tmp_path, env=_clean_env())
    assert code == 2
    assert stderr.splitlines()[0] == (
        "kling-bot task list: error: --page-size must be 1..500 (got 501)"
    )


@pytest.mark.parametrize(
    ("flags", "complaint"),
    [
        (("--prompt", "p" * 3000), "the prompt is 3,000 characters; Kling takes at most 2,500"),
        (
            ("--negative-prompt", "q" * 2501),
            "the negative prompt is 2,501 characters; Kling takes at most 2,500",
        ),
    ],
)
async def test_long_prompt_is_counted_in_words(
    tmp_path: Path, subject: Path, flags: tuple[str, ...], complaint: str
) -> None:
    args = ("generate", "image", "--simulate", "--subject", str(subject), *flags)
    code, stdout, stderr = await run_cli(*args, cwd=tmp_path, env=_clean_env())
    assert code == 2
    assert stderr == f"kling-bot: {complaint}\n"
    assert stdout == ""


async def test_long_video_prompt_is_counted_in_words(tmp_path: Path, subject: Path) -> None:
    args = ("generate", "video", "--simulate", "--image", str(subject), "--prompt", "v" * 12345)
    code, _, stderr = await run_cli(*args, cwd=tmp_path, env=_clean_env())
    assert code == 2
    assert stderr == "kling-bot: the prompt is 12,345 characters; Kling takes at most 2,500\n"


# --- point 15: an unreachable API in words ------------------------------------------------------


def _gateway_env(base_url: str, **extra: str) -> dict[str, str]:
    return _clean_env(
        KLING_PROVIDER="gateway",
        KLING_BASE_URL=base_url,
        KLING_API_KEY="k",
        KLING_MAX_ATTEMPTS="1",
        **extra,
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_refused_connection_is_said_in_words(tmp_path: Path) -> None:
    base_url = f"http://127.0.0.1:{_free_port()}"
    env = _gateway_env(base_url)
    code, _, stderr = await run_cli("task", "get", "image", "t-1", cwd=tmp_path, env=env)
    assert code == 3
    assert stderr == (
        f"kling-bot: cannot reach Kling at {base_url}: connection refused "
        "(check KLING_BASE_URL, or try again later)\n"
    )


async def test_server_that_never_answers_is_said_in_words(tmp_path: Path) -> None:
    with socket.socket() as listener:  # accepts connections (the kernel does) and never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        base_url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        env = _gateway_env(base_url, KLING_REQUEST_TIMEOUT="1")
        code, _, stderr = await run_cli("task", "get", "image", "t-1", cwd=tmp_path, env=env)
    assert code == 3
    assert stderr == (
        f"kling-bot: cannot reach Kling at {base_url}: no answer within 1 s "
        "(check KLING_BASE_URL, or try again later)\n"
    )


async def test_tls_to_a_plain_http_server_is_said_in_words(
    tmp_path: Path, simulator: KlingSimulator
) -> None:
    base_url = simulator.base_url.replace("http://", "https://")
    env = _gateway_env(base_url)
    code, _, stderr = await run_cli("task", "get", "video", "t-2", cwd=tmp_path, env=env)
    assert code == 3
    assert stderr == (
        f"kling-bot: cannot reach Kling at {base_url}: the TLS handshake failed "
        "(check KLING_BASE_URL, or try again later)\n"
    )


def _connection_key(host: str) -> ConnectionKey:
    return ConnectionKey(host, 443, True, True, None, None, None)


@pytest.mark.parametrize(
    ("cause", "words"),
    [
        (
            aiohttp.ClientConnectorDNSError(
                _connection_key("kling.invalid"), socket.gaierror(-2, "Name or service not known")
            ),
            "its host name is unknown",
        ),
        (
            aiohttp.ClientConnectorError(
                _connection_key("kling.example"), ConnectionRefusedError(111, "Connect call failed")
            ),
            "connection refused",
        ),
        (
            aiohttp.ClientConnectorCertificateError(
                _connection_key("kling.example"), ssl.SSLCertVerificationError(1, "expired")
            ),
            "its TLS certificate is not trusted",
        ),
        (aiohttp.ConnectionTimeoutError("Connection timeout"), "no connection within 2 s"),
        (TimeoutError(), "no answer within 7 s"),
        (aiohttp.ServerDisconnectedError(), "the server closed the connection without answering"),
    ],
)
def test_each_network_failure_has_its_words(cause: BaseException, words: str) -> None:
    from bot.cli import describe_unreachable

    settings = Settings(
        _env_file=None,
        kling_provider="gateway",
        kling_base_url="https://kling.example",
        kling_connect_timeout=2,
        kling_request_timeout=7,
    )
    error = KlingNetworkError("list_image: ClientConnectorError: internal text")
    error.__cause__ = cause
    message = describe_unreachable(error, settings)
    assert message == (
        f"cannot reach Kling at https://kling.example: {words} "
        "(check KLING_BASE_URL, or try again later)"
    )


# --- point 16: README, help text, plural forms --------------------------------------------------


async def test_readme_example_of_a_converted_webp_is_what_the_tool_prints(
    tmp_path: Path, subject: Path
) -> None:
    webp = tmp_path / "photo.webp"
    Image.new("RGB", (400, 400), (10, 120, 200)).save(webp, "WEBP")  # a photo: no transparency
    args = ("generate", "image", "--simulate", "--subject", str(subject), "--subject", str(webp))
    code, _, stderr = await run_cli(*args, cwd=tmp_path, env=_clean_env())
    assert code == 0, stderr
    printed = re.search(r"^subject2: converted WebP to \w+$", stderr, re.MULTILINE)
    assert printed, stderr
    assert f"`{printed[0]}`" in README.read_text()


def _all_parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _all_parsers(sub)


def test_every_flag_and_command_has_help_text() -> None:
    missing = []
    for parser in _all_parsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):  # its commands carry the help
                commands = action._choices_actions
                missing += [f"{parser.prog} {c.dest}" for c in commands if not c.help]
            elif not action.help:
                missing.append(f"{parser.prog} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


@pytest.mark.parametrize(("n", "summary"), [(1, "1 credit; 1 file:"), (2, "2 credits; 2 files:")])
async def test_counts_have_plural_forms(
    tmp_path: Path, subject: Path, simulator: KlingSimulator, n: int, summary: str
) -> None:
    env = _simulator_env(simulator)
    args = ("generate", "image", "--subject", str(subject), "-n", str(n))
    code, stdout, stderr = await run_cli(*args, cwd=tmp_path, env=env)
    assert code == 0, stderr
    assert re.search(rf"^task \S+ succeeded, {summary}$", stderr, re.MULTILINE), stderr
    assert len(stdout.split()) == n
    code, listing, stderr = await run_cli("task", "list", "image", cwd=tmp_path, env=env)
    assert code == 0, stderr
    credits = "1 credit" if n == 1 else f"{n} credits"
    assert re.search(rf"^\S+  succeed\s+\S+  {credits}$", listing, re.MULTILINE), listing
