"""A local stand-in for Kling's API: every flavour, its validation, task lifecycle and failures.

Operators use it to try the whole bot without Kling credits; tests and benchmarks use it instead
of Kling. One aiohttp app serves:

* official ``/v1/images/multi-image2image`` and ``/v1/videos/multi-image2video`` (JWT, HS256,
  ``iss`` = access key, ``exp``/``nbf`` checked with Kling's ~5 s leeway);
* gateway ``/kling/v1/...`` (same paths, Bearer API key, ``scence_image``, plain-string subjects);
* CometAPI ``POST /kling/v1/images/generations`` and ``GET .../generations/{id}`` (Bearer, 2..4
  subjects);
* ``GET /results/{task_id}/{index}.png|.mp4`` (``{index}-wm.*`` when watermarked): real media
  made on first download (see ``sim_media``) and cached.

A task is ``submitted`` for ``submitted_seconds``, ``processing`` for ``processing_seconds``, then
``succeed`` or ``failed``. Status is computed from timestamps, so idle tasks cost no timers; only
tasks with a ``callback_url`` get ``loop.call_later`` handles, one per callback. A task holds its
concurrency slots (image: ``n``, video: 1) until it ends, failures too. Unknown task ids answer
HTTP 404 code 1203. ``final_unit_deduction`` is set when a task ends: image ``n`` units (one per
image), video 1 unit per 5 s in ``std`` and 2 in ``pro``; a failed task costs "0".

Faults (``Faults``, drawn from ``random.Random(seed)``; request faults apply to create, query and
list after authentication, in this order):

* ``timeout_rate``: sleep ``hang_seconds``, then HTTP 504 code 5002; nothing is created.
* ``rate_limit_rate``: HTTP 429 code 1302; nothing is created.
* ``server_error_rate``: HTTP 500 code 5000; nothing is created.
* ``malformed_rate``: HTTP 200 whose body is HTML or truncated JSON; nothing is created.
* ``slow_rate``: the answer is delayed by ``slow_seconds``, otherwise normal.
* ``lost_create_response_rate`` (create only): the task IS created, then the answer hangs for
  ``hang_seconds`` and the connection is dropped without a response.
* ``task_failure_rate`` (per task): ends ``failed`` with a content-safety ``task_status_msg``.
* ``expired_result_rate`` (per task): ends ``succeed`` but its result URLs answer 404.
* ``callback_drop_rate`` / ``callback_duplicate_rate`` (per callback): not sent / sent twice.
* ``callback_reorder``: a task's callbacks are held until it ends and sent newest first
  (final, processing, submitted).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import heapq
import io
import itertools
import json
import logging
import random
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import ClientSession, ClientTimeout, TCPConnector, web
from PIL import Image
from pydantic import SecretStr

from bot.config import SIMULATOR_ACCESS_KEY, SIMULATOR_SECRET_KEY, Settings
from bot.kling.models import (
    IMAGE_ASPECT_RATIOS,
    IMAGE_MODELS,
    MAX_INPUT_IMAGES,
    MAX_PROMPT_CHARS,
    VIDEO_ASPECT_RATIOS,
    TaskKind,
    TaskStatus,
)
from kling_sim import media as sim_media

log = logging.getLogger(__name__)

MAX_IMAGE_BYTES = 10 * 1024 * 1024
MIN_IMAGE_SIDE = 300
MAX_IMAGE_RATIO = 2.5
JWT_LEEWAY = 5.0
FAILURE_MESSAGE = "Failure to pass the risk control system"
MEDIA_CACHE_ENTRIES = 256
IMAGE_PATH = "/v1/images/multi-image2image"
VIDEO_PATH = "/v1/videos/multi-image2video"
COMET_PATH = "/kling/v1/images/generations"
_CREATE_FIELDS = frozenset({"task_id", "task_info", "task_status", "created_at", "updated_at"})
_RESULT_NAME = re.compile(r"^(\d+)(-wm)?\.(png|mp4)$")


@dataclass
class Faults:
    """Failure probabilities (0..1); see the module docstring for what each does."""

    server_error_rate: float = 0.0
    rate_limit_rate: float = 0.0
    timeout_rate: float = 0.0
    lost_create_response_rate: float = 0.0
    malformed_rate: float = 0.0
    task_failure_rate: float = 0.0
    slow_rate: float = 0.0
    slow_seconds: float = 2.0
    expired_result_rate: float = 0.0
    callback_drop_rate: float = 0.0
    callback_duplicate_rate: float = 0.0
    callback_reorder: bool = False
    hang_seconds: float = 30.0


@dataclass
class SimulatorConfig:
    access_key: str = SIMULATOR_ACCESS_KEY
    secret_key: str = SIMULATOR_SECRET_KEY
    api_keys: frozenset[str] = frozenset({"sim-api-key"})
    submitted_seconds: float = 0.5
    processing_seconds: float = 3.0
    image_concurrency: int | None = None
    video_concurrency: int | None = None
    faults: Faults = field(default_factory=Faults)
    seed: int | None = None
    media_size: int = 512


class ApiError(Exception):
    """An answer in Kling's error envelope."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _invalid(message: str) -> ApiError:
    return ApiError(400, 1201, message)


@dataclass(slots=True, eq=False)
class SimTask:
    """One simulated task. Times are Unix seconds; status follows from them."""

    task_id: str
    kind: TaskKind
    request: dict[str, Any]
    external_task_id: str | None
    callback_url: str | None
    n: int
    slots: int
    aspect_ratio: str
    prompt: str
    images: tuple[str, ...]
    scene: str | None
    style: str | None
    duration: str | None
    mode: str | None
    watermark: bool
    created_at: float
    processing_at: float
    done_at: float
    failed: bool
    expired: bool
    origin: str

    @property
    def status(self) -> TaskStatus:
        return self.status_at(time.time())

    def status_at(self, t: float) -> TaskStatus:
        if t < self.processing_at:
            return TaskStatus.SUBMITTED
        if t < self.done_at:
            return TaskStatus.PROCESSING
        return TaskStatus.FAILED if self.failed else TaskStatus.SUCCEED

    def deduction(self) -> str:
        if self.failed:
            return "0"
        if self.kind is TaskKind.IMAGE:
            return str(self.n)
        units = (2 if self.mode == "pro" else 1) * int(self.duration or "5") / 5
        return f"{units:g}"

    def to_json(self, status: TaskStatus | None = None) -> dict[str, Any]:
        """The task object of queries, lists and callbacks (at ``status``, default now)."""
        status = status or self.status
        changed = {
            TaskStatus.SUBMITTED: self.created_at,
            TaskStatus.PROCESSING: self.processing_at,
        }.get(status, self.done_at)
        info = {"external_task_id": self.external_task_id} if self.external_task_id else {}
        data: dict[str, Any] = {
            "task_id": self.task_id,
            "task_status": status.value,
            "task_status_msg": FAILURE_MESSAGE if status is TaskStatus.FAILED else "",
            "task_info": info,
            "watermark_info": {"enabled": self.watermark},
            "created_at": int(self.created_at * 1000),
            "updated_at": int(changed * 1000),
        }
        if status.is_terminal:
            data["final_unit_deduction"] = self.deduction()
        if status is TaskStatus.SUCCEED:
            data["task_result"] = self._result()
        return data

    def _result(self) -> dict[str, Any]:
        base = f"{self.origin}/results/{self.task_id}"
        if self.kind is TaskKind.VIDEO:
            video = {"id": f"{self.task_id}0", "url": f"{base}/0.mp4", "duration": self.duration}
            if self.watermark:
                video["watermark_url"] = f"{base}/0-wm.mp4"
            return {"videos": [video]}
        images = []
        for i in range(self.n):
            image: dict[str, Any] = {"index": i, "url": f"{base}/{i}.png"}
            if self.watermark:
                image["watermark_url"] = f"{base}/{i}-wm.png"
            images.append(image)
        return {"images": images}


# --- validation -----------------------------------------------------------------------------


def _text(body: dict[str, Any], name: str, *, required: bool = False) -> str:
    value = body.get(name)
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise _invalid(f"{name}: must be a string")
    if len(value) > MAX_PROMPT_CHARS:
        raise _invalid(f"{name}: {len(value)} characters, at most {MAX_PROMPT_CHARS} allowed")
    if required and not value.strip():
        raise _invalid(f"{name}: is required")
    return value


def _choice(body: dict[str, Any], name: str, allowed: tuple[str, ...], default: str) -> str:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, str):
        kind = type(value).__name__
        raise _invalid(
            f"{name}: must be a string, one of {', '.join(allowed)} (got {kind} {value!r})"
        )
    if value not in allowed:
        raise _invalid(f"{name}: {value!r} is not one of {', '.join(allowed)}")
    return value


def _image(value: Any, where: str, *, required: bool = False) -> str | None:
    """Check one input image (URL or raw base64 JPEG/PNG); "" or None means absent."""
    if value is None or value == "":
        if required:
            raise _invalid(f"{where}: is required and must not be empty")
        return None
    if not isinstance(value, str):
        raise _invalid(f"{where}: must be a string (an image URL or raw base64)")
    if value.startswith("data:"):
        raise _invalid(f"{where}: base64 must not have a 'data:' prefix; send the raw base64 only")
    if value.startswith(("http://", "https://")):
        return value  # Kling fetches URLs later; the simulator does not fetch at all.
    if len(value) * 3 // 4 > MAX_IMAGE_BYTES + 3:
        raise _invalid(f"{where}: image is larger than 10 MB")
    try:
        raw = base64.b64decode("".join(value.split()), validate=True)
        with Image.open(io.BytesIO(raw)) as image:
            fmt, (w, h) = image.format, image.size
    except (binascii.Error, ValueError, OSError):
        raise _invalid(f"{where}: not an http(s) URL nor raw base64 of a JPEG/PNG image") from None
    if len(raw) > MAX_IMAGE_BYTES:
        raise _invalid(f"{where}: image is {len(raw) / 2**20:.1f} MB, at most 10 MB allowed")
    if fmt not in ("JPEG", "PNG"):
        raise _invalid(f"{where}: format {fmt} is not supported; use jpg, jpeg or png")
    if min(w, h) < MIN_IMAGE_SIDE:
        raise _invalid(f"{where}: image is {w}x{h}; width and height must be at least 300 px")
    if max(w / h, h / w) > MAX_IMAGE_RATIO:
        raise _invalid(f"{where}: image is {w}x{h}; aspect ratio must be within 1:2.5..2.5:1")
    return value


def _image_list(
    body: dict[str, Any], name: str, key: str, flavour: str, low: int
) -> tuple[str, ...]:
    items = body.get(name)
    if not isinstance(items, list):
        raise _invalid(f"{name}: is required, a list of {low} to {MAX_INPUT_IMAGES} images")
    if not low <= len(items) <= MAX_INPUT_IMAGES:
        raise _invalid(f"{name}: must hold {low} to {MAX_INPUT_IMAGES} images, got {len(items)}")
    images = []
    for i, item in enumerate(items):
        if isinstance(item, dict):
            images.append(_image(item.get(key), f"{name}[{i}].{key}", required=True))
        elif isinstance(item, str) and flavour != "official":
            images.append(_image(item, f"{name}[{i}]", required=True))  # seed 001's shape
        else:
            raise _invalid(f'{name}[{i}]: must be an object {{"{key}": "<url or base64>"}}')
    return tuple(img for img in images if img)


def _common(body: dict[str, Any]) -> dict[str, Any]:
    watermark = body.get("watermark_info")
    if watermark is not None and not (
        isinstance(watermark, dict) and isinstance(watermark.get("enabled", False), bool)
    ):
        raise _invalid('watermark_info: must be {"enabled": true|false}')
    callback = body.get("callback_url") or None
    if callback is not None and not (
        isinstance(callback, str) and callback.startswith(("http://", "https://"))
    ):
        raise _invalid("callback_url: must be an http(s) URL")
    external = body.get("external_task_id")
    if external is not None and not isinstance(external, str):
        raise _invalid("external_task_id: must be a string")
    _text(body, "negative_prompt")
    return {
        "watermark": bool(watermark and watermark.get("enabled")),
        "callback_url": callback,
        "external_task_id": external or None,
    }


def validate_image(body: dict[str, Any], flavour: str) -> dict[str, Any]:
    """The checked fields of an image create body on ``flavour``'s path, else ApiError."""
    spec = _common(body)
    _choice(body, "model_name", IMAGE_MODELS, "kling-v2")
    spec["prompt"] = _text(body, "prompt")
    low = 2 if flavour == "cometapi" else 1
    spec["images"] = _image_list(body, "subject_image_list", "subject_image", flavour, low)
    spec["scene"] = _image(body.get("scene_image"), "scene_image")
    if body.get("scence_image"):
        if flavour == "official":
            # Kling would silently ignore it; failing loudly catches the gateway spelling.
            raise _invalid("scence_image: unknown field on the official API; use scene_image")
        spec["scene"] = spec["scene"] or _image(body["scence_image"], "scence_image")
    spec["style"] = _image(body.get("style_image"), "style_image")
    n = body.get("n", 1)
    if n is None:
        n = 1
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 9:
        raise _invalid(f"n: {n!r} must be an integer from 1 to 9")
    spec["n"] = n
    spec["aspect_ratio"] = _choice(body, "aspect_ratio", IMAGE_ASPECT_RATIOS, "16:9")
    spec.update(duration=None, mode=None)
    return spec


def validate_video(body: dict[str, Any], flavour: str) -> dict[str, Any]:
    """The checked fields of a video create body, else ApiError."""
    spec = _common(body)
    _choice(body, "model_name", ("kling-v1-6",), "kling-v1-6")
    spec["images"] = _image_list(body, "image_list", "image", flavour, 1)
    spec["prompt"] = _text(body, "prompt", required=True)
    spec["mode"] = _choice(body, "mode", ("std", "pro"), "std")
    spec["duration"] = _choice(body, "duration", ("5", "10"), "5")
    spec["aspect_ratio"] = _choice(body, "aspect_ratio", VIDEO_ASPECT_RATIOS, "16:9")
    spec.update(n=1, scene=None, style=None)
    return spec


# --- the server -----------------------------------------------------------------------------


class KlingSimulator:
    """The simulated Kling API. Use ``async with KlingSimulator(cfg) as sim`` or ``sim.app``."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config or SimulatorConfig()
        self.calls: collections.Counter[str] = collections.Counter()
        self.tasks: dict[str, SimTask] = {}
        self.base_url = ""
        self._result_origin_from_request = False
        self._rng = random.Random(self.config.seed)
        id_rng = random.Random(self.config.seed)
        self._ids = itertools.count(id_rng.randrange(10**17, 9 * 10**17))
        self._by_kind: dict[TaskKind, list[SimTask]] = {k: [] for k in TaskKind}
        self._by_external: dict[str, SimTask] = {}
        self._slot_heap: dict[TaskKind, list[tuple[float, int]]] = {k: [] for k in TaskKind}
        self._slots_used: dict[TaskKind, int] = dict.fromkeys(TaskKind, 0)
        self._tokens: dict[tuple[str, str, str], tuple[float, float]] = {}  # -> (exp, nbf)
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._timer_ids = itertools.count()
        self._sending: set[asyncio.Task[None]] = set()
        self._media_cache: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self._media_jobs: dict[str, asyncio.Task[bytes]] = {}
        self._session: ClientSession | None = None
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        # Base64 images make big bodies: 6 images of 10 MB as base64 fit.
        self.app = web.Application(client_max_size=96 * 2**20, middlewares=[self._not_found])
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
        router.add_get("/results/{task_id}/{name}", self._result)

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
        self._closing.set()  # wakes every hanging fault
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
        self._closing.clear()
        self._session = ClientSession(
            timeout=ClientTimeout(total=5, connect=2), connector=TCPConnector(limit=200)
        )

    async def _on_cleanup(self, app: web.Application) -> None:
        self._closing.set()
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        for task in list(self._sending):
            task.cancel()
        await asyncio.gather(*self._sending, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def reset_counters(self) -> None:
        self.calls.clear()

    # --- plumbing ---

    def _roll(self, rate: float) -> bool:
        return rate > 0 and (rate >= 1 or self._rng.random() < rate)

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake at once when the simulator closes."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._closing.wait()

    @staticmethod
    def _envelope(
        data: Any, status: int = 200, code: int = 0, message: str = "SUCCEED"
    ) -> web.Response:
        body = {"code": code, "message": message, "request_id": str(uuid.uuid4()), "data": data}
        return web.Response(
            body=json.dumps(body).encode(), status=status, content_type="application/json"
        )

    @web.middleware
    async def _not_found(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return await handler(request)
        except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as exc:
            if request.path.startswith("/results/"):
                raise
            what = "method not allowed" if exc.status == 405 else "no such endpoint"
            return self._envelope(None, 404, 1202, f"{what}: {request.method} {request.path}")

    def _handler(self, action: str, kind: TaskKind, flavour: str) -> Any:
        label = f"{action}_{kind.value}"
        work = {"create": self._create, "get": self._get, "list": self._list}[action]

        async def handle(request: web.Request) -> web.StreamResponse:
            self.calls[label] += 1
            try:
                self._authenticate(request, flavour)
                malformed = await self._request_faults()
                if malformed is not None:
                    return malformed
                return self._envelope(await work(request, kind, flavour))
            except ApiError as exc:
                return self._envelope(None, exc.status, exc.code, exc.message)

        return handle

    def _authenticate(self, request: web.Request, flavour: str) -> None:
        parts = request.headers.get("Authorization", "").split(None, 1)
        if parts and parts[0].lower() == "bearer":
            parts = parts[1:]
        token = parts[0].strip() if parts else ""
        if not token:
            raise ApiError(401, 1001, "Authorization is empty")
        if flavour != "official":
            if token not in self.config.api_keys:
                raise ApiError(401, 1000, "authentication failed: unknown API key")
            return
        cache_key = (token, self.config.access_key, self.config.secret_key)
        cached = self._tokens.get(cache_key)
        if cached is not None:  # PyJWT costs ~0.4 ms a decode; clients reuse a token for minutes
            now = time.time()
            if now > cached[0] + JWT_LEEWAY:
                raise ApiError(401, 1004, "Authorization has expired (exp)")
            if now < cached[1] - JWT_LEEWAY:
                raise ApiError(401, 1003, "Authorization is not yet valid (nbf)")
            return
        try:
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.InvalidTokenError:
            raise ApiError(401, 1002, "Authorization is invalid: not a JWT") from None
        if claims.get("iss") != self.config.access_key:
            raise ApiError(401, 1002, "Authorization is invalid: unknown access key (iss)")
        try:
            jwt.decode(
                token,
                self.config.secret_key,
                algorithms=["HS256"],
                leeway=JWT_LEEWAY,
                options={"require": ["exp"]},
            )
        except jwt.InvalidSignatureError:
            raise ApiError(401, 1000, "authentication failed: bad signature") from None
        except jwt.ExpiredSignatureError:
            raise ApiError(401, 1004, "Authorization has expired (exp)") from None
        except jwt.ImmatureSignatureError:
            raise ApiError(401, 1003, "Authorization is not yet valid (nbf)") from None
        except jwt.InvalidTokenError as exc:
            raise ApiError(401, 1002, f"Authorization is invalid: {exc}") from None
        if len(self._tokens) >= 4096:
            self._tokens.clear()
        self._tokens[cache_key] = (float(claims["exp"]), float(claims.get("nbf") or 0))

    async def _request_faults(self) -> web.Response | None:
        faults = self.config.faults
        if self._roll(faults.timeout_rate):
            await self._sleep(faults.hang_seconds)
            raise ApiError(504, 5002, "server timeout")
        if self._roll(faults.rate_limit_rate):
            raise ApiError(429, 1302, "rate limit exceeded: requests are too fast")
        if self._roll(faults.server_error_rate):
            raise ApiError(500, 5000, "internal server error")
        if self._roll(faults.malformed_rate):
            text = (
                '{"code":0,"message":"SUCCEED","request_id":"'
                if self._rng.random() < 0.5
                else "<html><body><h1>502 Bad Gateway</h1></body></html>"
            )
            return web.Response(text=text, content_type="application/json")
        if self._roll(faults.slow_rate):
            await self._sleep(faults.slow_seconds)
        return None

    # --- API ---

    async def _create(self, request: web.Request, kind: TaskKind, flavour: str) -> dict[str, Any]:
        try:
            body = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, 1200, "request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, 1200, "request body must be a JSON object")
        spec = (validate_image if kind is TaskKind.IMAGE else validate_video)(body, flavour)
        external = spec["external_task_id"]
        if external is not None and external in self._by_external:
            raise _invalid(f"external_task_id: {external!r} already exists")
        now = time.time()
        slots = spec["n"] if kind is TaskKind.IMAGE else 1
        self._check_slots(kind, slots, now)

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
        if external is not None:
            self._by_external[external] = task
        heapq.heappush(self._slot_heap[kind], (task.done_at, slots))
        self._slots_used[kind] += slots
        if task.callback_url:
            self._schedule_callbacks(task)

        if self._roll(faults.lost_create_response_rate):
            await self._sleep(faults.hang_seconds)
            if request.transport is not None:
                request.transport.abort()  # the client sees the connection drop, no answer
            raise ApiError(500, 5000, "connection dropped")  # never reaches the client
        data = task.to_json(TaskStatus.SUBMITTED).items()
        return {key: value for key, value in data if key in _CREATE_FIELDS}

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
        page = _page_param(request, "pageNum", 1, 1000)
        size = _page_param(request, "pageSize", 30, 500)
        tasks = self._by_kind[kind]
        end = len(tasks) - (page - 1) * size
        start = max(0, end - size)
        return [task.to_json() for task in reversed(tasks[start : max(0, end)])]

    # --- callbacks ---

    def _schedule_callbacks(self, task: SimTask) -> None:
        final = TaskStatus.FAILED if task.failed else TaskStatus.SUCCEED
        if self.config.faults.callback_reorder:
            plan = [(task.done_at, (final, TaskStatus.PROCESSING, TaskStatus.SUBMITTED))]
        else:
            plan = [
                (task.created_at, (TaskStatus.SUBMITTED,)),
                (task.processing_at, (TaskStatus.PROCESSING,)),
                (task.done_at, (final,)),
            ]
        loop, now = asyncio.get_running_loop(), time.time()
        for at, statuses in plan:
            timer = next(self._timer_ids)
            self._timers[timer] = loop.call_later(
                max(0.0, at - now), self._fire, timer, task, statuses
            )

    def _fire(self, timer: int, task: SimTask, statuses: tuple[TaskStatus, ...]) -> None:
        self._timers.pop(timer, None)
        sending = asyncio.create_task(self._deliver(task, statuses))
        self._sending.add(sending)
        sending.add_done_callback(self._sending.discard)

    async def _deliver(self, task: SimTask, statuses: tuple[TaskStatus, ...]) -> None:
        faults = self.config.faults
        for status in statuses:  # in order: a reordered plan arrives in that order
            if self._roll(faults.callback_drop_rate):
                continue
            body = json.dumps(task.to_json(status)).encode()
            for _ in range(2 if self._roll(faults.callback_duplicate_rate) else 1):
                await self._post(task.callback_url or "", body)

    async def _post(self, url: str, body: bytes) -> None:
        if self._session is None or self._session.closed:
            return
        self.calls["callback_sent"] += 1
        try:
            headers = {"Content-Type": "application/json"}
            async with self._session.post(url, data=body, headers=headers) as response:
                await response.read()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a callback is a hint: its failure must not hurt anything
            log.debug("callback to %s failed: %r", url, exc)

    # --- results ---

    async def _result(self, request: web.Request) -> web.StreamResponse:
        self.calls["result"] += 1
        task = self.tasks.get(request.match_info["task_id"])
        match = _RESULT_NAME.match(request.match_info["name"])
        if task is None or match is None or task.expired or task.status is not TaskStatus.SUCCEED:
            raise web.HTTPNotFound(text="not found")
        index, watermarked, ext = int(match[1]), bool(match[2]), match[3]
        count = task.n if task.kind is TaskKind.IMAGE else 1
        wanted = "png" if task.kind is TaskKind.IMAGE else "mp4"
        if ext != wanted or index >= count or (watermarked and not task.watermark):
            raise web.HTTPNotFound(text="not found")
        spec = sim_media.MediaSpec(
            task.task_id, index, task.aspect_ratio, task.prompt, task.images, task.scene,
            task.style, watermarked,
        )  # fmt: skip
        key = f"{task.task_id}/{match[0]}"
        if ext == "png":
            data = await self._media(key, sim_media.render_png, spec, self.config.media_size)
            return web.Response(body=data, content_type="image/png")
        data = await self._media(key, sim_media.render_mp4, spec, int(task.duration or "5"))
        return web.Response(body=data, content_type="video/mp4")

    async def _media(self, key: str, make: Any, *args: Any) -> bytes:
        """Made once in a thread, shared by concurrent downloads, kept in a small LRU."""
        cached = self._media_cache.get(key)
        if cached is not None:
            self._media_cache.move_to_end(key)
            return cached
        job = self._media_jobs.get(key)
        if job is None:
            job = asyncio.create_task(asyncio.to_thread(make, *args))
            self._media_jobs[key] = job
            job.add_done_callback(lambda done: self._media_done(key, done))
        return await asyncio.shield(job)

    def _media_done(self, key: str, job: asyncio.Task[bytes]) -> None:
        self._media_jobs.pop(key, None)
        if job.cancelled() or job.exception() is not None:
            return
        self._media_cache[key] = job.result()
        while len(self._media_cache) > MEDIA_CACHE_ENTRIES:
            self._media_cache.popitem(last=False)


SIM_KEY = web.AppKey("kling_simulator", KlingSimulator)


def _page_param(request: web.Request, name: str, default: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= high:
        raise _invalid(f"{name}: {raw!r} must be an integer from 1 to {high}")
    return value


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
