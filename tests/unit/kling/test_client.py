"""KlingClient and the authenticators against a scripted, recording aiohttp server on loopback.

Each test queues canned answers per (method, path), runs the client and then checks what went
over the wire (method, path, query, headers, JSON body) and what the client made of the answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bot.config import SIMULATOR_ACCESS_KEY, SIMULATOR_SECRET_KEY, Settings
from bot.kling.auth import BearerAuth, JwtAuth, auth_from_settings
from bot.kling.client import KlingClient, new_external_task_id
from bot.kling.errors import (
    KlingAuthExpired,
    KlingBillingError,
    KlingConcurrencyLimit,
    KlingConfigError,
    KlingInvalidRequest,
    KlingNetworkError,
    KlingPolicyError,
    KlingRateLimited,
    KlingServerError,
)
from bot.kling.models import ImageTaskRequest, TaskKind, TaskStatus, VideoTaskRequest
from bot.kling.providers import flavour_for

ACCESS_KEY = "ak-test-0f3c9a7d1e5b44e2a9c1"
SECRET_KEY = "sk-test-SUPERSECRET-7b2e4c0d9f8a1b3c5e7d"
API_KEY = "gw-test-APIKEY-91d0aa"
SUBJECT_1 = "https://v1-kling.klingai.com/kcdn/cdn-kcdn112452/kling-qa-test/multi-1.png"
SUBJECT_2 = "https://v1-kling.klingai.com/kcdn/cdn-kcdn112452/kling-qa-test/multi-2.png"
SCENE = "https://v1-kling.klingai.com/kcdn/cdn-kcdn112452/kling-qa-test/background.jpeg"
STYLE = "https://v1-kling.klingai.com/kcdn/cdn-kcdn112452/kling-qa-test/16x9_jipuli.png"
DOG = "https://p1-kling.klingai.com/kcdn/cdn-kcdn112452/kling-qa-test/dog.png"
DOG_CLOTH = "https://p1-kling.klingai.com/kcdn/cdn-kcdn112452/kling-qa-test/dog_cloth.png"
IMAGE_PATH = "/v1/images/multi-image2image"
VIDEO_PATH = "/v1/videos/multi-image2video"

# --- the seeds' example responses, with realistic values -----------------------------------------

SEED_002_CREATE = {
    "code": 0,
    "message": "SUCCEED",
    "request_id": "CjhV8WdZ0XEAAAAAAeLUaw",
    "data": {
        "task_id": "CjhV8WdZ0XEAAAAAAeLUaw",
        "task_info": {"external_task_id": "kb-seed-002"},
        "task_status": "submitted",
        "created_at": 1722769557708,
        "updated_at": 1722769557708,
    },
}
SEED_002_QUERY = {
    "code": 0,
    "message": "SUCCEED",
    "request_id": "b5d3e1f0-7a11-4a55-9d3a-0e6a2f0f4c21",
    "data": {
        "task_id": "CjhV8WdZ0XEAAAAAAeLUaw",
        "task_info": {"external_task_id": "kb-seed-002"},
        "task_status": "succeed",
        "task_status_msg": "",
        "final_unit_deduction": "16",
        "watermark_info": {"enabled": False},
        "created_at": 1722769557708,
        "updated_at": 1722769612345,
        "task_result": {
            "images": [
                {
                    "index": 0,
                    "url": "https://cdn.klingai.com/bs2/upload-kling-api/1.png",
                    "watermark_url": "",
                },
                {
                    "index": 1,
                    "url": "https://cdn.klingai.com/bs2/upload-kling-api/2.png",
                    "watermark_url": "",
                },
            ]
        },
    },
}
SEED_002_LIST = {
    "code": 0,
    "message": "SUCCEED",
    "request_id": "1c8e7e46-2f5b-4b8a-9a47-8b9b1b2d3c4d",
    "data": [
        SEED_002_QUERY["data"],
        {
            "task_id": "CjhV8WdZ0XEAAAAAAeLUbx",
            "task_info": {"external_task_id": "kb-seed-002b"},
            "task_status": "failed",
            "task_status_msg": "Failure to pass the risk control system",
            "final_unit_deduction": "0",
            "watermark_info": {"enabled": True},
            "created_at": 1722769557800,
            "updated_at": 1722769560000,
            "task_result": {"images": []},
        },
    ],
}
SEED_004_CREATE = {  # the video create answer has no task_info at all
    "code": 0,
    "message": "SUCCEED",
    "request_id": "CjMfLmdnPaIAAAAAAAtHtA",
    "data": {
        "task_id": "797396489349136442",
        "task_status": "submitted",
        "created_at": 1722769557708,
        "updated_at": 1722769557708,
    },
}
SEED_004_QUERY = {
    "code": 0,
    "message": "SUCCEED",
    "request_id": "CjMfLmdnPaIAAAAAAAtHtB",
    "data": {
        "task_id": "797396489349136442",
        "task_status": "succeed",
        "task_status_msg": "",
        "task_info": {"external_task_id": "kb-seed-004"},
        "task_result": {
            "videos": [
                {
                    "id": "a3f5c0de-8d0b-4c1f-9b87-f2c5b0b9b1aa",
                    "url": "https://v15-kling.klingai.com/bs2/upload-ylab-stunt/video.mp4",
                    "watermark_url": "https://v15-kling.klingai.com/bs2/upload-ylab-stunt/wm.mp4",
                    "duration": "5.1",
                }
            ]
        },
        "watermark_info": {"enabled": True},
        "final_unit_deduction": "35",
        "created_at": 1722769557708,
        "updated_at": 1722769700123,
    },
}
SEED_004_LIST = {
    "code": 0,
    "message": "SUCCEED",
    "request_id": "CjMfLmdnPaIAAAAAAAtHtC",
    "data": [SEED_004_QUERY["data"]],
}


# --- the recording stub ----------------------------------------------------------------------


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


@dataclass
class Reply:
    status: int
    body: Any  # a dict (sent as JSON) or a str (sent as it is)
    delay: float = 0.0


class Drop:
    """Close the connection without an answer (after the request was recorded)."""


Handler = Reply | Drop | Callable[[web.Request], Awaitable[web.StreamResponse]]


def ok(data: Any, *, status: int = 200, code: Any = 0) -> Reply:
    return Reply(status, {"code": code, "message": "SUCCEED", "request_id": "req-1", "data": data})


def fail(code: int, message: str, status: int) -> Reply:
    return Reply(status, {"code": code, "message": message, "request_id": "req-2", "data": None})


def task(task_id: str = "T1", status: str = "submitted", ext: str | None = None) -> dict:
    data: dict[str, Any] = {
        "task_id": task_id,
        "task_status": status,
        "created_at": 1,
        "updated_at": 2,
    }
    if ext is not None:
        data["task_info"] = {"external_task_id": ext}
    return data


class KlingStub:
    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self._queues: dict[tuple[str, str], deque[Handler]] = defaultdict(deque)
        self._lookups: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]] = {}
        self.server: TestServer | None = None

    def on(self, method: str, path: str, *replies: Handler) -> None:
        self._queues[(method, path)].extend(replies)

    def on_lookup(
        self, prefix: str, answer: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> None:
        """Answer every ``GET prefix/<any id>`` that has nothing queued with ``answer``."""
        self._lookups[prefix] = answer

    def calls(self, method: str | None = None) -> list[Recorded]:
        return [r for r in self.requests if method is None or r.method == method]

    @property
    def base_url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        self.requests.append(
            Recorded(
                method=request.method,
                path=request.path,
                query=dict(request.query),
                headers=dict(request.headers),
                body=json.loads(raw) if raw else None,
            )
        )
        queue = self._queues[(request.method, request.path)]
        prefix = request.path.rsplit("/", 1)[0]
        if not queue and request.method == "GET" and prefix in self._lookups:
            return await self._lookups[prefix](request)
        if not queue:  # an unexpected call fails loudly and is never retried
            return web.json_response(
                {"code": 1200, "message": f"stub: nothing queued for {request.path}"}, status=400
            )
        reply = queue.popleft()
        if isinstance(reply, Drop):
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        if isinstance(reply, Reply):
            if reply.delay:
                await asyncio.sleep(reply.delay)
            if isinstance(reply.body, str):
                return web.Response(status=reply.status, text=reply.body)
            return web.json_response(reply.body, status=reply.status)
        return await reply(request)


@pytest.fixture
async def stub():
    kling = KlingStub()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", kling.handle)
    kling.server = TestServer(app, host="127.0.0.1", port=0)
    await kling.server.start_server()
    yield kling
    await kling.server.close()


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as http:
        yield http


@pytest.fixture
def make_client(stub: KlingStub, session: aiohttp.ClientSession):
    def make(flavour: str = "official", *, auth: Any = None, **kw: Any) -> KlingClient:
        if auth is None:
            auth = (
                BearerAuth(API_KEY)
                if flavour_for(flavour).auth == "bearer"
                else JwtAuth(ACCESS_KEY, SECRET_KEY)
            )
        kw.setdefault("base_delay", 0.001)
        kw.setdefault("max_delay", 0.005)
        kw.setdefault("request_timeout", 2.0)
        return KlingClient(
            session, flavour=flavour_for(flavour), base_url=stub.base_url, auth=auth, **kw
        )

    return make


def image_request(**kw: Any) -> ImageTaskRequest:
    kw.setdefault("subject_images", [SUBJECT_1, SUBJECT_2])
    kw.setdefault("prompt", "Wearing a flowing red dress on the grassland, in Ghibli style.")
    return ImageTaskRequest(**kw)


def video_request(**kw: Any) -> VideoTaskRequest:
    kw.setdefault("images", [DOG, DOG_CLOTH])
    kw.setdefault("prompt", "A white Bichon Frise wearing a red floral cotton jacket")
    return VideoTaskRequest(**kw)


def bearer_token(recorded: Recorded) -> str:
    scheme, _, token = recorded.headers["Authorization"].partition(" ")
    assert scheme == "Bearer"
    return token


# --- wire format per flavour -------------------------------------------------------------------


async def test_official_image_create_wire_format(stub: KlingStub, make_client) -> None:
    stub.on("POST", IMAGE_PATH, Reply(200, SEED_002_CREATE))
    client = make_client("official")
    request = image_request(
        model_name="kling-v2-1",
        negative_prompt="blurry",
        scene_image=SCENE,
        style_image=STYLE,
        n=2,
        aspect_ratio="9:16",
        watermark=True,
        callback_url="https://bot.example.com/kling/callback/tok",
    )

    before = time.time()
    result = await client.create_image_task(request)

    (sent,) = stub.requests
    assert (sent.method, sent.path) == ("POST", "/v1/images/multi-image2image")
    assert sent.headers["Content-Type"] == "application/json"
    token = bearer_token(sent)
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT"}
    claims = jwt.decode(token, SECRET_KEY, algorithms=["HS256"])
    assert claims["iss"] == ACCESS_KEY
    assert isinstance(claims["exp"], int) and isinstance(claims["nbf"], int)
    assert abs(claims["exp"] - (before + 1800)) <= 5
    assert abs(claims["nbf"] - (before - 5)) <= 5
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, "another-secret-of-32-bytes-or-more!!", algorithms=["HS256"])

    ext = sent.body["external_task_id"]
    assert ext.startswith("kb-") and len(ext) <= 64
    assert sent.body == {
        "model_name": "kling-v2-1",
        "prompt": "Wearing a flowing red dress on the grassland, in Ghibli style.",
        "negative_prompt": "blurry",
        "subject_image_list": [{"subject_image": SUBJECT_1}, {"subject_image": SUBJECT_2}],
        "scene_image": SCENE,
        "style_image": STYLE,
        "n": 2,
        "aspect_ratio": "9:16",
        "watermark_info": {"enabled": True},
        "callback_url": "https://bot.example.com/kling/callback/tok",
        "external_task_id": ext,
    }
    assert result.task_id == "CjhV8WdZ0XEAAAAAAeLUaw"
    assert result.task_status is TaskStatus.SUBMITTED
    assert result.created_at == 1722769557708


async def test_gateway_image_create_wire_format(stub: KlingStub, make_client) -> None:
    stub.on("POST", "/kling" + IMAGE_PATH, ok(task("G1", ext="kb-given")))
    client = make_client("gateway")

    result = await client.create_task(image_request(scene_image=SCENE, external_task_id="kb-given"))

    (sent,) = stub.requests
    assert (sent.method, sent.path) == ("POST", "/kling/v1/images/multi-image2image")
    assert sent.headers["Authorization"] == f"Bearer {API_KEY}"
    assert sent.headers["Content-Type"] == "application/json"
    assert sent.body["subject_image_list"] == [SUBJECT_1, SUBJECT_2]
    assert sent.body["scence_image"] == SCENE
    assert "scene_image" not in sent.body
    assert sent.body["external_task_id"] == "kb-given"  # a given external id is kept
    assert result.task_id == "G1" and result.external_task_id == "kb-given"


async def test_gateway_native_image_create_wire_format(stub: KlingStub, make_client) -> None:
    # Seed 000's gateway: /kling prefix and Bearer key, but Kling's own body.
    stub.on("POST", "/kling" + IMAGE_PATH, ok(task("N1", ext="kb-native")))
    client = make_client("gateway-native")

    result = await client.create_image_task(
        image_request(scene_image=SCENE, style_image=STYLE, n=3, external_task_id="kb-native")
    )

    (sent,) = stub.requests
    assert (sent.method, sent.path) == ("POST", "/kling/v1/images/multi-image2image")
    assert sent.headers["Authorization"] == f"Bearer {API_KEY}"
    assert sent.headers["Content-Type"] == "application/json"
    assert sent.body == {
        "model_name": "kling-v2",
        "prompt": "Wearing a flowing red dress on the grassland, in Ghibli style.",
        "subject_image_list": [{"subject_image": SUBJECT_1}, {"subject_image": SUBJECT_2}],
        "scene_image": SCENE,
        "style_image": STYLE,
        "n": 3,
        "aspect_ratio": "16:9",
        "external_task_id": "kb-native",
    }
    assert result.task_id == "N1" and result.external_task_id == "kb-native"

    stub.on("GET", "/kling" + VIDEO_PATH + "/V1", ok(task("V1", "processing")))
    await client.get_task(TaskKind.VIDEO, "V1")
    assert stub.requests[-1].path == "/kling/v1/videos/multi-image2video/V1"


async def test_cometapi_create_path_and_two_subjects_minimum(stub: KlingStub, make_client) -> None:
    client = make_client("cometapi")

    with pytest.raises(KlingInvalidRequest, match="subject_image_list"):
        await client.create_image_task(image_request(subject_images=[SUBJECT_1]))
    assert stub.requests == []  # refused before any HTTP call

    stub.on("POST", "/kling/v1/images/generations", ok(task("C1")))
    await client.create_image_task(image_request(scene_image=SCENE))
    (sent,) = stub.requests
    assert sent.path == "/kling/v1/images/generations"
    assert sent.headers["Authorization"] == f"Bearer {API_KEY}"
    assert sent.body["subject_image_list"] == [
        {"subject_image": SUBJECT_1},
        {"subject_image": SUBJECT_2},
    ]
    assert sent.body["scence_image"] == SCENE


async def test_video_create_wire_format_and_seed_004_answer(stub: KlingStub, make_client) -> None:
    stub.on("POST", VIDEO_PATH, Reply(200, SEED_004_CREATE))
    client = make_client("official")

    result = await client.create_video_task(video_request(mode="pro"))

    (sent,) = stub.requests
    assert (sent.method, sent.path) == ("POST", "/v1/videos/multi-image2video")
    ext = sent.body.pop("external_task_id")
    assert sent.body == {
        "model_name": "kling-v1-6",
        "prompt": "A white Bichon Frise wearing a red floral cotton jacket",
        "image_list": [{"image": DOG}, {"image": DOG_CLOTH}],
        "mode": "pro",
        "duration": "5",
        "aspect_ratio": "16:9",
    }
    # Seed 004's create answer has no task_info: the client fills in the id it sent.
    assert result.task_id == "797396489349136442"
    assert result.external_task_id == ext


async def test_get_by_task_id_and_by_external_id(stub: KlingStub, make_client) -> None:
    stub.on("GET", IMAGE_PATH + "/CjhV8WdZ0XEAAAAAAeLUaw", Reply(200, SEED_002_QUERY))
    stub.on("GET", VIDEO_PATH + "/kb-seed-004", Reply(200, SEED_004_QUERY))
    client = make_client("official")

    image = await client.get_task(TaskKind.IMAGE, "CjhV8WdZ0XEAAAAAAeLUaw")
    video = await client.get_task(TaskKind.VIDEO, "kb-seed-004")

    assert [(r.method, r.path) for r in stub.requests] == [
        ("GET", "/v1/images/multi-image2image/CjhV8WdZ0XEAAAAAAeLUaw"),
        ("GET", "/v1/videos/multi-image2video/kb-seed-004"),
    ]
    assert all(r.headers["Content-Type"] == "application/json" for r in stub.requests)
    assert image.task_status is TaskStatus.SUCCEED
    assert image.final_unit_deduction == "16"
    assert image.external_task_id == "kb-seed-002"
    assert image.result_urls() == [
        "https://cdn.klingai.com/bs2/upload-kling-api/1.png",
        "https://cdn.klingai.com/bs2/upload-kling-api/2.png",
    ]
    assert video.result_urls() == ["https://v15-kling.klingai.com/bs2/upload-ylab-stunt/video.mp4"]
    assert video.task_result is not None and video.task_result.videos[0].duration == "5.1"


async def test_gateway_get_path(stub: KlingStub, make_client) -> None:
    stub.on("GET", "/kling" + IMAGE_PATH + "/G1", ok(task("G1", "processing")))
    result = await make_client("gateway").get_task(TaskKind.IMAGE, "G1")
    assert stub.requests[0].path == "/kling/v1/images/multi-image2image/G1"
    assert result.task_status is TaskStatus.PROCESSING


async def test_list_query_params_and_parsing(stub: KlingStub, make_client) -> None:
    stub.on("GET", IMAGE_PATH, Reply(200, SEED_002_LIST), ok(None))
    stub.on("GET", VIDEO_PATH, Reply(200, SEED_004_LIST))
    client = make_client("official")

    images = await client.list_tasks(TaskKind.IMAGE, page=3, page_size=500)
    empty = await client.list_tasks(TaskKind.IMAGE)
    videos = await client.list_tasks(TaskKind.VIDEO)

    assert [r.query for r in stub.requests] == [
        {"pageNum": "3", "pageSize": "500"},
        {"pageNum": "1", "pageSize": "30"},
        {"pageNum": "1", "pageSize": "30"},
    ]
    assert [r.path for r in stub.requests] == [IMAGE_PATH, IMAGE_PATH, VIDEO_PATH]
    assert [t.task_status for t in images] == [TaskStatus.SUCCEED, TaskStatus.FAILED]
    assert images[1].task_status_msg == "Failure to pass the risk control system"
    assert empty == []
    assert [t.task_id for t in videos] == ["797396489349136442"]


async def test_list_validation_and_unsupported_flavours(stub: KlingStub, make_client) -> None:
    client = make_client("official")
    for page, size in ((0, 30), (1001, 30), (1, 0), (1, 501)):
        with pytest.raises(ValueError):
            await client.list_tasks(TaskKind.IMAGE, page, size)
    for name in ("gateway", "gateway-native", "cometapi"):
        with pytest.raises(KlingConfigError, match=f"listing is not supported by {name}"):
            await make_client(name).list_tasks(TaskKind.VIDEO)
    assert stub.requests == []


async def test_string_code_and_odd_status_are_success(stub: KlingStub, make_client) -> None:
    stub.on("GET", IMAGE_PATH + "/A", ok(task("A"), code="0"))
    stub.on("GET", IMAGE_PATH + "/B", ok(task("B", "processing"), status=500))
    client = make_client("official")
    assert (await client.get_task(TaskKind.IMAGE, "A")).task_id == "A"
    assert (await client.get_task(TaskKind.IMAGE, "B")).task_status is TaskStatus.PROCESSING
    assert len(stub.requests) == 2  # no retry: code 0 wins over HTTP 500


async def test_null_message_is_accepted(stub: KlingStub, make_client) -> None:
    stub.on("GET", IMAGE_PATH + "/A", Reply(200, {"code": 0, "message": None, "data": task("A")}))
    stub.on("GET", IMAGE_PATH + "/B", Reply(400, {"code": 1201, "message": None, "data": None}))
    client = make_client("official")

    assert (await client.get_task(TaskKind.IMAGE, "A")).task_id == "A"
    with pytest.raises(KlingInvalidRequest) as caught:
        await client.get_task(TaskKind.IMAGE, "B")
    assert caught.value.code == 1201 and caught.value.message == "code 1201"
    assert len(stub.requests) == 2  # neither answer was taken for a malformed one and retried


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "status", "message", "error"),
    [
        (1000, 401, "Authorization failed", KlingConfigError),
        (1102, 429, "Resource pack exhausted", KlingBillingError),
        (1103, 403, "No permission for model kling-v2-1", KlingConfigError),
        (1201, 400, "subject_image_list[0].subject_image is invalid", KlingInvalidRequest),
        (1301, 400, "Failure to pass the risk control system", KlingPolicyError),
        (1304, 429, "IP not in whitelist", KlingConfigError),
    ],
)
async def test_non_retryable_codes(stub, make_client, code, status, message, error) -> None:
    stub.on("POST", IMAGE_PATH, fail(code, message, status))
    with pytest.raises(error) as caught:
        await make_client("official").create_image_task(image_request())
    assert type(caught.value) is error
    assert caught.value.code == code
    assert caught.value.http_status == status
    assert caught.value.message == message  # Kling's own words reach the moderators
    assert caught.value.request_id == "req-2"
    assert len(stub.requests) == 1  # never retried, never looked up


async def test_rate_limited_is_retried_then_raised(stub: KlingStub, make_client) -> None:
    stub.on("GET", IMAGE_PATH + "/T1", *[fail(1302, "too fast", 429)] * 3)
    with pytest.raises(KlingRateLimited):
        await make_client("official", max_attempts=3).get_task(TaskKind.IMAGE, "T1")
    assert len(stub.requests) == 3

    stub.on("POST", IMAGE_PATH, fail(1302, "too fast", 429), ok(task("T2")))
    result = await make_client("official").create_image_task(image_request())
    assert result.task_id == "T2"
    assert len(stub.calls("POST")) == 2 and len(stub.calls("GET")) == 3  # no lookup for a 1302


async def test_concurrency_limit_waits_a_second_or_is_raised(stub, make_client) -> None:
    stub.on("POST", IMAGE_PATH, fail(1303, "parallel task over resource pack limit", 429))
    with pytest.raises(KlingConcurrencyLimit):
        await make_client("official").create_image_task(image_request(), retry_busy=False)
    assert len(stub.requests) == 1

    stub.on("POST", IMAGE_PATH, fail(1303, "busy", 429), ok(task("T3")))
    started = time.monotonic()
    result = await make_client("official", max_attempts=2).create_image_task(image_request())
    assert time.monotonic() - started >= 1.0
    assert result.task_id == "T3"
    assert len(stub.calls("POST")) == 3 and stub.calls("GET") == []


@pytest.mark.parametrize(
    "reply",
    [
        fail(5000, "internal error", 500),
        fail(5001, "maintenance", 503),
        Reply(502, "<html><body>502 Bad Gateway</body></html>"),
        Reply(200, {"unexpected": "shape"}),
        Reply(200, {"code": 0, "message": "ok", "data": {"no_task_id": True}}),
        Reply(200, '{"code": 0, "data": '),
    ],
    ids=["5000", "5001", "html-502", "not-envelope", "not-task", "truncated-json"],
)
async def test_server_errors_and_malformed_bodies_are_retried(stub, make_client, reply) -> None:
    stub.on("GET", IMAGE_PATH + "/T1", reply, reply, reply, ok(task("T1", "succeed")))
    result = await make_client("official", max_attempts=4).get_task(TaskKind.IMAGE, "T1")
    assert result.task_status is TaskStatus.SUCCEED
    assert len(stub.requests) == 4

    stub.on("GET", IMAGE_PATH + "/T2", reply, reply)
    with pytest.raises(KlingServerError) as caught:
        await make_client("official", max_attempts=2).get_task(TaskKind.IMAGE, "T2")
    if isinstance(reply.body, str) or "code" not in reply.body:
        assert caught.value.message.startswith("malformed response")
        assert caught.value.code is None


@pytest.mark.parametrize("status", [401, 403])
async def test_a_gateway_refusing_the_key_in_its_own_format_is_not_retried(
    stub, make_client, status
) -> None:
    refusal = Reply(status, "<html><body>Invalid API key</body></html>")
    stub.on("GET", IMAGE_PATH + "/T1", refusal, refusal)
    with pytest.raises(KlingConfigError, match=f"HTTP {status} without Kling's envelope"):
        await make_client("official", max_attempts=2).get_task(TaskKind.IMAGE, "T1")
    assert len(stub.requests) == 1


async def test_connection_closed_and_timeout_are_network_errors(stub, make_client) -> None:
    # aiohttp itself resends an idempotent GET once on a dropped keep-alive connection, so
    # count the client's own attempts through on_call.
    calls: list[tuple[str, int | None]] = []
    stub.on("GET", IMAGE_PATH + "/T1", *[Drop()] * 4)
    client = make_client("official", max_attempts=2, on_call=lambda *a: calls.append(a))
    with pytest.raises(KlingNetworkError):
        await client.get_task(TaskKind.IMAGE, "T1")
    assert calls == [("get_image", None), ("get_image", None)]
    dropped = len(stub.requests)

    stub.on("GET", IMAGE_PATH + "/T2", Reply(200, ok(task("T2")).body, delay=3.0))
    started = time.monotonic()
    with pytest.raises(KlingNetworkError, match="no answer within"):
        await make_client("official", max_attempts=1, request_timeout=0.2).get_task(
            TaskKind.IMAGE, "T2"
        )
    assert time.monotonic() - started < 2.0
    assert len(stub.requests) == dropped + 1


async def test_connection_refused_is_a_network_error(session) -> None:
    client = KlingClient(
        session,
        flavour=flavour_for("official"),
        base_url="http://127.0.0.1:9",
        auth=JwtAuth(ACCESS_KEY, SECRET_KEY),
        max_attempts=2,
        base_delay=0.001,
    )
    with pytest.raises(KlingNetworkError):
        await client.get_task(TaskKind.IMAGE, "T1")


async def test_retries_are_bounded_by_the_time_budget(stub: KlingStub, make_client) -> None:
    stub.on("GET", IMAGE_PATH + "/T1", *[fail(5000, "internal error", 500)] * 200)
    client = make_client(
        "official", max_attempts=200, retry_budget=0.3, base_delay=0.05, max_delay=0.05
    )
    started = time.monotonic()
    with pytest.raises(KlingServerError):
        await client.get_task(TaskKind.IMAGE, "T1")
    assert time.monotonic() - started < 1.5  # 200 attempts would take several seconds
    assert 1 < len(stub.requests) < 200


async def test_backoff_grows_and_is_capped(stub, make_client, monkeypatch) -> None:
    import bot.kling.client as client_module

    caps: list[float] = []
    monkeypatch.setattr(client_module.random, "uniform", lambda lo, hi: caps.append(hi) or 0.0)
    stub.on("GET", IMAGE_PATH + "/T1", *[fail(5002, "timeout", 504)] * 6)
    client = make_client("official", max_attempts=6, base_delay=0.5, max_delay=3.0)
    with pytest.raises(KlingServerError):
        await client.get_task(TaskKind.IMAGE, "T1")
    assert caps == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]  # last one decides to give up
    assert len(stub.requests) == 6


# --- authentication ----------------------------------------------------------------------------


class FakeClock:
    def __init__(self, now: float = 1_750_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _claims(header: str) -> dict:
    token = header.removeprefix("Bearer ")
    return jwt.decode(
        token, SECRET_KEY, algorithms=["HS256"], options={"verify_exp": False, "verify_nbf": False}
    )


def test_jwt_is_cached_and_resigned_near_expiry() -> None:
    clock = FakeClock()
    auth = JwtAuth(ACCESS_KEY, SECRET_KEY, clock=clock)
    first = auth.header()
    assert _claims(first) == {"iss": ACCESS_KEY, "exp": 1_750_001_800, "nbf": 1_749_999_995}

    clock.now += 1800 - 300 - 1  # 301 s left: still cached
    assert auth.header() == first
    clock.now += 2  # 299 s left: re-signed
    second = auth.header()
    assert second != first
    assert _claims(second)["exp"] == int(clock.now + 1800)

    auth.invalidate()
    clock.now += 1
    assert auth.header() not in (first, second)


async def test_jwt_cached_across_calls(stub: KlingStub, make_client) -> None:
    stub.on("GET", IMAGE_PATH + "/A", ok(task("A")))
    stub.on("GET", IMAGE_PATH + "/B", ok(task("B")))
    client = make_client("official", auth=JwtAuth(ACCESS_KEY, SECRET_KEY, clock=FakeClock()))
    await client.get_task(TaskKind.IMAGE, "A")
    await client.get_task(TaskKind.IMAGE, "B")
    assert bearer_token(stub.requests[0]) == bearer_token(stub.requests[1])


async def test_expired_token_is_resigned_and_retried_once(stub: KlingStub, make_client) -> None:
    clock = FakeClock()

    async def expired(request: web.Request) -> web.StreamResponse:
        clock.now += 60  # so that the new token differs from the old
        return web.json_response({"code": 1004, "message": "token expired"}, status=401)

    stub.on("GET", IMAGE_PATH + "/T1", expired, ok(task("T1")))
    client = make_client("official", auth=JwtAuth(ACCESS_KEY, SECRET_KEY, clock=clock))
    assert (await client.get_task(TaskKind.IMAGE, "T1")).task_id == "T1"
    first, second = stub.requests
    assert bearer_token(first) != bearer_token(second)
    assert _claims(second.headers["Authorization"])["exp"] == int(clock.now + 1800)

    stub.on("GET", IMAGE_PATH + "/T2", expired, expired, expired)
    with pytest.raises(KlingAuthExpired):
        await client.get_task(TaskKind.IMAGE, "T2")
    assert len(stub.requests) == 4  # one retry only


def test_auth_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KLING_PROVIDER", "KLING_ACCESS_KEY", "KLING_SECRET_KEY", "KLING_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    simulator = auth_from_settings(Settings(_env_file=None, kling_provider="simulator"))
    assert isinstance(simulator, JwtAuth)
    claims = jwt.decode(
        simulator.header().removeprefix("Bearer "), SIMULATOR_SECRET_KEY, algorithms=["HS256"]
    )
    assert claims["iss"] == SIMULATOR_ACCESS_KEY

    own = auth_from_settings(
        Settings(
            _env_file=None,
            kling_provider="simulator",
            kling_access_key=ACCESS_KEY,
            kling_secret_key=SECRET_KEY,
        )
    )
    assert _claims(own.header())["iss"] == ACCESS_KEY

    gateway = auth_from_settings(
        Settings(_env_file=None, kling_provider="gateway", kling_api_key=API_KEY)
    )
    assert isinstance(gateway, BearerAuth) and gateway.header() == f"Bearer {API_KEY}"


async def test_from_settings(session, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KLING_BASE_URL", "KLING_ACCESS_KEY", "KLING_SECRET_KEY", "KLING_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings(
        _env_file=None,
        kling_provider="gateway",
        kling_api_key=API_KEY,
        kling_base_url="https://gw.example.com/",
    )
    client = KlingClient.from_settings(settings, session, max_attempts=2)
    assert client.flavour.name == "gateway"
    assert repr(client) == "KlingClient(flavour='gateway', base_url='https://gw.example.com')"

    from bot.config import ConfigError

    with pytest.raises(ConfigError, match="KLING_API_KEY"):
        KlingClient.from_settings(Settings(_env_file=None, kling_provider="cometapi"), session)


def settings_from_env(monkeypatch: pytest.MonkeyPatch, base_url: str, **env: str) -> Settings:
    """Settings read from the environment, as the bot reads them, for the official flavour."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("KLING_BASE_URL", base_url)
    monkeypatch.setenv("KLING_ACCESS_KEY", ACCESS_KEY)
    monkeypatch.setenv("KLING_SECRET_KEY", SECRET_KEY)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings(_env_file=None)


async def test_from_settings_uses_max_attempts(stub, session, monkeypatch) -> None:
    stub.on("GET", IMAGE_PATH + "/T1", *[fail(5000, "internal error", 500)] * 5)
    settings = settings_from_env(monkeypatch, stub.base_url, KLING_MAX_ATTEMPTS="2")
    client = KlingClient.from_settings(settings, session, base_delay=0.001)
    with pytest.raises(KlingServerError):
        await client.get_task(TaskKind.IMAGE, "T1")
    assert len(stub.requests) == 2  # the default would be 5


async def test_from_settings_uses_request_timeout(stub, session, monkeypatch) -> None:
    stub.on("GET", IMAGE_PATH + "/T1", Reply(200, ok(task("T1")).body, delay=3.0))
    settings = settings_from_env(
        monkeypatch, stub.base_url, KLING_REQUEST_TIMEOUT="0.2", KLING_MAX_ATTEMPTS="1"
    )
    started = time.monotonic()
    with pytest.raises(KlingNetworkError, match=r"no answer within 0\.2s"):
        await KlingClient.from_settings(settings, session).get_task(TaskKind.IMAGE, "T1")
    assert time.monotonic() - started < 2.0


@contextlib.contextmanager
def unanswered_port() -> Iterator[int]:
    """A loopback port whose accept queue is full, so that a new connection never completes."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


async def test_from_settings_uses_connect_timeout(session, monkeypatch) -> None:
    with unanswered_port() as port:
        settings = settings_from_env(
            monkeypatch,
            f"http://127.0.0.1:{port}",
            KLING_CONNECT_TIMEOUT="0.3",
            KLING_REQUEST_TIMEOUT="30",
            KLING_MAX_ATTEMPTS="1",
        )
        started = time.monotonic()
        with pytest.raises(KlingNetworkError, match=r"could not connect within 0\.3s"):
            await KlingClient.from_settings(settings, session).get_task(TaskKind.IMAGE, "T1")
        assert time.monotonic() - started < 5.0  # the request timeout would be 30 s


async def test_from_settings_uses_retry_budget(stub, session, monkeypatch) -> None:
    import bot.kling.client as client_module

    # Every backoff at its cap (0.05 s), so the 0.2 s budget allows about four attempts.
    monkeypatch.setattr(client_module.random, "uniform", lambda lo, hi: hi)
    stub.on("GET", IMAGE_PATH + "/T1", *[fail(5000, "internal error", 500)] * 20)
    settings = settings_from_env(
        monkeypatch, stub.base_url, KLING_RETRY_BUDGET="0.2", KLING_MAX_ATTEMPTS="20"
    )
    client = KlingClient.from_settings(settings, session, base_delay=0.05, max_delay=0.05)
    with pytest.raises(KlingServerError):
        await client.get_task(TaskKind.IMAGE, "T1")
    assert 2 <= len(stub.requests) <= 5  # the default budget (120 s) would allow all 20


# --- no double charge --------------------------------------------------------------------------


async def test_dropped_create_is_found_by_external_id(stub: KlingStub, make_client) -> None:
    stub.on("POST", IMAGE_PATH, Drop())
    stub.on_lookup(
        IMAGE_PATH, lambda r: _json(ok(task("KLING-42", "processing", ext=_tail(r))).body)
    )

    result = await make_client("official").create_image_task(image_request())

    posts = stub.calls("POST")
    assert len(posts) == 1  # exactly one create: Kling is charged once
    ext = posts[0].body["external_task_id"]
    (lookup,) = stub.calls("GET")
    assert lookup.path == f"{IMAGE_PATH}/{ext}"
    assert result.task_id == "KLING-42" and result.external_task_id == ext


async def test_timed_out_create_is_found_by_external_id(stub: KlingStub, make_client) -> None:
    stub.on("POST", VIDEO_PATH, Reply(200, ok(task("late")).body, delay=1.0))
    stub.on_lookup(VIDEO_PATH, lambda r: _json(ok(task("V-7", ext=_tail(r))).body))

    client = make_client("official", request_timeout=0.3)
    result = await client.create_video_task(video_request(external_task_id="kb-video-1"))

    assert len(stub.calls("POST")) == 1
    assert [r.path for r in stub.calls("GET")] == [f"{VIDEO_PATH}/kb-video-1"]
    assert result.task_id == "V-7" and result.external_task_id == "kb-video-1"


async def test_lost_create_not_found_creates_again_with_same_id(stub, make_client) -> None:
    stub.on("POST", IMAGE_PATH, Drop(), ok(task("T-new")))
    stub.on_lookup(IMAGE_PATH, lambda r: _json({"code": 1203, "message": "task not found"}, 404))

    result = await make_client("official").create_image_task(image_request())

    first, second = stub.calls("POST")
    assert first.body == second.body  # same external_task_id, same everything
    assert len(stub.calls("GET")) == 1
    assert result.task_id == "T-new"
    assert result.external_task_id == first.body["external_task_id"]


@pytest.mark.parametrize(
    "not_found",
    [
        ({"code": 1201, "message": "task not exist"}, 400),
        ({"code": 1202, "message": "wrong method"}, 404),
        ("404 page not found", 404),
    ],
)
async def test_every_not_found_answer_allows_a_new_create(stub, make_client, not_found) -> None:
    body, status = not_found
    stub.on("POST", IMAGE_PATH, Reply(200, "<html>bad gateway</html>"), ok(task("T-9")))
    stub.on_lookup(IMAGE_PATH, lambda r: _json(body, status))
    result = await make_client("official").create_image_task(image_request())
    assert result.task_id == "T-9"
    assert len(stub.calls("POST")) == 2 and len(stub.calls("GET")) == 1


async def test_duplicate_rejection_is_looked_up(stub: KlingStub, make_client) -> None:
    # A gateway that cannot find the task by external id yet, but refuses the duplicate create.
    stub.on(
        "POST",
        "/kling" + IMAGE_PATH,
        Drop(),
        fail(1201, "external_task_id already exists", 400),
    )
    answers = deque(
        [
            ({"code": 1203, "message": "task not found"}, 404),
            (ok(task("G-5")).body, 200),
        ]
    )
    stub.on_lookup("/kling" + IMAGE_PATH, lambda r: _json(*answers.popleft()))

    result = await make_client("gateway").create_image_task(image_request())

    posts = stub.calls("POST")
    assert len(posts) == 2 and posts[0].body == posts[1].body
    assert len(stub.calls("GET")) == 2
    assert result.task_id == "G-5"
    assert result.external_task_id == posts[0].body["external_task_id"]


async def test_resubmitted_request_returns_the_existing_task(stub, make_client) -> None:
    # After a restart the bot submits a stored request again, with its stored external id.
    stub.on("POST", IMAGE_PATH, fail(1201, "external_task_id: 'kb-stored' already exists", 400))
    stub.on("GET", IMAGE_PATH + "/kb-stored", ok(task("T-old", "succeed", ext="kb-stored")))
    result = await make_client("official").create_image_task(
        image_request(external_task_id="kb-stored")
    )
    assert result.task_id == "T-old" and result.task_status is TaskStatus.SUCCEED
    assert len(stub.calls("POST")) == 1 and len(stub.calls("GET")) == 1


async def test_other_invalid_requests_are_not_looked_up(stub, make_client) -> None:
    stub.on("POST", IMAGE_PATH, fail(1201, "aspect_ratio is invalid", 400))
    with pytest.raises(KlingInvalidRequest, match="aspect_ratio"):
        await make_client("official").create_image_task(image_request())
    assert stub.calls("GET") == []


async def test_create_fails_if_lookups_keep_failing(stub: KlingStub, make_client) -> None:
    stub.on("POST", IMAGE_PATH, Drop())
    stub.on_lookup(IMAGE_PATH, lambda r: _json({"code": 5000, "message": "internal"}, 500))
    with pytest.raises(KlingServerError):
        await make_client("official", max_attempts=3).create_image_task(image_request())
    assert len(stub.calls("POST")) == 1  # never created again while the outcome is unknown
    assert len(stub.calls("GET")) == 2


def test_new_external_task_id_is_unique_and_short() -> None:
    ids = {new_external_task_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) <= 64 and i.startswith("kb-") for i in ids)


# --- metrics and secrets -----------------------------------------------------------------------


async def test_on_call_counts_every_exchange(stub: KlingStub, make_client) -> None:
    calls: list[tuple[str, int | None]] = []
    stub.on("POST", IMAGE_PATH, fail(1302, "too fast", 429), ok(task("T1")))
    stub.on("POST", VIDEO_PATH, Drop(), ok(task("V1")))
    stub.on_lookup(VIDEO_PATH, lambda r: _json({"code": 1203, "message": "nope"}, 404))
    stub.on("GET", IMAGE_PATH, Reply(200, "garbage"), ok([]))
    client = make_client("official", on_call=lambda label, code: calls.append((label, code)))

    await client.create_image_task(image_request())
    await client.create_video_task(video_request())
    await client.list_tasks(TaskKind.IMAGE)

    assert calls == [
        ("create_image", 1302),
        ("create_image", 0),
        ("create_video", None),
        ("get_video", 1203),
        ("create_video", 0),
        ("list_image", None),
        ("list_image", 0),
    ]


def test_secrets_absent_from_repr() -> None:
    jwt_auth = JwtAuth(ACCESS_KEY, SECRET_KEY)
    bearer = BearerAuth(API_KEY)
    token = jwt_auth.header().removeprefix("Bearer ")
    for text in (repr(jwt_auth), str(jwt_auth), repr(bearer), str(bearer)):
        assert SECRET_KEY not in text and API_KEY not in text and token not in text
        assert ACCESS_KEY not in text
    assert repr(bearer).startswith("BearerAuth(") and repr(jwt_auth).startswith("JwtAuth(")


async def test_secrets_and_base64_absent_from_logs(stub, make_client, caplog) -> None:
    base64_image = "iVBORw0KGgoAAAANSUhEUgAAAAUA" * 200
    stub.on("POST", IMAGE_PATH, fail(1004, "token expired", 401), Drop(), ok(task("T1")))
    stub.on_lookup(IMAGE_PATH, lambda r: _json({"code": 1203, "message": "nope"}, 404))
    stub.on("POST", "/kling" + IMAGE_PATH, fail(5000, "internal", 500), ok(task("G1")))
    stub.on_lookup("/kling" + IMAGE_PATH, lambda r: _json({"code": 1203, "m": ""}, 404))
    caplog.set_level(logging.DEBUG, logger="bot.kling")

    await make_client("official").create_image_task(image_request(subject_images=[base64_image]))
    await make_client("gateway").create_image_task(image_request(scene_image=base64_image))

    tokens = {bearer_token(r) for r in stub.requests}
    assert len(caplog.records) >= 4  # the retries were logged...
    assert "subject_image_list" in caplog.text  # ...with field names...
    for secret in (SECRET_KEY, API_KEY, base64_image[:40], *tokens):  # ...and nothing secret
        assert secret not in caplog.text


# --- stub helpers for handlers that compute their answer ----------------------------------------


def _tail(request: web.Request) -> str:
    return request.path.rsplit("/", 1)[-1]


async def _json(body: Any, status: int = 200) -> web.StreamResponse:
    if isinstance(body, str):
        return web.Response(text=body, status=status)
    return web.json_response(body, status=status)
