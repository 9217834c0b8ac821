"""The ``kling-bot`` command end to end, as a subprocess, against the simulator over loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import av
import pytest
from PIL import Image

from testing.fake_discord import FakeDiscord
from testing.images import make_jpeg, make_png

pytestmark = pytest.mark.slow


def _clean_env(**extra: str) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("KLING_", "DISCORD_", "WEBHOOK_", "PUBLIC_BASE_URL"))
    }
    env.update(extra)
    return env


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120):
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        cwd=cwd,
        env=env or _clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    files = {
        "a.png": make_png(400, 400, (200, 60, 60)),
        "b.jpg": make_jpeg(500, 350, (60, 60, 200)),
        "small.png": make_png(120, 120, (60, 200, 60)),
        "notes.png": b"these are my notes, not an image",
    }
    paths = {}
    for name, data in files.items():
        path = tmp_path / name
        path.write_bytes(data)
        paths[name] = path
    return paths


def test_help_runs(tmp_path: Path) -> None:
    result = run_cli("--help", cwd=tmp_path)
    assert result.returncode == 0
    for command in ("run", "sync", "simulate", "generate", "task"):
        assert command in result.stdout


def test_generate_image_simulated_writes_four_pngs(tmp_path: Path, inputs: dict[str, Path]) -> None:
    result = run_cli(
        "generate", "image", "--simulate",
        "--subject", str(inputs["a.png"]), "--subject", str(inputs["small.png"]),
        "--prompt", "two friends at the beach", "-n", "4", "--aspect-ratio", "3:2",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    paths = [Path(tmp_path, line) for line in result.stdout.split()]
    assert len(paths) == 4
    task_id = re.search(r"submitted task (\S+)", result.stderr)
    assert task_id, result.stderr
    for path in paths:
        assert path.parent == tmp_path / "out" / task_id.group(1)
        assert_valid_png(path, aspect=1.5)
    # The small subject was scaled up, and the CLI said so.
    assert "subject2: " in result.stderr and "scaled up" in result.stderr
    # Progress while waiting: each state with the time elapsed.
    assert re.search(r"^(submitted|processing) · \d+ s$", result.stderr, re.MULTILINE)
    assert re.search(r"succeeded, 4 credits; 4 files:$", result.stderr, re.MULTILINE)


def assert_valid_png(path: Path, *, aspect: float | None = None) -> None:
    """Decodes every pixel (a header alone would pass a truncated file)."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()
        if aspect is not None:
            assert abs(image.width / image.height - aspect) < 0.02


def test_simulate_never_reaches_the_configured_api(tmp_path: Path, inputs: dict[str, Path]) -> None:
    """--simulate means no credits: a configured KLING_BASE_URL and real keys are not used."""
    real = _clean_env(
        KLING_PROVIDER="official",
        KLING_BASE_URL=f"http://127.0.0.1:{_free_port()}",  # nothing listens: a call would fail
        KLING_ACCESS_KEY="a-real-access-key",
        KLING_SECRET_KEY="a-real-secret-key-that-the-simulator-does-not-know",
    )
    result = run_cli(
        "generate", "image", "--simulate", "--subject", str(inputs["a.png"]), "--json",
        cwd=tmp_path, env=real,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["status"] == "succeed"
    listed = run_cli("task", "list", "image", "--simulate", cwd=tmp_path, env=real)
    assert listed.returncode == 0, listed.stderr


def test_generate_video_simulated_writes_a_playable_mp4(
    tmp_path: Path, inputs: dict[str, Path]
) -> None:
    out = tmp_path / "video-out"
    result = run_cli(
        "generate", "video", "--simulate", "--image", str(inputs["a.png"]),
        "--image", str(inputs["b.jpg"]), "--prompt", "the two fly away", "--duration", "5",
        "--aspect-ratio", "9:16", "--out", str(out), "--json",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["status"] == "succeed"
    assert len(summary["files"]) == 1
    video_path = Path(summary["files"][0])
    assert video_path.parent == out and video_path.suffix == ".mp4"
    with av.open(str(video_path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.height > stream.width  # 9:16
        seconds = float(container.duration) / av.time_base
        assert 4.5 <= seconds <= 5.5
        assert sum(1 for _ in container.decode(stream)) > 10


def test_bad_input_exits_2_and_names_the_image(tmp_path: Path, inputs: dict[str, Path]) -> None:
    result = run_cli(
        "generate", "image", "--simulate", "--subject", str(inputs["a.png"]),
        "--subject", str(inputs["notes.png"]),
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    assert "subject2" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2


@pytest.mark.parametrize(
    "args",
    [
        ("generate", "image", "--simulate", "--subject", "a.png", "-n", "10"),
        ("generate", "video", "--simulate", "--image", "a.png"),  # no --prompt
        ("generate", "image", "--simulate", "--subject", "missing.png"),
        ("generate", "image", "--simulate", *("--subject", "a.png") * 5),
    ],
)
def test_bad_usage_exits_2(tmp_path: Path, inputs: dict[str, Path], args: tuple[str, ...]) -> None:
    result = run_cli(*args, cwd=inputs["a.png"].parent)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2, result.stderr


def test_unreachable_api_exits_3_with_one_line(tmp_path: Path) -> None:
    env = _clean_env(
        KLING_PROVIDER="gateway",
        KLING_BASE_URL=f"http://127.0.0.1:{_free_port()}",
        KLING_API_KEY="k",
        KLING_MAX_ATTEMPTS="2",
    )
    result = run_cli("task", "get", "video", "some-task", cwd=tmp_path, env=env)
    assert result.returncode == 3
    assert "connection refused" in result.stderr and "try again later" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_missing_credentials_exit_3_with_one_line(tmp_path: Path, inputs: dict[str, Path]) -> None:
    result = run_cli("generate", "image", "--subject", str(inputs["a.png"]), cwd=tmp_path)
    assert result.returncode == 3
    assert result.stderr.strip().count("\n") == 0
    assert "KLING_ACCESS_KEY" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unknown_image_model_setting_is_one_line_and_exit_3(
    tmp_path: Path, inputs: dict[str, Path]
) -> None:
    # bot.config does not know Kling's models: the Kling layer checks KLING_IMAGE_MODEL, still
    # before any image is read or anything is sent.
    env = _clean_env(KLING_IMAGE_MODEL="kling-v9")
    result = run_cli(
        "generate", "image", "--simulate", "--subject", str(inputs["a.png"]), cwd=tmp_path, env=env
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kling-bot: KLING_IMAGE_MODEL: "), lines
    assert "kling-v9" in lines[0] and "kling-v2-1" in lines[0]
    assert not (tmp_path / "out").exists()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def simulator_process(cwd: Path, *flags: str) -> Iterator[str]:
    """``kling-bot simulate`` in a subprocess; yields its base URL once it accepts connections."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "bot", "simulate", "--port", str(port), *flags],
        cwd=cwd, env=_clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    process.kill()
                    pytest.fail(f"simulator did not start: {process.communicate()[1]}")
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def standalone_simulator(tmp_path: Path) -> Iterator[str]:
    with simulator_process(
        tmp_path, "--processing-seconds", "0.5", "--submitted-seconds", "0.2"
    ) as url:
        yield url


def test_against_a_standalone_simulator(
    tmp_path: Path, inputs: dict[str, Path], standalone_simulator: str
) -> None:
    official = _clean_env(
        KLING_PROVIDER="official",
        KLING_BASE_URL=standalone_simulator,
        KLING_ACCESS_KEY="simulator-access-key",
        KLING_SECRET_KEY="simulator-secret-key-for-local-use-only",
    )
    result = run_cli(
        "generate", "image", "--subject", str(inputs["a.png"]), "--subject", str(inputs["b.jpg"]),
        "--prompt", "portrait", "-n", "2", "--json",
        cwd=tmp_path, env=official,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert len(summary["files"]) == 2
    for path in summary["files"]:
        assert_valid_png(tmp_path / path)

    got = run_cli("task", "get", "image", summary["external_task_id"], "--json",
                  cwd=tmp_path, env=official)  # fmt: skip
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["task_id"] == summary["task_id"]

    listed = run_cli("task", "list", "image", "--page-size", "5", cwd=tmp_path, env=official)
    assert listed.returncode == 0, listed.stderr
    assert re.search(rf"^{summary['task_id']}\s+succeed", listed.stdout, re.MULTILINE)

    wrong_key = {**official, "KLING_SECRET_KEY": "not-the-key"}
    denied = run_cli("task", "list", "image", cwd=tmp_path, env=wrong_key)
    assert denied.returncode == 3
    assert "1000" in denied.stderr and "Traceback" not in denied.stderr

    missing = run_cli("task", "get", "video", "no-such-task", cwd=tmp_path, env=official)
    assert missing.returncode == 2
    assert "no video task 'no-such-task'" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


def test_failed_task_exits_1_with_the_reason(tmp_path: Path, inputs: dict[str, Path]) -> None:
    flags = ("--processing-seconds", "0.2", "--failure-rate", "1")
    with simulator_process(tmp_path, *flags) as base_url:
        env = _clean_env(KLING_PROVIDER="simulator", KLING_BASE_URL=base_url)
        result = run_cli(
            "generate", "video", "--image", str(inputs["a.png"]), "--prompt", "x",
            cwd=tmp_path, env=env,
        )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "failed: Failure to pass the risk control system" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (("task", "list", "image", "--page", "0"), "--page"),
        (("task", "list", "video", "--page-size", "501"), "--page-size"),
        (("task", "get", "image", " "), "task id is empty"),
    ],
)
def test_task_arguments_out_of_range_exit_2(
    tmp_path: Path, args: tuple[str, ...], complaint: str
) -> None:
    result = run_cli(*args, "--simulate", cwd=tmp_path)
    assert result.returncode == 2
    assert complaint in result.stderr
    assert "Traceback" not in result.stderr


async def test_a_refused_discord_token_is_one_line_and_exit_3(tmp_path: Path) -> None:
    async with FakeDiscord(token="the-right-token") as fake:
        env = _clean_env(DISCORD_TOKEN="a-wrong-token", DISCORD_API_BASE=fake.api_base)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "sync", cwd=tmp_path, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    message = stderr.decode()
    assert process.returncode == 3
    assert "Discord refused DISCORD_TOKEN" in message
    assert "Traceback" not in message
