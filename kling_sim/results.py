"""``GET /results/{task_id}/{index}.png|.mp4`` (``{index}-wm.*`` when watermarked).

Real media (``media``), made on first download in a thread, shared by concurrent downloads of
the same file and kept in a small LRU cache. A task's results exist once it has succeeded,
unless a fault expired them.
"""

from __future__ import annotations

import asyncio
import collections
import re
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from bot.kling.models import TaskKind, TaskStatus
from kling_sim import media
from kling_sim.config import SimulatorConfig
from kling_sim.tasks import SimTask

MEDIA_CACHE_ENTRIES = 256
_RESULT_NAME = re.compile(r"^(\d+)(-wm)?\.(png|mp4)$")


class ResultFiles:
    def __init__(
        self, tasks: Mapping[str, SimTask], calls: collections.Counter[str], config: SimulatorConfig
    ) -> None:
        self._tasks = tasks
        self._calls = calls
        self._config = config
        self._cache: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self._jobs: dict[str, asyncio.Task[bytes]] = {}

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self._calls["result"] += 1
        task = self._tasks.get(request.match_info["task_id"])
        match = _RESULT_NAME.match(request.match_info["name"])
        if task is None or match is None or task.expired or task.status is not TaskStatus.SUCCEED:
            raise web.HTTPNotFound(text="not found")
        index, watermarked, ext = int(match[1]), bool(match[2]), match[3]
        wanted = "png" if task.kind is TaskKind.IMAGE else "mp4"
        if ext != wanted or index >= task.result_count() or (watermarked and not task.watermark):
            raise web.HTTPNotFound(text="not found")
        spec = media.MediaSpec(
            task.task_id, index, task.aspect_ratio, task.prompt, task.images, task.scene,
            task.style, watermarked,
        )  # fmt: skip
        key = f"{task.task_id}/{match[0]}"
        if ext == "png":
            data = await self._media(key, media.render_png, spec, self._config.media_size)
            return web.Response(body=data, content_type="image/png")
        data = await self._media(key, media.render_mp4, spec, int(task.duration or "5"))
        return web.Response(body=data, content_type="video/mp4")

    async def _media(self, key: str, make: Callable[..., bytes], *args: Any) -> bytes:
        """Made once in a thread, shared by concurrent downloads, kept in a small LRU."""
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        job = self._jobs.get(key)
        if job is None:
            job = asyncio.create_task(asyncio.to_thread(make, *args))
            self._jobs[key] = job
            job.add_done_callback(lambda done: self._done(key, done))
        return await asyncio.shield(job)

    def _done(self, key: str, job: asyncio.Task[bytes]) -> None:
        self._jobs.pop(key, None)
        if job.cancelled() or job.exception() is not None:
            return
        self._cache[key] = job.result()
        while len(self._cache) > MEDIA_CACHE_ENTRIES:
            self._cache.popitem(last=False)
