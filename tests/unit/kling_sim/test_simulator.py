"""The Kling simulator over loopback, with a raw aiohttp client (not the bot's Kling client)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import av
import jwt
import pytest
from aiohttp import web
from PIL import Image

from kling_sim.simulator import Faults, KlingSimulator, SimulatorConfig
from testing.images import make_jpeg, make_png
from testing.settings import settings_for

IMAGE = "/v1/images/multi-image2image"
VIDEO = "/v1/videos/multi-image2video"
GW_IMAGE = "/kling" + IMAGE
COMET = "/kling/v1/images/generations"
URL = "https://example.com/subject.png"

SEED_002 = {
    "model_name": "kling-v2-1",
    "prompt": "Wearing a flowing red dress on the grassland, in Ghibli style.",
    "negative_prompt": "",
    "subject_image_list": [
        {"subject_image": "https://v1-kling.klingai.com/kcdn/kling-qa-test/multi-1.png"},
        {"subject_image": "https://v1-kling.klingai.com/kcdn/kling-qa-test/multi-2.png"},
    ],
    "scene_image": "https://v1-kling.klingai.com/kcdn/kling-qa-test/background.jpeg",
    "style_image": "https://v1-kling.klingai.com/kcdn/kling-qa-test/16x9_jipuli.png",
    "n": 2,
    "aspect_ratio": "9:16",
}
SEED_004 = {
    "model_name": "kling-v1-6",
    "image_list": [
        {"image": "https://p1-kling.klingai.com/kcdn/kling-qa-test/dog.png"},
        {"image": "https://p1-kling.klingai.com/kcdn/kling-qa-test/dog_cloth.png"},
    ],
    "prompt": "A white Bichon Frise wearing a red Northeast-style floral cotton jacket",
    "negative_prompt": "",
    "mode": "pro",
    "duration": "5",
    "aspect_ratio": "16:9",
    "callback_url": "",
    "external_task_id": "",
}
SEED_001 = {
    "model_name": "kling-v2",
    "prompt": "Example prompt from provider documentation.",
    "negative_prompt": "velit quis mollit eu",
    "subject_image_list": ["http://dummyimage.com/400x400"],
    "scence_image": "",
    "n": 4,
    "aspect_ratio": " 2:3",
    "callback_url": "http://gxdf.an/mgjptue",
}
COMET_SUBJECT = {"subject_image": "https://filesystem.site/cdn/20250814/goDW44JIf6eSuxAS7T.png"}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def token(sim: KlingSimulator, *, secret: str | None = None, **claims: Any) -> str:
    now = int(time.time())
    payload = {"iss": sim.config.access_key, "exp": now + 1800, "nbf": now - 5, **claims}
    return jwt.encode(payload, secret or sim.config.secret_key, algorithm="HS256")


def jwt_headers(sim: KlingSimulator) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(sim)}"}


BEARER = {"Authorization": "Bearer sim-api-key"}


def image_body(**fields: Any) -> dict[str, Any]:
    return {"subject_image_list": [{"subject_image": URL}], "prompt": "a cat", **fields}


def video_body(**fields: Any) -> dict[str, Any]:
    return {"image_list": [{"image": URL}], "prompt": "a dog runs", **fields}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def call(
    http: aiohttp.ClientSession,
    sim: KlingSimulator,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    headers = jwt_headers(sim) if headers is None else headers
    async with http.request(method, sim.base_url + path, json=body, headers=headers) as resp:
        assert resp.content_type == "application/json"
        return resp.status, json.loads(await resp.read())


async def create(http, sim, path=IMAGE, body=None, headers=None) -> dict[str, Any]:
    status, env = await call(http, sim, "POST", path, body or image_body(), headers)
    assert (status, env["code"]) == (200, 0), env
    return env["data"]


async def wait_final(http, sim, path: str, task_id: str, headers=None) -> dict[str, Any]:
    for _ in range(200):
        status, env = await call(http, sim, "GET", f"{path}/{task_id}", headers=headers)
        assert status == 200, env
        if env["data"]["task_status"] in ("succeed", "failed"):
            return env["data"]
        await asyncio.sleep(0.02)
    raise AssertionError("task never ended")


class CallbackSink:
    """A tiny aiohttp server that records every POSTed JSON body."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def _receive(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.json())
        return web.Response(text="ok")

    async def __aenter__(self) -> CallbackSink:
        app = web.Application()
        app.router.add_post("/cb/{token}", self._receive)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/cb/secret-token"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()

    def statuses(self) -> list[str]:
        return [body["task_status"] for body in self.bodies]


# --- the seeds ---------------------------------------------------------------------------------


async def test_seed_002_official_image_accepted(simulator, http):
    data = await create(http, simulator, IMAGE, SEED_002)
    assert data["task_status"] == "submitted"
    assert data["task_id"].isdigit() and len(data["task_id"]) >= 18
    assert isinstance(data["created_at"], int) and data["created_at"] > 1_600_000_000_000
    task = simulator.tasks[data["task_id"]]
    assert (task.kind, task.n, task.aspect_ratio) == ("image", 2, "9:16")
    assert task.scene == SEED_002["scene_image"] and task.request == SEED_002


async def test_seed_004_official_video_accepted(simulator, http):
    data = await create(http, simulator, VIDEO, SEED_004)
    task = simulator.tasks[data["task_id"]]
    # Empty callback_url and external_task_id mean "absent".
    assert (task.kind, task.duration, task.mode) == ("video", "5", "pro")
    assert task.callback_url is None and task.external_task_id is None
    assert simulator.calls["create_video"] == 1


async def test_seed_001_gateway_rejects_spaced_ratio_then_accepts(simulator, http):
    # The seed's callback host is on the internet: tests call back to loopback only.
    seed = {**SEED_001, "callback_url": "http://127.0.0.1:9/mgjptue"}
    status, env = await call(http, simulator, "POST", GW_IMAGE, seed, BEARER)
    assert (status, env["code"]) == (400, 1201)
    assert env["message"].startswith("aspect_ratio: ' 2:3' is not one of 16:9")
    data = await create(http, simulator, GW_IMAGE, {**seed, "aspect_ratio": "2:3"}, BEARER)
    task = simulator.tasks[data["task_id"]]
    assert task.images == ("http://dummyimage.com/400x400",) and task.scene is None
    assert task.n == 4


async def test_seed_003_cometapi_needs_two_to_four_subjects(simulator, http):
    body = {"subject_image_list": [COMET_SUBJECT] * 4}
    data = await create(http, simulator, COMET, body, BEARER)
    status, env = await call(http, simulator, "GET", f"{COMET}/{data['task_id']}", None, BEARER)
    assert (status, env["data"]["task_id"]) == (200, data["task_id"])
    status, env = await call(
        http, simulator, "POST", COMET, {"subject_image_list": [COMET_SUBJECT]}, BEARER
    )
    assert (status, env["code"]) == (400, 1201) and "subject_image_list" in env["message"]


async def test_official_path_rejects_plain_string_subjects_and_misspelt_scene(simulator, http):
    status, env = await call(http, simulator, "POST", IMAGE, {"subject_image_list": [URL]})
    assert (status, env["code"]) == (400, 1201) and "subject_image_list[0]" in env["message"]
    status, env = await call(http, simulator, "POST", IMAGE, image_body(scence_image=URL))
    assert env["code"] == 1201 and "scence_image" in env["message"]


# --- authentication ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make_header", "code"),
    [
        (lambda sim: None, 1001),
        (lambda sim: "Bearer ", 1001),
        (lambda sim: "Bearer not-a-jwt", 1002),
        (lambda sim: f"Bearer {token(sim, iss='someone-else')}", 1002),
        (lambda sim: f"Bearer {token(sim, secret='wrong-secret-wrong-secret-wrong!!')}", 1000),
        (lambda sim: f"Bearer {token(sim, exp=int(time.time()) - 60)}", 1004),
        (lambda sim: f"Bearer {token(sim, nbf=int(time.time()) + 60)}", 1003),
    ],
    ids=["missing", "empty", "garbage", "unknown-iss", "wrong-secret", "expired", "nbf-future"],
)
async def test_jwt_failures(simulator, http, make_header, code):
    header = make_header(simulator)
    headers = {} if header is None else {"Authorization": header}
    status, env = await call(http, simulator, "POST", IMAGE, image_body(), headers)
    assert (status, env["code"]) == (401, code), env
    assert simulator.tasks == {}


async def test_jwt_leeway_accepts_slightly_expired(simulator, http):
    headers = {"Authorization": f"Bearer {token(simulator, exp=int(time.time()) - 2)}"}
    await create(http, simulator, IMAGE, image_body(), headers)


async def test_gateway_bearer_key(simulator, http):
    status, env = await call(http, simulator, "POST", GW_IMAGE, image_body(), {})
    assert (status, env["code"]) == (401, 1001)
    bad = {"Authorization": "Bearer wrong-key"}
    status, env = await call(http, simulator, "POST", GW_IMAGE, image_body(), bad)
    assert (status, env["code"]) == (401, 1000)
    # A JWT is not a gateway key.
    status, env = await call(http, simulator, "POST", GW_IMAGE, image_body(), None)
    assert env["code"] == 1000


# --- validation --------------------------------------------------------------------------------


def _gif() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (400, 400)).save(out, format="GIF")
    return out.getvalue()


BAD_BODIES = {
    "n=10": (IMAGE, image_body(n=10), "n:"),
    "n-string": (IMAGE, image_body(n="2"), "n:"),
    "duration-int": (VIDEO, video_body(duration=5), "duration:"),
    "duration-7": (VIDEO, video_body(duration="7"), "duration:"),
    "prompt-2501": (IMAGE, image_body(prompt="x" * 2501), "prompt:"),
    "negative-2501": (VIDEO, video_body(negative_prompt="x" * 2501), "negative_prompt:"),
    "video-no-prompt": (VIDEO, {"image_list": [{"image": URL}]}, "prompt:"),
    "video-blank-prompt": (VIDEO, video_body(prompt="  "), "prompt:"),
    "data-prefix": (
        IMAGE,
        image_body(
            subject_image_list=[{"subject_image": "data:image/png;base64," + b64(make_png())}]
        ),
        "'data:' prefix",
    ),
    "5-subjects": (
        IMAGE,
        image_body(subject_image_list=[{"subject_image": URL}] * 5),
        "subject_image_list:",
    ),
    "0-subjects": (IMAGE, image_body(subject_image_list=[]), "subject_image_list:"),
    "png-200x200": (
        IMAGE,
        image_body(subject_image_list=[{"subject_image": b64(make_png(200, 200))}]),
        "subject_image_list[0].subject_image: image is 200x200",
    ),
    "png-ratio-3": (IMAGE, image_body(scene_image=b64(make_png(900, 300))), "scene_image:"),
    "gif": (IMAGE, image_body(style_image=b64(_gif())), "style_image: format GIF"),
    "not-base64": (
        VIDEO,
        video_body(image_list=[{"image": "not base64 at all!"}]),
        "image_list[0].image",
    ),
    "image-ratio": (IMAGE, image_body(aspect_ratio="5:4"), "aspect_ratio: '5:4'"),
    "video-ratio": (VIDEO, video_body(aspect_ratio="4:3"), "aspect_ratio: '4:3'"),
    "mode": (VIDEO, video_body(mode="max"), "mode:"),
    "image-model": (IMAGE, image_body(model_name="kling-v9"), "model_name:"),
    "video-model": (VIDEO, video_body(model_name="kling-v2"), "model_name:"),
    "watermark": (IMAGE, image_body(watermark_info={"enabled": "yes"}), "watermark_info:"),
    "callback": (IMAGE, image_body(callback_url="ftp://x"), "callback_url:"),
}


@pytest.mark.parametrize(("path", "body", "needle"), BAD_BODIES.values(), ids=BAD_BODIES.keys())
async def test_bad_fields_answer_1201_naming_the_field(simulator, http, path, body, needle):
    status, env = await call(http, simulator, "POST", path, body)
    assert (status, env["code"]) == (400, 1201), env
    assert needle in env["message"]
    assert simulator.tasks == {}


async def test_body_that_is_not_json_is_1200(simulator, http):
    url = simulator.base_url + IMAGE
    async with http.post(url, data=b"{not json", headers=jwt_headers(simulator)) as resp:
        assert resp.status == 400 and (await resp.json())["code"] == 1200


async def test_good_base64_images_are_accepted(simulator, http):
    body = image_body(
        subject_image_list=[{"subject_image": b64(make_png(300, 700))}],
        scene_image=b64(make_jpeg(800, 450)),
        style_image="",
    )
    data = await create(http, simulator, IMAGE, body)
    assert simulator.tasks[data["task_id"]].style is None


# --- lifecycle and callbacks -------------------------------------------------------------------


async def test_lifecycle_posts_bare_task_on_every_status(simulator, http):
    async with CallbackSink() as sink:
        body = image_body(n=2, callback_url=sink.url, watermark_info={"enabled": True})
        data = await create(http, simulator, IMAGE, body)
        final = await wait_final(http, simulator, IMAGE, data["task_id"])
        await asyncio.sleep(0.1)
    assert sink.statuses() == ["submitted", "processing", "succeed"]
    assert all("code" not in b and b["task_id"] == data["task_id"] for b in sink.bodies)
    last = sink.bodies[-1]
    assert last == final
    assert last["final_unit_deduction"] == "2" and last["watermark_info"] == {"enabled": True}
    assert [i["index"] for i in last["task_result"]["images"]] == [0, 1]
    assert last["task_result"]["images"][1]["url"].startswith(simulator.base_url + "/results/")
    assert "watermark_url" in last["task_result"]["images"][0]
    assert "final_unit_deduction" not in sink.bodies[0] and "task_result" not in sink.bodies[1]
    assert sink.bodies[0]["updated_at"] < sink.bodies[1]["updated_at"] <= last["updated_at"]
    assert simulator.calls["callback_sent"] == 3


async def test_video_deduction_and_result(simulator, http):
    data = await create(http, simulator, VIDEO, video_body(mode="pro", duration="10"))
    final = await wait_final(http, simulator, VIDEO, data["task_id"])
    assert final["final_unit_deduction"] == "4"
    (video,) = final["task_result"]["videos"]
    assert video["duration"] == "10" and video["url"].endswith("/0.mp4") and video["id"]


async def test_unreachable_callback_does_not_hurt(simulator, http):
    body = image_body(callback_url="http://127.0.0.1:9/nowhere")
    data = await create(http, simulator, IMAGE, body)
    final = await wait_final(http, simulator, IMAGE, data["task_id"])
    assert final["task_status"] == "succeed"
    await asyncio.sleep(0.1)
    assert simulator.calls["callback_sent"] == 3


async def test_query_by_external_id_and_duplicates(simulator, http):
    data = await create(http, simulator, IMAGE, image_body(external_task_id="order-1"))
    status, env = await call(http, simulator, "GET", f"{IMAGE}/order-1")
    assert status == 200 and env["data"]["task_id"] == data["task_id"]
    assert env["data"]["task_info"] == {"external_task_id": "order-1"}
    status, env = await call(http, simulator, "POST", IMAGE, image_body(external_task_id="order-1"))
    assert (status, env["code"]) == (400, 1201) and "external_task_id" in env["message"]
    # Unique per account: a video may not reuse it either; "" means absent and may repeat.
    status, env = await call(http, simulator, "POST", VIDEO, video_body(external_task_id="order-1"))
    assert env["code"] == 1201
    await create(http, simulator, IMAGE, image_body(external_task_id=""))
    await create(http, simulator, IMAGE, image_body(external_task_id=""))
    # The image task is not visible on the video path, and unknown ids are 404 code 1203.
    status, env = await call(http, simulator, "GET", f"{VIDEO}/order-1")
    assert (status, env["code"]) == (404, 1203)


async def test_list_newest_first_with_paging(simulator, http):
    ids = [(await create(http, simulator))["task_id"] for _ in range(5)]
    await create(http, simulator, VIDEO, video_body())
    status, env = await call(http, simulator, "GET", f"{IMAGE}?pageNum=1&pageSize=2")
    assert [t["task_id"] for t in env["data"]] == [ids[4], ids[3]]
    status, env = await call(http, simulator, "GET", f"{IMAGE}?pageNum=3&pageSize=2")
    assert [t["task_id"] for t in env["data"]] == [ids[0]]
    status, env = await call(http, simulator, "GET", f"{IMAGE}?pageNum=4&pageSize=2")
    assert env["data"] == []
    status, env = await call(http, simulator, "GET", IMAGE)
    assert len(env["data"]) == 5
    status, env = await call(http, simulator, "GET", VIDEO)
    assert len(env["data"]) == 1
    for query in ("pageSize=501", "pageSize=0", "pageNum=1001", "pageNum=x"):
        status, env = await call(http, simulator, "GET", f"{IMAGE}?{query}")
        assert (status, env["code"]) == (400, 1201) and query.split("=")[0] in env["message"]
    assert simulator.calls["list_image"] == 8 and simulator.calls["list_video"] == 1


async def test_concurrency_counts_n_slots_until_tasks_end(simulator, http):
    simulator.config.image_concurrency = 4
    simulator.config.video_concurrency = 1
    await create(http, simulator, IMAGE, image_body(n=3))
    status, env = await call(http, simulator, "POST", IMAGE, image_body(n=2))
    assert (status, env["code"]) == (429, 1303)
    await create(http, simulator, IMAGE, image_body(n=1))
    await create(http, simulator, VIDEO, video_body())
    status, env = await call(http, simulator, "POST", VIDEO, video_body())
    assert (status, env["code"]) == (429, 1303)
    await asyncio.sleep(simulator.config.submitted_seconds + simulator.config.processing_seconds)
    await create(http, simulator, IMAGE, image_body(n=4))
    await create(http, simulator, VIDEO, video_body())


async def test_failed_tasks_hold_their_slots_until_they_end(simulator, http):
    simulator.config.image_concurrency = 2
    simulator.config.faults.task_failure_rate = 1.0
    data = await create(http, simulator, IMAGE, image_body(n=2))
    status, env = await call(http, simulator, "POST", IMAGE, image_body(n=1))
    assert (status, env["code"]) == (429, 1303)  # a task that will fail still counts
    final = await wait_final(http, simulator, IMAGE, data["task_id"])
    assert final["task_status"] == "failed"
    await create(http, simulator, IMAGE, image_body(n=2))  # its end freed both slots


async def test_images_over_10_mb_are_refused_naming_the_field(simulator, http):
    big = b64(b"\x89PNG\r\n\x1a\n" + bytes(10 * 1024 * 1024))
    body = image_body(subject_image_list=[{"subject_image": b64(make_png())}], style_image=big)
    status, env = await call(http, simulator, "POST", IMAGE, body)
    assert (status, env["code"]) == (400, 1201)
    assert env["message"].startswith("style_image") and "10 MB" in env["message"]
    assert simulator.tasks == {}


async def test_wrong_method_is_1202(simulator, http):
    status, env = await call(http, simulator, "DELETE", f"{IMAGE}/123")
    assert (status, env["code"]) == (404, 1202)


# --- result media ------------------------------------------------------------------------------


async def test_png_results_have_the_requested_aspect_ratio(simulator, http):
    body = image_body(
        n=2,
        aspect_ratio="9:16",
        subject_image_list=[{"subject_image": b64(make_png())}, {"subject_image": URL}],
        scene_image=b64(make_jpeg(600, 400)),
    )
    data = await create(http, simulator, IMAGE, body)
    final = await wait_final(http, simulator, IMAGE, data["task_id"])
    pictures = []
    for item in final["task_result"]["images"]:
        async with http.get(item["url"]) as resp:
            assert resp.status == 200 and resp.content_type == "image/png"
            pictures.append(await resp.read())
    assert pictures[0] != pictures[1]
    image = Image.open(io.BytesIO(pictures[0]))
    assert image.format == "PNG" and max(image.size) == simulator.config.media_size
    assert abs(image.width / image.height - 9 / 16) < 0.02
    image.load()  # every pixel decodes, not just the header
    async with http.get(final["task_result"]["images"][0]["url"].replace("0.png", "7.png")) as r:
        assert r.status == 404
    assert simulator.calls["result"] == 3


def _share_dominated_by(image: Image.Image, channel: int) -> float:
    """Share of pixels whose ``channel`` (0 red, 1 green, 2 blue) clearly outweighs the others."""
    raw = image.convert("RGB").tobytes()
    pixels = [raw[i : i + 3] for i in range(0, len(raw), 3)]
    others = [c for c in range(3) if c != channel]
    near = sum(1 for p in pixels if all(p[channel] > p[c] + 60 for c in others))
    return near / len(pixels)


async def test_results_compose_the_subjects_on_the_scene(simulator, http):
    body = image_body(
        aspect_ratio="1:1",
        subject_image_list=[
            {"subject_image": b64(make_png(400, 400, (230, 20, 20)))},
            {"subject_image": b64(make_png(400, 400, (20, 20, 230)))},
        ],
        scene_image=b64(make_png(600, 400, (20, 220, 20))),
    )
    data = await create(http, simulator, IMAGE, body)
    final = await wait_final(http, simulator, IMAGE, data["task_id"])
    async with http.get(final["task_result"]["images"][0]["url"]) as resp:
        result = Image.open(io.BytesIO(await resp.read()))
    # The scene fills the background (tinted); both subjects are drawn on it, each visible.
    assert _share_dominated_by(result, 1) > 0.3
    assert _share_dominated_by(result, 0) > 0.02 and _share_dominated_by(result, 2) > 0.02


@pytest.mark.parametrize(("ratio", "duration"), [("16:9", "5"), ("9:16", "10")])
async def test_mp4_result_is_h264_with_the_requested_duration(simulator, http, ratio, duration):
    body = video_body(aspect_ratio=ratio, duration=duration)
    data = await create(http, simulator, VIDEO, body)
    final = await wait_final(http, simulator, VIDEO, data["task_id"])
    async with http.get(final["task_result"]["videos"][0]["url"]) as resp:
        assert resp.status == 200 and resp.content_type == "video/mp4"
        payload = await resp.read()
    with av.open(io.BytesIO(payload)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert abs(container.duration / 1_000_000 - int(duration)) <= 0.5
        w, h = stream.codec_context.width, stream.codec_context.height
        num, den = (int(part) for part in ratio.split(":"))
        assert abs(w / h - num / den) < 0.02
        assert sum(1 for _ in container.decode(stream)) >= 5 * int(duration)


# --- faults ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [("server_error_rate", 500, 5000), ("rate_limit_rate", 429, 1302)],
)
async def test_error_faults(simulator, http, fault, status, code):
    setattr(simulator.config.faults, fault, 1.0)
    got, env = await call(http, simulator, "POST", IMAGE, image_body())
    assert (got, env["code"]) == (status, code)
    got, env = await call(http, simulator, "GET", f"{IMAGE}/1")
    assert (got, env["code"]) == (status, code)
    assert simulator.tasks == {}


async def test_timeout_fault_hangs_and_creates_nothing(simulator, http):
    simulator.config.faults.timeout_rate = 1.0
    simulator.config.faults.hang_seconds = 0.3
    with pytest.raises(asyncio.TimeoutError):
        async with http.post(
            simulator.base_url + IMAGE,
            json=image_body(),
            headers=jwt_headers(simulator),
            timeout=aiohttp.ClientTimeout(total=0.1),
        ):
            pass
    started = time.monotonic()
    status, env = await call(http, simulator, "GET", IMAGE)
    assert time.monotonic() - started >= 0.29
    assert (status, env["code"]) == (504, 5002)
    assert simulator.tasks == {}


async def test_lost_create_response_commits_the_task(simulator, http):
    simulator.config.faults.lost_create_response_rate = 1.0
    simulator.config.faults.hang_seconds = 0.05
    with pytest.raises(aiohttp.ClientError):
        await call(http, simulator, "POST", IMAGE, image_body(external_task_id="lost-1"))
    assert len(simulator.tasks) == 1
    simulator.config.faults.lost_create_response_rate = 0.0
    status, env = await call(http, simulator, "GET", f"{IMAGE}/lost-1")
    assert status == 200 and env["data"]["task_id"] in simulator.tasks


async def test_malformed_fault(simulator, http):
    simulator.config.faults.malformed_rate = 1.0
    for _ in range(6):  # both variants: HTML and truncated JSON
        async with http.post(
            simulator.base_url + IMAGE, json=image_body(), headers=jwt_headers(simulator)
        ) as resp:
            assert resp.status == 200
            with pytest.raises(ValueError):
                json.loads(await resp.read())
    assert simulator.tasks == {}


async def test_slow_fault(simulator, http):
    simulator.config.faults.slow_rate = 1.0
    simulator.config.faults.slow_seconds = 0.2
    started = time.monotonic()
    await create(http, simulator)
    assert time.monotonic() - started >= 0.19


async def test_task_failure_fault(simulator, http):
    simulator.config.faults.task_failure_rate = 1.0
    data = await create(http, simulator, IMAGE, image_body(n=3))
    final = await wait_final(http, simulator, IMAGE, data["task_id"])
    assert final["task_status"] == "failed"
    assert "risk control" in final["task_status_msg"]
    assert final["final_unit_deduction"] == "0" and "task_result" not in final


async def test_expired_result_fault(simulator, http):
    simulator.config.faults.expired_result_rate = 1.0
    data = await create(http, simulator)
    final = await wait_final(http, simulator, IMAGE, data["task_id"])
    assert final["task_status"] == "succeed"
    async with http.get(final["task_result"]["images"][0]["url"]) as resp:
        assert resp.status == 404


@pytest.mark.parametrize(
    ("fault", "value", "expected"),
    [
        ("callback_drop_rate", 1.0, []),
        (
            "callback_duplicate_rate",
            1.0,
            ["submitted", "submitted", "processing", "processing", "succeed", "succeed"],
        ),
        ("callback_reorder", True, ["succeed", "processing", "submitted"]),
    ],
)
async def test_callback_faults(simulator, http, fault, value, expected):
    setattr(simulator.config.faults, fault, value)
    async with CallbackSink() as sink:
        data = await create(http, simulator, IMAGE, image_body(callback_url=sink.url))
        await wait_final(http, simulator, IMAGE, data["task_id"])
        await asyncio.sleep(0.15)
    assert sink.statuses() == expected
    assert simulator.calls["callback_sent"] == len(expected)


async def test_seeded_faults_are_reproducible(http):
    outcomes = []
    for _ in range(2):
        config = SimulatorConfig(seed=7, faults=Faults(rate_limit_rate=0.5))
        async with KlingSimulator(config) as sim:
            codes = [
                (await call(http, sim, "POST", IMAGE, image_body()))[1]["code"] for _ in range(12)
            ]
        outcomes.append(codes)
    assert outcomes[0] == outcomes[1]
    assert set(outcomes[0]) == {0, 1302}


# --- scale and fixtures ------------------------------------------------------------------------


async def test_thousand_tasks_created_and_queried(simulator):
    headers = jwt_headers(simulator)
    connector = aiohttp.TCPConnector(limit=64)
    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector, headers=headers) as http:

        async def one(i: int) -> tuple[str, str]:
            body = image_body(external_task_id=f"bulk-{i}")
            async with http.post(simulator.base_url + IMAGE, json=body) as resp:
                task_id = (await resp.json())["data"]["task_id"]
            async with http.get(f"{simulator.base_url}{IMAGE}/bulk-{i}") as resp:
                return task_id, (await resp.json())["data"]["task_id"]

        pairs = await asyncio.gather(*(one(i) for i in range(1000)))
    elapsed = time.perf_counter() - started
    print(f"1000 creates + 1000 queries in {elapsed:.2f} s ({2000 / elapsed:.0f} requests/s)")
    assert all(created == queried for created, queried in pairs)
    assert len({created for created, _ in pairs}) == 1000 == len(simulator.tasks)


async def test_settings_for_points_at_the_simulator(simulator):
    settings = settings_for(simulator, poll_concurrency=3)
    assert settings.simulated and settings.kling_base() == simulator.base_url
    assert settings.poll_concurrency == 3 and settings.data_dir.is_dir()
    assert make_png()[:4] == b"\x89PNG" and make_jpeg()[:2] == b"\xff\xd8"


async def test_app_runs_under_aiohttp_test_server():
    from aiohttp.test_utils import TestClient, TestServer

    sim = KlingSimulator(SimulatorConfig(submitted_seconds=0.0, processing_seconds=0.0))
    async with TestClient(TestServer(sim.app)) as client:
        resp = await client.post(GW_IMAGE, json=image_body(n=1), headers=BEARER)
        task_id = (await resp.json())["data"]["task_id"]
        resp = await client.get(f"{GW_IMAGE}/{task_id}", headers=BEARER)
        url = (await resp.json())["data"]["task_result"]["images"][0]["url"]
        assert url.startswith(str(client.make_url("/results/")))
        resp = await client.get(url[url.index("/results/") :])
        assert resp.status == 200 and (await resp.read())[:4] == b"\x89PNG"


async def test_start_again_inside_async_with_adds_the_address(http):
    async with KlingSimulator() as sim:
        first = sim.base_url
        second = await sim.start("0.0.0.0", 0)
        assert second == sim.base_url != first and second.startswith("http://127.0.0.1:")
        status, env = await call(http, sim, "GET", GW_IMAGE, headers=BEARER)
        assert (status, env["code"], env["data"]) == (200, 0, [])


async def test_bound_to_every_interface_results_name_the_address_the_client_used(http):
    """``kling-bot simulate --host 0.0.0.0`` (a container): result URLs must be reachable."""
    async with KlingSimulator(SimulatorConfig(submitted_seconds=0, processing_seconds=0)) as sim:
        base_url = await sim.start("0.0.0.0", 0)
        port = base_url.rsplit(":", 1)[1]
        # Another container reaches it by a name of its own, not by our loopback address.
        headers = {**jwt_headers(sim), "Host": f"kling-sim:{port}"}
        data = await create(http, sim, headers=headers)
        final = await wait_final(http, sim, IMAGE, data["task_id"], headers=headers)
    assert final["task_result"]["images"][0]["url"].startswith(f"http://kling-sim:{port}/")
