"""The simulated Kling API server: its routes, the task store, slot limits and its start/stop.

``KlingSimulator`` puts the parts together: ``auth`` checks the sign-in, ``faults`` draws the
injected failures, ``validation`` checks create bodies, ``tasks`` is one task's lifecycle,
``callbacks`` posts status changes, ``results`` serves the media. ``simulated_settings`` starts
one in this process for the bot or the CLI (``--simulate``). The package docstring lists every
endpoint and fault.
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import itertools
import json
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from pydantic import SecretStr

from bot.config import Settings
from bot.kling.models import TaskKind
from bot.kling.providers import IMAGE_PATH, VIDEO_PATH
from bot.text import t
from kling_sim import media
from kling_sim.auth import Authenticator
from kling_sim.callbacks import CallbackSender
from kling_sim.config import Faults, SimulatorConfig
from kling_sim.faults import Dice, request_faults
from kling_sim.results import ResultFiles
from kling_sim.tasks import FAILURE_MESSAGE, SimTask
from kling_sim.validation import ApiError, invalid, page_param, validate_image, validate_video

__all__ = [
    "FAILURE_MESSAGE",
    "ApiError",
    "Faults",
    "KlingSimulator",
    "SimTask",
    "SimulatorConfig",
    "simulated_settings",
]

log = logging.getLogger(__name__)

COMET_PATH = "/kling/v1/images/generations"
# Base64 images make big bodies: 6 images of 10 MB as base64 fit.
MAX_BODY = 96 * 2**20

Work = Callable[[web.Request, TaskKind, str], Awaitable[Any]]


class KlingSimulator:
    """The simulated Kling API. Use ``async with KlingSimulator(cfg) as sim`` or ``sim.app``."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config or SimulatorConfig()
        self.calls: collections.Counter[str] = collections.Counter()
        self.tasks: dict[str, SimTask] = {}
        self.base_url = ""
        self._result_origin_from_request = False
        self._dice = Dice(self.config.seed)
        id_rng = random.Random(self.config.seed)
        self._ids = itertools.count(id_rng.randrange(10**17, 9 * 10**17))
        self._by_kind: dict[TaskKind, list[SimTask]] = {k: [] for k in TaskKind}
        self._by_external: dict[str, SimTask] = {}
        self._slot_heap: dict[TaskKind, list[tuple[float, int]]] = {k: [] for k in TaskKind}
        self._slots_used: dict[TaskKind, int] = dict.fromkeys(TaskKind, 0)
        self._auth = Authenticator(self.config)
        # Bound methods, so that a subclass's hooks (tests count the faults they inject) apply.
        self._callbacks = CallbackSender(self.config, self._roll, self.calls)
        self._results = ResultFiles(self.tasks, self.calls, self.config)
        self._runner: web.AppRunner | None = None
        self.app = web.Application(client_max_size=MAX_BODY, middlewares=[self._not_found])
        self.app[SIM_KEY] = self
        self.app.on_startup.append(self._on_startup)
        self.app.on_cleanup.append(self._on_cleanup)
        self._add_routes()

    def _add_routes(self) -> None:
        router = self.app.router
        for prefix, flavour in (("", "official"), ("/kling", "gateway")):
            for kind, path in ((TaskKind.IMAGE, IMAGE_PATH), (TaskKind.VIDEO, VIDEO_PATH)):
                router.add_post(prefix + path, self._handler("create", kind, flavour))
                router.add_get(prefix + path, self._handler("list", kind, flavour))
                router.add_get(prefix + path + "/{id}", self._handler("get", kind, flavour))
        router.add_post(COMET_PATH, self._handler("create", TaskKind.IMAGE, "cometapi"))
        router.add_get(COMET_PATH, self._handler("list", TaskKind.IMAGE, "cometapi"))
        router.add_get(COMET_PATH + "/{id}", self._handler("get", TaskKind.IMAGE, "cometapi"))
        router.add_get("/results/{task_id}/{name}", self._results.handle)

    # --- lifecycle ---

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on ``host:port`` (0: any free port) and return the base URL.

        Calling it again (e.g. after ``async with``) adds that address; base_url follows it.
        """
        if self._runner is None:
            self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1.0)
            await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, backlog=4096)  # benchmarks open many
        await site.start()
        bound_host, bound_port = self._runner.addresses[-1][:2]
        # Bound to every interface (a container, another host): result URLs then name the
        # address each client reached us at, not a loopback one it cannot connect to.
        self._result_origin_from_request = bound_host in ("0.0.0.0", "::", "")
        if self._result_origin_from_request:
            bound_host = "127.0.0.1"
        bound_host = f"[{bound_host}]" if ":" in bound_host else bound_host
        self.base_url = f"http://{bound_host}:{bound_port}"
        log.info("Kling simulator listening on %s", self.base_url)
        return self.base_url

    async def close(self) -> None:
        self._dice.closing.set()  # wakes every hanging fault
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        else:
            await self._on_cleanup(self.app)

    async def __aenter__(self) -> KlingSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _on_startup(self, app: web.Application) -> None:
        self._dice.closing.clear()
        self._callbacks.open()

    async def _on_cleanup(self, app: web.Application) -> None:
        self._dice.closing.set()
        await self._callbacks.close()

    def reset_counters(self) -> None:
        self.calls.clear()

    # --- plumbing ---

    def _roll(self, rate: float) -> bool:
        return self._dice.roll(rate)

    async def _request_faults(self) -> web.Response | None:
        return await request_faults(self.config.faults, self._roll, self._dice)

    @staticmethod
    def _envelope(
        data: Any, status: int = 200, code: int = 0, message: str = "SUCCEED"
    ) -> web.Response:
        body = {"code": code, "message": message, "request_id": str(uuid.uuid4()), "data": data}
        return web.Response(
            body=json.dumps(body).encode(), status=status, content_type="application/json"
        )

    @web.middleware
    async def _not_found(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as exc:
            if request.path.startswith("/results/"):
                raise
            what = "method not allowed" if exc.status == 405 else "no such endpoint"
            return self._envelope(None, 404, 1202, f"{what}: {request.method} {request.path}")

    def _handler(self, action: str, kind: TaskKind, flavour: str) -> Any:
        label = f"{action}_{kind.value}"
        work: Work = {"create": self._create, "get": self._get, "list": self._list}[action]

        async def handle(request: web.Request) -> web.StreamResponse:
            self.calls[label] += 1
            try:
                self._auth.check(request.headers.get("Authorization", ""), flavour)
                malformed = await self._request_faults()
                if malformed is not None:
                    return malformed
                return self._envelope(await work(request, kind, flavour))
            except ApiError as exc:
                return self._envelope(None, exc.status, exc.code, exc.message)

        return handle

    # --- API ---

    async def _create(self, request: web.Request, kind: TaskKind, flavour: str) -> dict[str, Any]:
        try:
            body = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, 1200, "request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, 1200, "request body must be a JSON object")
        spec = (validate_image if kind is TaskKind.IMAGE else validate_video)(body, flavour)
        if kind is TaskKind.VIDEO and media.video_encoder_missing():
            # Refused before anything exists: a video made later could not be downloaded.
            raise invalid(t("kling_sim.no_video_encoder", extra=media.VIDEO_EXTRA))
        external = spec["external_task_id"]
        if external is not None and external in self._by_external:
            raise invalid(f"external_task_id: {external!r} already exists")
        now = time.time()
        slots = spec["n"] if kind is TaskKind.IMAGE else 1
        self._check_slots(kind, slots, now)
        task = self._new_task(request, kind, body, spec, slots, now)
        faults = self.config.faults
        if self._roll(faults.lost_create_response_rate):
            await self._dice.sleep(faults.hang_seconds)
            if request.transport is not None:
                request.transport.abort()  # the client sees the connection drop, no answer
            raise ApiError(500, 5000, "connection dropped")  # never reaches the client
        return task.create_answer()

    def _new_task(
        self,
        request: web.Request,
        kind: TaskKind,
        body: dict[str, Any],
        spec: dict[str, Any],
        slots: int,
        now: float,
    ) -> SimTask:
        cfg, faults = self.config, self.config.faults
        processing_at = now + cfg.submitted_seconds
        task = SimTask(
            task_id=str(next(self._ids)),
            kind=kind,
            request=body,
            slots=slots,
            created_at=now,
            processing_at=processing_at,
            done_at=processing_at + cfg.processing_seconds,
            failed=self._roll(faults.task_failure_rate),
            expired=self._roll(faults.expired_result_rate),
            origin=self._result_origin(request),
            **spec,
        )
        self.tasks[task.task_id] = task
        self._by_kind[kind].append(task)
        if task.external_task_id is not None:
            self._by_external[task.external_task_id] = task
        heapq.heappush(self._slot_heap[kind], (task.done_at, slots))
        self._slots_used[kind] += slots
        if task.callback_url:
            self._callbacks.schedule(task)
        return task

    def _result_origin(self, request: web.Request) -> str:
        if self.base_url and not self._result_origin_from_request:
            return self.base_url
        return str(request.url.origin())

    def _check_slots(self, kind: TaskKind, slots: int, now: float) -> None:
        heap = self._slot_heap[kind]
        while heap and heap[0][0] <= now:  # release the slots of tasks that have ended
            self._slots_used[kind] -= heapq.heappop(heap)[1]
        cfg, used = self.config, self._slots_used[kind]
        limit = cfg.image_concurrency if kind is TaskKind.IMAGE else cfg.video_concurrency
        if limit is not None and used + slots > limit:
            why = f"{used} of {limit} {kind.value} slots in use, this task needs {slots}"
            raise ApiError(429, 1303, f"parallel task over resource pack limit: {why}")

    def _find(self, kind: TaskKind, key: str) -> SimTask:
        task = self.tasks.get(key)
        if task is None or task.kind is not kind:
            task = self._by_external.get(key)
        if task is None or task.kind is not kind:
            raise ApiError(404, 1203, f"task {key!r} does not exist")
        return task

    async def _get(self, request: web.Request, kind: TaskKind, flavour: str) -> dict[str, Any]:
        return self._find(kind, request.match_info["id"]).to_json()

    async def _list(self, request: web.Request, kind: TaskKind, flavour: str) -> list[Any]:
        page = page_param(request.query, "pageNum", 1, 1000)
        size = page_param(request.query, "pageSize", 30, 500)
        tasks = self._by_kind[kind]
        end = len(tasks) - (page - 1) * size
        start = max(0, end - size)
        return [task.to_json() for task in reversed(tasks[start : max(0, end)])]


SIM_KEY = web.AppKey("kling_simulator", KlingSimulator)


async def simulated_settings(
    settings: Settings,
    stack: contextlib.AsyncExitStack,
    *,
    force: bool = False,
    config: SimulatorConfig | None = None,
) -> Settings:
    """Start a simulator in this process when the settings ask for one and name none.

    ``KLING_PROVIDER=simulator`` with ``KLING_BASE_URL`` set means a simulator running elsewhere
    (``kling-bot simulate``), which is used as it is. ``force`` is the ``--simulate`` flag.
    The simulator is closed with ``stack``; the returned settings point at it.
    """
    if not force and (not settings.simulated or settings.kling_base_url):
        return settings
    simulator = KlingSimulator(config or SimulatorConfig())
    base_url = await simulator.start()
    stack.push_async_callback(simulator.close)
    log.info("simulating Kling at %s: no credits are used", base_url)
    # The simulator's own keys, never the operator's real ones (which it would refuse anyway).
    return settings.model_copy(
        update={
            "kling_provider": "simulator",
            "kling_base_url": base_url,
            "kling_access_key": SecretStr(simulator.config.access_key),
            "kling_secret_key": SecretStr(simulator.config.secret_key),
            "kling_api_key": None,
        }
    )
