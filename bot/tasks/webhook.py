"""The HTTP listener: Kling's callbacks, ``/healthz`` and ``/metrics``, as an aiohttp app factory.

Kling signs nothing, so a callback is trusted only as far as its URL: ``/kling/callback/{token}``
where the token is an HMAC of the task's external id (``callback_token``). An unknown token is a
404, a body that is not that task's object a 400, a body over the limit a 413. The handler never
answers 500: anything unexpected is logged and answered 503 (Kling may retry; the poller is the
safety net either way). The work a callback triggers runs after the answer, in the tracker.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from typing import Protocol

from aiohttp import web
from pydantic import ValidationError

from bot.kling.models import KlingTask
from bot.tasks.metrics import CONTENT_TYPE, Metrics
from bot.tasks.models import TaskRecord

log = logging.getLogger(__name__)

CALLBACK_PATH = "/kling/callback/"
TOKEN_CHARS = 32


def callback_token(secret: str, external_task_id: str) -> str:
    """The unguessable part of a task's callback URL."""
    digest = hmac.new(secret.encode(), external_task_id.encode(), hashlib.sha256).hexdigest()
    return digest[:TOKEN_CHARS]


def callback_url(public_base_url: str, token: str) -> str:
    return public_base_url.rstrip("/") + CALLBACK_PATH + token


class WebhookBackend(Protocol):
    """What the listener needs from the tracker."""

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


def create_webhook_app(backend: WebhookBackend) -> web.Application:
    # client_max_size makes aiohttp refuse bigger bodies even without a Content-Length.
    app = web.Application(client_max_size=backend.max_body)
    app[BACKEND] = backend
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
        token = request.match_info["token"]
        record = await backend.task_for_token(token)
        if record is None:
            log.info("callback with an unknown token from %s", request.remote)
            return _refuse(metrics, 404, "unknown_token", "no such callback")
        try:
            raw = await request.read()
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
