"""PyAV, the simulator's video encoder, is the optional ``video-sim`` extra: simulated images
need only Pillow, and a simulated video without it is refused with one line naming the extra.

PyAV is installed for the suite, so each case runs a child process in which ``import av``
fails, as it does on an install without the extra.
"""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
from pathlib import Path

import pytest

from testing.images import make_png
from testing.paths import REPO_ROOT

pytestmark = pytest.mark.slow

# Run the CLI with PyAV missing: None in sys.modules makes every `import av` fail.
WITHOUT_AV = "import sys; sys.modules['av'] = None; from bot.cli import main; sys.exit(main())"


def kling_bot_without_av(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KLING_", "DISCORD_"))}
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_AV, *args],
        cwd=cwd,
        env={**env, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def picture(tmp_path: Path) -> Path:
    path = tmp_path / "cat.png"
    path.write_bytes(make_png(400, 400))
    return path


def test_simulated_images_need_no_video_encoder(tmp_path: Path, picture: Path) -> None:
    result = kling_bot_without_av(
        "generate", "image", "--simulate", "--subject", str(picture), "--prompt", "a cat",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    files = result.stdout.split()
    assert len(files) == 1 and (tmp_path / files[0]).read_bytes().startswith(b"\x89PNG")


def test_a_simulated_video_without_the_encoder_is_one_line_naming_the_extra(
    tmp_path: Path, picture: Path
) -> None:
    result = kling_bot_without_av(
        "generate", "video", "--simulate", "--image", str(picture), "--prompt", "a walk",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr  # refused before anything was made
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "pip install 'kling-discord-bot[video-sim]'" in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_the_standalone_simulator_says_videos_need_the_extra(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KLING_", "DISCORD_"))}
    process = subprocess.Popen(
        [sys.executable, "-c", WITHOUT_AV, "simulate", "--port", "0"],
        cwd=tmp_path, env={**env, "PYTHONPATH": str(REPO_ROOT)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stdout is not None
    # The three lines it prints once listening (a reader thread, so a missing line fails the
    # test after 20 s instead of hanging it).
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as reader:
        lines = reader.submit(lambda: [process.stdout.readline() for _ in range(3)])
        try:
            out = "".join(lines.result(timeout=20))
        finally:
            process.terminate()
            process.wait(timeout=10)
    assert "listening on" in out
    assert "Video tasks will be refused" in out
    assert "pip install 'kling-discord-bot[video-sim]'" in out
