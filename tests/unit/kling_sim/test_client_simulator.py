"""KlingClient against the Kling simulator over loopback: every flavour, and each fault the
client can see, first at rate 1.0 and then at 0."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from bot.config import SIMULATOR_ACCESS_KEY, SIMULATOR_SECRET_KEY
from bot.kling.auth import BearerAuth, JwtAuth
from bot.kling.client import KlingClient
from bot.kling.errors import (
    KlingConcurrencyLimit,
    KlingConfigError,
    KlingNetworkError,
    KlingRateLimited,
    KlingServerError,
)
from bot.kling.models import ImageTaskRequest, KlingTask, TaskKind, TaskStatus, VideoTaskRequest
from bot.kling.providers import flavour_for
from kling_sim.simulator import FAILURE_MESSAGE, KlingSimulator
from testing.images import make_png
from testing.settings import settings_for

SUBJECTS = ["https://example.com/subject-1.png", "https://example.com/subject-2.png"]
SCENE = "https://example.com/scene.jpeg"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as http:
        yield http


@pytest.fixture
def make_client(simulator: KlingSimulator, session: aiohttp.ClientSession):
    def make(flavour: str = "official", **kw: Any) -> KlingClient:
        if flavour_for(flavour).auth == "jwt":
            kw.setdefault("auth", JwtAuth(SIMULATOR_ACCESS_KEY, SIMULATOR_SECRET_KEY))
        else:
            kw.setdefault("auth", BearerAuth("sim-api-key"))
        kw.setdefault("base_delay", 0.01)
        kw.setdefault("max_delay", 0.05)
        kw.setdefault("request_timeout", 3.0)
        return KlingClient(session, flavour=flavour_for(flavour), base_url=simulator.base_url, **kw)

    return make


def image_request(**kw: Any) -> ImageTaskRequest:
    kw.setdefault("subject_images", SUBJECTS)
    kw.setdefault("prompt", "two friends at the seaside")
    return ImageTaskRequest(**kw)


def video_request(**kw: Any) -> VideoTaskRequest:
    kw.setdefault("images", SUBJECTS)
    kw.setdefault("prompt", "a dog licking its paw")
    return VideoTaskRequest(**kw)


async def wait_terminal(client: KlingClient, kind: TaskKind, task_id: str) -> KlingTask:
    deadline = time.monotonic() + 5
    while True:
        task = await client.get_task(kind, task_id)
        if task.is_terminal or time.monotonic() > deadline:
            return task
        await asyncio.sleep(0.05)


def turn_off_after_first(simulator: KlingSimulator, fault: str) -> Callable[[str, Any], None]:
    """An ``on_call`` that sets ``fault`` to 0 once the client has seen it once."""

    def on_call(label: str, code: int | None) -> None:
        setattr(simulator.config.faults, fault, 0.0)

    return on_call


# --- every flavour, end to end -------------------------------------------------------------


async def test_official_image_create_get_list(simulator, make_client) -> None:
    client = make_client("official")
    created = await client.create_image_task(image_request(n=2, scene_image=SCENE))

    assert created.task_status is TaskStatus.SUBMITTED
    assert created.external_task_id and created.external_task_id.startswith("kb-")
    sim_task = simulator.tasks[created.task_id]
    assert sim_task.scene == SCENE and sim_task.n == 2

    by_external = await client.get_task(TaskKind.IMAGE, created.external_task_id)
    assert by_external.task_id == created.task_id
    done = await wait_terminal(client, TaskKind.IMAGE, created.task_id)
    assert done.task_status is TaskStatus.SUCCEED
    assert len(done.result_urls()) == 2
    assert done.final_unit_deduction == "2"

    listed = await client.list_tasks(TaskKind.IMAGE, page=1, page_size=10)
    assert [t.task_id for t in listed] == [created.task_id]
    assert await client.list_tasks(TaskKind.VIDEO) == []
    assert simulator.calls["create_image"] == 1 and simulator.calls["list_image"] == 1


async def test_official_video_create_get_list(simulator, make_client) -> None:
    client = make_client("official")
    created = await client.create_video_task(video_request(mode="pro", duration="10"))

    assert simulator.tasks[created.task_id].duration == "10"
    done = await wait_terminal(client, TaskKind.VIDEO, created.task_id)
    assert done.task_status is TaskStatus.SUCCEED
    assert done.task_result is not None and done.task_result.videos[0].duration == "10"
    assert done.final_unit_deduction == "4"
    listed = await client.list_tasks(TaskKind.VIDEO)
    assert [t.external_task_id for t in listed] == [created.external_task_id]


async def test_simulator_flavour_from_settings_with_base64_images(simulator, session) -> None:
    settings = settings_for(simulator, kling_access_key=None, kling_secret_key=None)
    client = KlingClient.from_settings(settings, session, base_delay=0.01)
    png = base64.b64encode(make_png(400, 400)).decode()

    created = await client.create_image_task(image_request(subject_images=[png]))

    assert client.flavour.name == "simulator"
    assert simulator.tasks[created.task_id].images == (png,)
    assert (await client.get_task(TaskKind.IMAGE, created.task_id)).task_id == created.task_id


async def test_gateway_image_and_video(simulator, make_client) -> None:
    client = make_client("gateway")
    image = await client.create_image_task(image_request(scene_image=SCENE))
    video = await client.create_video_task(video_request())

    assert simulator.tasks[image.task_id].scene == SCENE  # "scence_image" understood
    assert simulator.calls["create_image"] == 1 and simulator.calls["create_video"] == 1
    assert (await wait_terminal(client, TaskKind.IMAGE, image.task_id)).is_terminal
    got = await client.get_task(TaskKind.VIDEO, video.external_task_id or "")
    assert got.task_id == video.task_id
    with pytest.raises(KlingConfigError):
        await client.list_tasks(TaskKind.IMAGE)


async def test_cometapi_image(simulator, make_client) -> None:
    client = make_client("cometapi")
    created = await client.create_image_task(image_request(scene_image=SCENE))
    done = await wait_terminal(client, TaskKind.IMAGE, created.task_id)

    assert done.task_status is TaskStatus.SUCCEED
    assert simulator.tasks[created.task_id].scene == SCENE
    assert simulator.calls["create_image"] == 1 and simulator.calls["get_image"] >= 1


async def test_wrong_credentials_are_config_errors(simulator, make_client) -> None:
    with pytest.raises(KlingConfigError):
        await make_client("official", auth=JwtAuth(SIMULATOR_ACCESS_KEY, "x" * 32)).get_task(
            TaskKind.IMAGE, "1"
        )
    with pytest.raises(KlingConfigError):
        await make_client("gateway", auth=BearerAuth("wrong-key")).get_task(TaskKind.IMAGE, "1")
    assert simulator.calls["get_image"] == 2  # not retried


async def test_expired_jwt_is_resigned(simulator, make_client) -> None:
    clock_offset = [-4000.0]
    auth = JwtAuth(
        SIMULATOR_ACCESS_KEY, SIMULATOR_SECRET_KEY, clock=lambda: time.time() + clock_offset[0]
    )

    def on_call(label: str, code: int | None) -> None:
        clock_offset[0] = 0.0  # the clock is fixed after the first refusal

    client = make_client("official", auth=auth, on_call=on_call)
    created = await client.create_image_task(image_request())
    assert created.task_id in simulator.tasks
    assert simulator.calls["create_image"] == 2 and len(simulator.tasks) == 1


# --- faults at 1.0, then 0 ---------------------------------------------------------------------


async def test_server_errors_retried_then_success(simulator, make_client) -> None:
    simulator.config.faults.server_error_rate = 1.0
    with pytest.raises(KlingServerError):
        await make_client("official", max_attempts=3).get_task(TaskKind.IMAGE, "1")
    assert simulator.calls["get_image"] == 3

    client = make_client("official", on_call=turn_off_after_first(simulator, "server_error_rate"))
    simulator.config.faults.server_error_rate = 1.0
    created = await client.create_image_task(image_request())
    assert list(simulator.tasks) == [created.task_id]


async def test_rate_limit_retried_then_success(simulator, make_client) -> None:
    simulator.config.faults.rate_limit_rate = 1.0
    with pytest.raises(KlingRateLimited):
        await make_client("official", max_attempts=3).create_image_task(image_request())
    assert simulator.calls["create_image"] == 3 and simulator.tasks == {}

    client = make_client("official", on_call=turn_off_after_first(simulator, "rate_limit_rate"))
    created = await client.create_image_task(image_request())
    assert list(simulator.tasks) == [created.task_id]
    assert simulator.calls["get_image"] == 0  # a 1302 means "not created": no lookup


async def test_timeouts_then_success(simulator, make_client) -> None:
    faults = simulator.config.faults
    faults.timeout_rate, faults.hang_seconds = 1.0, 1.0
    client = make_client("official", max_attempts=2, request_timeout=0.2)
    with pytest.raises(KlingNetworkError):
        await client.create_image_task(image_request())
    assert simulator.tasks == {}
    assert simulator.calls["create_image"] == 1  # the second attempt's lookup timed out too
    assert simulator.calls["get_image"] == 1

    client = make_client(
        "official", request_timeout=0.2, on_call=turn_off_after_first(simulator, "timeout_rate")
    )
    faults.timeout_rate = 1.0
    created = await client.create_image_task(image_request())
    assert list(simulator.tasks) == [created.task_id]


async def test_gateway_timeout_answer_5002_is_retried(simulator, make_client) -> None:
    faults = simulator.config.faults
    faults.timeout_rate, faults.hang_seconds = 1.0, 0.05  # Kling answers 504/5002 in time
    client = make_client("gateway", on_call=turn_off_after_first(simulator, "timeout_rate"))
    created = await client.create_video_task(video_request())
    assert list(simulator.tasks) == [created.task_id]


@pytest.mark.parametrize("hang", [0.05, 1.0], ids=["dropped", "timed-out"])
async def test_lost_create_response_creates_one_task(simulator, make_client, hang) -> None:
    faults = simulator.config.faults
    faults.lost_create_response_rate, faults.hang_seconds = 1.0, hang
    client = make_client("official", request_timeout=0.3)

    created = await client.create_image_task(image_request())

    assert list(simulator.tasks) == [created.task_id]  # created once, charged once
    assert simulator.calls["create_image"] == 1
    assert simulator.calls["get_image"] == 1
    assert created.external_task_id == simulator.tasks[created.task_id].external_task_id

    faults.lost_create_response_rate = 0.0
    again = await client.create_video_task(video_request())
    assert len(simulator.tasks) == 2 and again.task_id in simulator.tasks
    assert simulator.calls["get_video"] == 0


async def test_lost_create_response_on_gateway(simulator, make_client) -> None:
    faults = simulator.config.faults
    faults.lost_create_response_rate, faults.hang_seconds = 1.0, 0.05
    created = await make_client("gateway").create_video_task(video_request())
    assert list(simulator.tasks) == [created.task_id]
    assert simulator.calls["create_video"] == 1


async def test_malformed_then_success(simulator, make_client) -> None:
    simulator.config.faults.malformed_rate = 1.0
    with pytest.raises(KlingServerError, match="malformed"):
        await make_client("official", max_attempts=2).list_tasks(TaskKind.IMAGE)
    assert simulator.calls["list_image"] == 2

    client = make_client("official", on_call=turn_off_after_first(simulator, "malformed_rate"))
    created = await client.create_image_task(image_request())
    assert list(simulator.tasks) == [created.task_id]
    assert simulator.calls["get_image"] == 1  # looked up before creating again


async def test_task_failure_then_success(simulator, make_client) -> None:
    client = make_client("official")
    simulator.config.faults.task_failure_rate = 1.0
    failed = await client.create_image_task(image_request())
    failed = await wait_terminal(client, TaskKind.IMAGE, failed.task_id)
    assert failed.task_status is TaskStatus.FAILED
    assert failed.task_status_msg == FAILURE_MESSAGE
    assert failed.result_urls() == []

    simulator.config.faults.task_failure_rate = 0.0
    ok = await client.create_video_task(video_request())
    ok = await wait_terminal(client, TaskKind.VIDEO, ok.task_id)
    assert ok.task_status is TaskStatus.SUCCEED and ok.result_urls()


async def test_slow_answers(simulator, make_client) -> None:
    faults = simulator.config.faults
    faults.slow_rate, faults.slow_seconds = 1.0, 0.3
    client = make_client("official", request_timeout=2.0)
    started = time.monotonic()
    created = await client.create_image_task(image_request())
    assert time.monotonic() - started >= 0.3
    assert list(simulator.tasks) == [created.task_id]

    faults.slow_rate = 0.0
    started = time.monotonic()
    await client.get_task(TaskKind.IMAGE, created.task_id)
    assert time.monotonic() - started < 0.3


async def test_concurrency_limit(simulator, make_client) -> None:
    simulator.config.image_concurrency = 2
    client = make_client("official")
    first = await client.create_image_task(image_request(n=2))
    with pytest.raises(KlingConcurrencyLimit):
        await client.create_image_task(image_request(), retry_busy=False)
    assert len(simulator.tasks) == 1

    started = time.monotonic()  # the first task frees its slots after ~0.25 s
    second = await client.create_image_task(image_request())
    assert time.monotonic() - started >= 1.0
    assert set(simulator.tasks) == {first.task_id, second.task_id}
