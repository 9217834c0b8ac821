"""The two ways of following Kling tasks that the benchmark compares.

* ``submit_via_discord``: ours. Tasks enter the real bot (a subprocess) as ``/kling image``
  slash commands through the fake Discord; the bot follows them with callbacks plus batched
  polling and posts each result in the channel. Only the submission is driven from here.
* ``baseline``: the usual client. Each task is created, then polled alone with
  ``KlingClient.get_task`` every ``interval`` seconds until it ends; its result is downloaded and
  posted in the channel. It runs as its own process (``python -m bench.strategies``) so that its
  CPU and memory are measured the same way as the bot's.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import sys
import time
from typing import Any

import aiohttp
from PIL import Image

from bot.app import open_kling
from bot.config import Settings
from bot.kling.client import new_external_task_id
from bot.kling.models import TaskKind
from bot.kling.params import ImageParams, build_request

PROMPT = "a red cube on a wooden table, studio light"
STALL_SECONDS = 30.0


def input_png(size: int = 400) -> bytes:
    """The small attachment every benchmark task uses (a valid PNG: it passes through)."""
    out = io.BytesIO()
    Image.new("RGB", (size, size), (200, 60, 40)).save(out, "PNG")
    return out.getvalue()


async def submit_via_discord(
    fake: Any,
    created: Any,
    n: int,
    channel_ids: list[int],
    *,
    window: int = 64,
    limit: float = 600.0,
) -> float:
    """Send ``n`` ``/kling image`` commands, each from its own member, round-robin over
    ``channel_ids``, keeping at most ``window`` in the bot's pipeline (sent but not yet created
    at Kling; ``created()`` counts creates). Returns the seconds until the last one was created
    at Kling, or until it gave up on the rest."""
    png = input_png()
    start = progress = time.monotonic()
    deadline, seen, sent = start + limit, 0, 0
    while created() < n:
        now = time.monotonic()
        if created() > seen:
            seen, progress = created(), now
        # Stop at the limit, or once everything is sent and creates have stalled (a command
        # the bot failed to answer never becomes a task): the caller counts what was created.
        if now > deadline or (sent == n and now - progress > STALL_SECONDS):
            break
        while sent < n and sent - created() < window:
            await fake.send_slash_command(
                "kling",
                subcommand="image",
                options={"prompt": PROMPT, "count": 1, "aspect_ratio": "1:1"},
                attachments={"subject1": ("subject.png", png, "image/png")},
                user={"id": 900_000_000_000 + sent, "name": f"member{sent}"},
                channel_id=channel_ids[sent % len(channel_ids)],
            )
            sent += 1
        await asyncio.sleep(0.01)
    return time.monotonic() - start


# --- the baseline client (its own process) ---------------------------------------------------


async def baseline(
    *,
    n: int,
    interval: float,
    kling_url: str,
    api_base: str,
    token: str,
    channel_ids: list[int],
    limit: float,
) -> dict[str, Any]:
    """Create ``n`` tasks, poll each alone every ``interval`` s, download and post each result."""
    settings = Settings(_env_file=None, kling_provider="simulator", kling_base_url=kling_url)  # type: ignore[call-arg]
    image = base64.b64encode(input_png()).decode("ascii")
    params = ImageParams(prompt=PROMPT, n=1, aspect_ratio="1:1")
    posted = 0
    async with open_kling(settings) as (settings, client, session):

        async def follow(index: int, external_id: str) -> None:
            nonlocal posted
            request = build_request(params, [("subject1", image)], external_task_id=external_id)
            task = await client.create_task(request)
            while not task.is_terminal:
                await asyncio.sleep(interval)
                task = await client.get_task(TaskKind.IMAGE, task.task_id)
            files = []
            for url in task.result_urls():
                async with session.get(url) as response:
                    files.append(await response.read())
            form = aiohttp.FormData()
            form.add_field("payload_json", json.dumps({"content": f"baseline {external_id}"}))
            for i, data in enumerate(files):
                form.add_field(f"files[{i}]", data, filename=f"kling-{i}.png")
            url = f"{api_base}/channels/{channel_ids[index % len(channel_ids)]}/messages"
            headers = {"Authorization": f"Bot {token}"}
            async with session.post(url, data=form, headers=headers) as response:
                response.raise_for_status()
            posted += 1

        start = time.monotonic()
        jobs = [asyncio.create_task(follow(i, new_external_task_id())) for i in range(n)]
        done, pending = await asyncio.wait(jobs, timeout=limit)
        for job in pending:
            job.cancel()
        errors = [repr(job.exception()) for job in done if job.exception() is not None]
        return {
            "posted": posted,
            "seconds": time.monotonic() - start,
            "errors": len(errors),
            "first_error": errors[0] if errors else None,
            "timed_out": len(pending),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.strategies")
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--interval", type=float, required=True)
    parser.add_argument("--kling-url", required=True)
    parser.add_argument("--api-base", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--channels", required=True, help="channel ids, comma-separated")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args(argv)
    summary = asyncio.run(
        baseline(
            n=args.n,
            interval=args.interval,
            kling_url=args.kling_url,
            api_base=args.api_base,
            token=args.token,
            channel_ids=[int(c) for c in args.channels.split(",")],
            limit=args.timeout,
        )
    )
    print(json.dumps(summary))
    return 0 if summary["posted"] == args.n else 1


if __name__ == "__main__":
    sys.exit(main())
