"""The HTTP listener: Kling's callbacks, ``/healthz`` and ``/metrics``, as an aiohttp app factory.

Kling signs nothing, so a callback is trusted only as far as its URL: ``/kling/callback/{token}``
where the token is an HMAC of the task's external id (``callback_token``). An unknown token is a
404, a body that is not that task's object a 400, a body over the limit a 413, a compressed one
a 415 (Kling sends plain JSON), a body that does not arrive in time a 408. The handler never
answers 500: anything unexpected is logged and answered 503 (Kling may retry; the poller is the
safety net either way). The work a callback triggers runs after the answer, in the task core
(``callbacks``).

The port faces the internet, so ``start_listener`` serves the app with limits (``ListenerLimits``):
nothing is inflated, a request head must arrive within a few seconds and a body too, and
connections over a cap are answered 503 and closed at once, so that slow or half-open clients
cannot hold the bot's file descriptors or its event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import resource
import time
from dataclasses import dataclass
from typing import Protocol

from aiohttp import hdrs, web
from pydantic import ValidationError

from bot.kling.models import KlingTask
from bot.tasks.metrics import CONTENT_TYPE, Metrics
from bot.tasks.models import TaskRecord

log = logging.getLogger(__name__)

CALLBACK_PATH = "/kling/callback/"
TOKEN_CHARS = 32

# The listener's limits. Kling sends one small JSON object per connection, at once: a few
# seconds are plenty for a genuine sender and bound what a slow one can hold.
HEAD_TIMEOUT = 5.0  # seconds for a request line and headers to arrive (also idle keep-alive)
BODY_TIMEOUT = 5.0  # seconds for a callback's body to arrive once its head has
LINGER = 1.0  # seconds spent draining an unread body after the answer, so its sender sees it
# High enough for a burst of callbacks and /healthz under a slowloris load of a few hundred.
MAX_CONNECTIONS = 512
# File descriptors kept free beyond the cap for Kling, Discord, SQLite and result files.
FD_RESERVE = 256


@dataclass(frozen=True)
class ListenerLimits:
    """How long a client may take and how many may be connected at once (tests shorten them)."""

    head_timeout: float = HEAD_TIMEOUT
    body_timeout: float = BODY_TIMEOUT
    linger: float = LINGER
    max_connections: int = MAX_CONNECTIONS


def callback_token(secret: str, external_task_id: str) -> str:
    """The unguessable part of a task's callback URL."""
    digest = hmac.new(secret.encode(), external_task_id.encode(), hashlib.sha256).hexdigest()
    return digest[:TOKEN_CHARS]


def callback_url(public_base_url: str, token: str) -> str:
    return public_base_url.rstrip("/") + CALLBACK_PATH + token


class WebhookBackend(Protocol):
    """What the listener needs from the task core (``TaskCore``)."""

    metrics: Metrics

    @property
    def max_body(self) -> int: ...
    async def task_for_token(self, token: str) -> TaskRecord | None: ...
    # Takes the callback in and answers at once: True if it was news, False if a duplicate or
    # stale status that was ignored. The work it triggers runs in the background.
    async def accept_callback(self, record: TaskRecord, task: KlingTask) -> bool: ...
    async def health(self) -> dict[str, bool]: ...
    async def metrics_text(self) -> str: ...


BACKEND = web.AppKey("webhook_backend", WebhookBackend)
LIMITS = web.AppKey("listener_limits", ListenerLimits)


def create_webhook_app(backend: WebhookBackend) -> web.Application:
    # client_max_size makes aiohttp refuse bigger bodies even without a Content-Length.
    app = web.Application(client_max_size=backend.max_body)
    app[BACKEND] = backend
    app[LIMITS] = ListenerLimits()  # start_listener sets the ones it serves with
    app.router.add_post(CALLBACK_PATH + "{token}", handle_callback)
    app.router.add_get("/healthz", handle_healthz)
    app.router.add_get("/metrics", handle_metrics)
    return app


def _refuse(metrics: Metrics, status: int, reason: str, message: str) -> web.Response:
    metrics.callback("refused", reason)
    return web.json_response({"error": message}, status=status)


async def handle_callback(request: web.Request) -> web.Response:
    backend = request.app[BACKEND]
    metrics = backend.metrics
    try:
        if request.content_length is not None and request.content_length > backend.max_body:
            return _refuse(metrics, 413, "too_large", "body too large")
        if _is_encoded(request):
            return _refuse(
                metrics, 415, "encoded", "Content-Encoding is not supported: send plain JSON"
            )
        token = request.match_info["token"]
        record = await backend.task_for_token(token)
        if record is None:
            log.info("callback with an unknown token from %s", request.remote)
            return _refuse(metrics, 404, "unknown_token", "no such callback")
        try:
            async with asyncio.timeout(request.app[LIMITS].body_timeout):
                raw = await request.read()
        except TimeoutError:
            log.info("task %s: callback body did not arrive in time from %s", record.id,
                     request.remote)  # fmt: skip
            response = _refuse(metrics, 408, "timeout", "body did not arrive in time")
            response.force_close()
            return response
        except web.HTTPRequestEntityTooLarge:
            return _refuse(metrics, 413, "too_large", "body too large")
        except (web.RequestPayloadError, ConnectionResetError) as exc:
            # A body that does not match its Content-Encoding, or a sender that hung up
            # mid-body: the sender's fault, not ours (no 503, no traceback).
            log.info("task %s: callback body could not be read: %s", record.id, exc)
            return _refuse(metrics, 400, "malformed", "body could not be read")
        task = _parse_task(raw)
        if task is None:
            log.info("task %s: callback body is not a task object", record.id)
            return _refuse(metrics, 400, "malformed", "body is not a Kling task object")
        if not _matches(record, task):
            log.warning("task %s: callback names another task (%s, %s)",
                        record.id, task.task_id, task.external_task_id)  # fmt: skip
            return _refuse(metrics, 400, "mismatch", "task does not match the callback URL")
        news = await backend.accept_callback(record, task)
    except Exception:
        log.exception("callback handling failed")
        metrics.callback("error")
        return web.json_response({"error": "temporarily unavailable"}, status=503)
    metrics.callback("accepted" if news else "ignored")
    return web.json_response({"status": "accepted" if news else "ignored"})


def _is_encoded(request: web.Request) -> bool:
    """Whether the body claims any Content-Encoding but identity (gzip, br, a list...)."""
    codings = ",".join(request.headers.getall(hdrs.CONTENT_ENCODING, []))
    return any(coding.strip().lower() not in ("", "identity") for coding in codings.split(","))


def _parse_task(raw: bytes) -> KlingTask | None:
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # not UTF-8, not JSON, or nested too deep to parse
        return None
    if not isinstance(body, dict):
        return None
    try:
        return KlingTask.model_validate(body)
    except ValidationError:
        return None


def _matches(record: TaskRecord, task: KlingTask) -> bool:
    """The body must be the token's task: by Kling's id once known, and by our external id."""
    if record.kling_task_id is not None and task.task_id != record.kling_task_id:
        return False
    if task.external_task_id is not None and task.external_task_id != record.external_task_id:
        return False
    # Before the create answer is recorded only the external id can vouch for the body.
    return record.kling_task_id is not None or task.external_task_id is not None


async def handle_healthz(request: web.Request) -> web.Response:
    backend = request.app[BACKEND]
    try:
        checks = await backend.health()
    except Exception:
        log.exception("health check failed")
        checks = {"store": False}
    healthy = all(checks.values())
    return web.json_response(
        {"status": "ok" if healthy else "unhealthy", "checks": checks},
        status=200 if healthy else 503,
    )


async def handle_metrics(request: web.Request) -> web.Response:
    backend = request.app[BACKEND]
    try:
        text = await backend.metrics_text()
    except Exception:
        log.exception("rendering metrics failed")
        return web.Response(status=503, text="metrics unavailable\n")
    return web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE})


# --- serving it on a public port -----------------------------------------------------------------


async def start_listener(
    app: web.Application, host: str, port: int, limits: ListenerLimits = ListenerLimits()
) -> web.AppRunner:
    """Serve ``app`` on ``host:port`` under ``limits``; ``await runner.cleanup()`` stops it."""
    app[LIMITS] = limits  # handle_callback's body timeout
    runner = web.AppRunner(
        app,
        access_log=None,
        # By default aiohttp's parser inflates a gzip/deflate/br/zstd body as it arrives, on
        # the event loop, before any handler (or token check) runs: a 100 KiB bomb is 100 MiB
        # of work. Off, the body stays as sent and handle_callback answers it 415.
        auto_decompress=False,
        # aiohttp arms this timer when a connection opens and again after each answer, and
        # closes the connection if no complete request head has arrived when it fires: that
        # is the head timeout (aiohttp has no separate one), and the idle keep-alive limit.
        keepalive_timeout=limits.head_timeout,
        lingering_time=limits.linger,
    )
    await runner.setup()
    await _CappedSite(runner, host, port, _connection_cap(limits.max_connections)).start()
    return runner


def _connection_cap(wanted: int) -> int:
    """``wanted``, with FD_RESERVE file descriptors to spare beyond it.

    A cap only protects the bot if its other connections still find descriptors: the soft
    open-file limit is raised (up to the hard one) when it is too low; if even the hard limit
    is, the cap shrinks instead."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = wanted + FD_RESERVE
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return wanted
    raised = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
    log.info("raised the open-file limit from %d to %d for the webhook listener", soft, raised)
    if raised >= needed:
        return wanted
    cap = max(1, raised - FD_RESERVE)
    log.warning(
        "the open-file limit (%d) leaves room for only %d webhook connections: "
        "raise it (ulimit -n) to at least %d",
        raised, cap, needed,
    )  # fmt: skip
    return cap


_BUSY_BODY = b'{"error": "too many connections"}'
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY)
)
FULL_LOG_EVERY = 60.0  # seconds between "listener full" warnings: a flood must not flood the log


class _CappedSite(web.BaseSite):
    """A TCP site that lets at most ``cap`` connections reach aiohttp at a time."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, cap: int) -> None:
        super().__init__(runner, backlog=cap)  # a burst up to the cap waits to be accepted
        self._host = host
        self._port = port
        self.cap = cap
        self.live = 0
        self.full_logged_at: float | None = None

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None  # runner.setup() made it
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _CappedConnection(self, server), self._host, self._port, backlog=self._backlog
        )


class _CappedConnection(asyncio.Protocol):
    """One connection: handed to aiohttp's handler while the site has room, else told 503.

    A wrapper, not a subclass: aiohttp's ``Server`` builds its own handlers. Counting happens in
    connection_made/connection_lost, which asyncio calls exactly once each per transport."""

    def __init__(self, site: _CappedSite, server: web.Server) -> None:
        self._site = site
        self._server = server
        self._handler: asyncio.Protocol | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        site = self._site
        if site.live >= site.cap:
            now = time.monotonic()
            if site.full_logged_at is None or now - site.full_logged_at >= FULL_LOG_EVERY:
                log.warning("webhook listener full (%d connections): refusing new ones", site.cap)
                site.full_logged_at = now
            assert isinstance(transport, asyncio.Transport)
            transport.write(_BUSY)
            transport.close()
            return
        site.live += 1
        self._handler = self._server()
        self._handler.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._handler is not None:
            self._site.live -= 1
            self._handler.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._handler is not None:
            self._handler.data_received(data)

    def eof_received(self) -> bool | None:
        return self._handler.eof_received() if self._handler is not None else None

    def pause_writing(self) -> None:
        if self._handler is not None:
            self._handler.pause_writing()

    def resume_writing(self) -> None:
        if self._handler is not None:
            self._handler.resume_writing()
