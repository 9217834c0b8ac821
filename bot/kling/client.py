"""An asyncio client for Kling's multi-image tasks, for every flavour in ``providers``.

Decisions are made on the body's ``code``, never on the HTTP status. Retries back off with full
jitter inside an attempt count and a time budget. A create whose outcome is unknown (timeout,
dropped connection, unreadable answer, 5xxx) is never blindly repeated: the client first looks
the task up by its ``external_task_id`` and creates again only when Kling says it does not exist,
always with the same ``external_task_id``, so one request costs credits at most once.
"""

from __future__ import annotations

import asyncio
import json as jsonlib
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
from pydantic import ValidationError

from bot.config import ConfigError, Settings
from bot.kling.auth import Authenticator, auth_from_settings
from bot.kling.errors import (
    KlingAuthExpired,
    KlingConcurrencyLimit,
    KlingConfigError,
    KlingError,
    KlingInvalidRequest,
    KlingNetworkError,
    KlingRateLimited,
    KlingServerError,
    error_for_code,
)
from bot.kling.models import (
    Envelope,
    ImageTaskRequest,
    KlingTask,
    TaskInfo,
    TaskKind,
    VideoTaskRequest,
)
from bot.kling.options import IMAGE_MODELS
from bot.kling.providers import Flavour, flavour_for
from bot.text import t

log = logging.getLogger(__name__)

T = TypeVar("T")
NOT_FOUND_CODES = frozenset({1201, 1202, 1203})
_RETRYABLE = (KlingRateLimited, KlingConcurrencyLimit, KlingServerError, KlingNetworkError)


def new_external_task_id() -> str:
    """A fresh id for ``external_task_id``: unique and 35 characters long."""
    return "kb-" + uuid.uuid4().hex


class KlingClient:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        flavour: Flavour,
        base_url: str,
        auth: Authenticator,
        request_timeout: float = 60.0,
        max_attempts: int = 5,
        retry_budget: float = 120.0,
        base_delay: float = 0.5,
        max_delay: float = 20.0,
        on_call: Callable[[str, int | None], None] | None = None,
        connect_timeout: float | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.flavour = flavour
        self._session = session
        self._base_url = base_url.rstrip("/")
        self._auth = auth
        self._timeout = aiohttp.ClientTimeout(total=request_timeout, sock_connect=connect_timeout)
        self._max_attempts = max_attempts
        self._retry_budget = retry_budget
        self._base_delay = base_delay
        self._max_delay = max_delay
        # Called after every HTTP exchange with (endpoint label, code): the tracker's metrics.
        self.on_call = on_call

    @classmethod
    def from_settings(
        cls, settings: Settings, session: aiohttp.ClientSession, **kw: Any
    ) -> KlingClient:
        settings.require_kling_credentials()
        require_known_image_model(settings)
        kw.setdefault("request_timeout", settings.kling_request_timeout)
        kw.setdefault("connect_timeout", settings.kling_connect_timeout)
        kw.setdefault("max_attempts", settings.kling_max_attempts)
        kw.setdefault("retry_budget", settings.kling_retry_budget)
        return cls(
            session,
            flavour=flavour_for(settings.kling_provider),
            base_url=settings.kling_base(),
            auth=auth_from_settings(settings),
            **kw,
        )

    def __repr__(self) -> str:
        return f"KlingClient(flavour={self.flavour.name!r}, base_url={self._base_url!r})"

    # --- public API ----------------------------------------------------------------------------

    async def create_image_task(
        self, request: ImageTaskRequest, *, retry_busy: bool = True
    ) -> KlingTask:
        return await self.create_task(request, retry_busy=retry_busy)

    async def create_video_task(
        self, request: VideoTaskRequest, *, retry_busy: bool = True
    ) -> KlingTask:
        return await self.create_task(request, retry_busy=retry_busy)

    async def create_task(
        self, request: ImageTaskRequest | VideoTaskRequest, *, retry_busy: bool = True
    ) -> KlingTask:
        self.flavour.check(request)
        kind = TaskKind.IMAGE if isinstance(request, ImageTaskRequest) else TaskKind.VIDEO
        if not request.external_task_id:
            request = request.model_copy(update={"external_task_id": new_external_task_id()})
        ext_id: str = request.external_task_id  # type: ignore[assignment]
        if isinstance(request, ImageTaskRequest):
            body = self.flavour.image_body(request)
        else:
            body = self.flavour.video_body(request)
        label = f"create_{kind}"
        payload = jsonlib.dumps(body)  # once: the images make it large
        log.info("%s: external_task_id=%s fields=%s size=%d bytes",
                 label, ext_id, sorted(body), len(payload))  # fmt: skip
        uncertain = False  # did an earlier attempt maybe create the task?

        async def attempt() -> KlingTask:
            nonlocal uncertain
            if uncertain:
                found = await self._lookup(kind, ext_id)
                if found is not None:
                    log.info("%s: found %s by external id, not creating again", label, ext_id)
                    return found
            try:
                data = await self._request(
                    "POST", self.flavour.create_path(kind), label, body=payload
                )
                return _with_external_id(_parse_task(data, label), ext_id)
            except (KlingNetworkError, KlingServerError):
                uncertain = True
                raise
            except KlingInvalidRequest as exc:
                # Our external ids are unique, so a duplicate is a task we created before: after
                # a lost answer, or when the caller resubmits a stored request after a restart.
                if not _is_duplicate(exc):
                    raise
                log.info("%s: %s already exists, looking it up", label, ext_id)
                found = await self._lookup(kind, ext_id)
                if found is None:
                    raise
                return found

        return await self._retrying(label, attempt, retry_busy=retry_busy)

    async def get_task(self, kind: TaskKind, task_id: str) -> KlingTask:
        """One task, by Kling's ``task_id`` or by our ``external_task_id``."""
        if not task_id:
            raise ValueError("task_id is empty")
        return await self._retrying(f"get_{kind}", lambda: self._get_once(kind, task_id))

    async def list_tasks(
        self, kind: TaskKind, page: int = 1, page_size: int = 30
    ) -> list[KlingTask]:
        if not self.flavour.supports_list:
            raise KlingConfigError(t("kling.client.no_listing", provider=self.flavour.name))
        if not 1 <= page <= 1000:
            raise ValueError("page must be between 1 and 1000")
        if not 1 <= page_size <= 500:
            raise ValueError("page_size must be between 1 and 500")
        label = f"list_{kind}"
        params = {"pageNum": str(page), "pageSize": str(page_size)}

        async def attempt() -> list[KlingTask]:
            data = await self._request("GET", self.flavour.query_path(kind), label, params=params)
            if data is None:
                return []
            if not isinstance(data, list):
                raise KlingServerError(t("kling.client.malformed_list", call=label))
            tasks = []
            for item in data:
                try:
                    tasks.append(KlingTask.model_validate(item))
                except ValidationError as exc:
                    log.warning(
                        "%s: skipping an unreadable task (%d errors)", label, exc.error_count()
                    )
            return tasks

        return await self._retrying(label, attempt)

    # --- internals ---------------------------------------------------------------------------

    async def _get_once(self, kind: TaskKind, task_id: str) -> KlingTask:
        label = f"get_{kind}"
        path = f"{self.flavour.query_path(kind)}/{quote(task_id, safe='')}"
        return _parse_task(await self._request("GET", path, label), label)

    async def _lookup(self, kind: TaskKind, ext_id: str) -> KlingTask | None:
        """One GET by external id (the caller's loop retries): the task, or None when Kling
        says there is none."""
        try:
            return _with_external_id(await self._get_once(kind, ext_id), ext_id)
        except KlingError as exc:
            if exc.code in NOT_FOUND_CODES or exc.http_status == 404:
                return None
            raise

    async def _retrying(
        self, label: str, attempt: Callable[[], Awaitable[T]], *, retry_busy: bool = True
    ) -> T:
        deadline = time.monotonic() + self._retry_budget
        reauthorised = False
        failures = 0
        while True:
            try:
                return await attempt()
            except KlingAuthExpired as exc:
                if reauthorised:
                    raise
                reauthorised = True
                log.warning("%s: code %s, signing a new token and retrying once", label, exc.code)
                self._auth.invalidate()
                continue
            except _RETRYABLE as exc:
                if isinstance(exc, KlingConcurrencyLimit) and not retry_busy:
                    raise
                failures += 1
                delay = random.uniform(
                    0, min(self._max_delay, self._base_delay * 2 ** (failures - 1))
                )
                if isinstance(exc, KlingConcurrencyLimit):
                    delay = max(delay, 1.0)
                if failures >= self._max_attempts or time.monotonic() + delay > deadline:
                    log.warning("%s: giving up after %d attempts: %s", label, failures, exc)
                    raise
                log.warning(
                    "%s: attempt %d failed (code %s: %s), retrying in %.2fs",
                    label, failures, exc.code, exc.message, delay,
                )  # fmt: skip
                await asyncio.sleep(delay)

    async def _request(
        self,
        method: str,
        path: str,
        label: str,
        body: str | None = None,
        params: dict[str, str] | None = None,
    ) -> Any:
        """One HTTP exchange; returns the envelope's ``data`` or raises the matching KlingError."""
        headers = {"Content-Type": "application/json", "Authorization": self._auth.header()}
        status: int | None = None
        try:
            async with self._session.request(
                method,
                self._base_url + path,
                data=body,
                params=params,
                headers=headers,
                timeout=self._timeout,
            ) as response:
                status = response.status
                raw = await response.read()
        except aiohttp.ServerTimeoutError as exc:
            # Only the connect timeout is set among aiohttp's own, so the connection never opened.
            self._called(label, None)
            raise KlingNetworkError(
                t("kling.client.no_connection", call=label, seconds=self._timeout.sock_connect)
            ) from exc
        except TimeoutError as exc:
            self._called(label, None)
            raise KlingNetworkError(
                t("kling.client.no_answer", call=label, seconds=self._timeout.total)
            ) from exc
        except aiohttp.ClientError as exc:
            self._called(label, None)
            raise KlingNetworkError(f"{label}: {type(exc).__name__}: {exc}") from exc
        try:
            envelope = Envelope.model_validate(jsonlib.loads(raw))
        except (ValueError, ValidationError) as exc:  # JSONDecodeError is a ValueError
            self._called(label, None)
            if status in (401, 403):
                # A gateway's own refusal of the key, in its own format: no retry fixes it.
                raise KlingConfigError(
                    t("kling.client.refused_without_envelope", call=label, status=status),
                    http_status=status,
                ) from exc
            raise KlingServerError(
                t("kling.client.malformed", call=label, status=status, size=len(raw)),
                http_status=status,
            ) from exc
        self._called(label, envelope.code)
        log.debug("%s: HTTP %s code %s request_id %s", label, status, envelope.code,
                  envelope.request_id)  # fmt: skip
        if envelope.code != 0:
            raise error_for_code(
                envelope.code, envelope.message, http_status=status, request_id=envelope.request_id
            )
        return envelope.data

    def _called(self, label: str, code: int | None) -> None:
        if self.on_call is not None:
            self.on_call(label, code)


def _parse_task(data: Any, label: str) -> KlingTask:
    try:
        return KlingTask.model_validate(data)
    except ValidationError as exc:
        raise KlingServerError(t("kling.client.malformed_task", call=label)) from exc


def require_known_image_model(settings: Settings) -> None:
    """KLING_IMAGE_MODEL names a model Kling has (``bot.config`` cannot know the list)."""
    if settings.kling_image_model not in IMAGE_MODELS:
        raise ConfigError(
            t(
                "kling.settings.unknown_image_model",
                value=settings.kling_image_model,
                models=", ".join(IMAGE_MODELS),
            )
        )


def _with_external_id(task: KlingTask, ext_id: str) -> KlingTask:
    if task.task_info.external_task_id:
        return task
    return task.model_copy(update={"task_info": TaskInfo(external_task_id=ext_id)})


def _is_duplicate(exc: KlingError) -> bool:
    text = exc.message.lower()
    return "external_task_id" in text or "duplicate" in text or "already exist" in text
