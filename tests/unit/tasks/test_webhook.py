"""The listener: callback refusals (404/400/413), /healthz and /metrics, over loopback."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bot.tasks.models import EventType, TaskState
from bot.tasks.webhook import callback_token
from kling_sim.simulator import KlingSimulator
from testing.callbacks import body, running_task
from testing.tracker_harness import SECRET, Harness, callback_settings

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def listener(simulator: KlingSimulator) -> AsyncIterator[Harness]:
    """A tracker whose listener runs, with no loops started: the test drives every callback."""
    h = Harness(callback_settings(simulator, webhook_max_body=2048))
    await h.open(start=False)
    try:
        yield h
    finally:
        await h.close()


def url(h: Harness, path: str) -> str:
    assert h.settings.public_base_url
    return h.settings.public_base_url + path


async def post(h: Harness, path: str, data: Any, **kw: Any) -> tuple[int, Any]:
    payload = data if isinstance(data, bytes) else json.dumps(data).encode()
    async with h.session.post(url(h, path), data=payload, **kw) as response:
        text = await response.text()
        return response.status, text


async def test_callback_token_is_an_hmac_of_the_external_id() -> None:
    token = callback_token(SECRET, "ext-1")
    assert len(token) == 32 and token == callback_token(SECRET, "ext-1")
    assert token != callback_token(SECRET, "ext-2") != callback_token("other", "ext-1")
    digest = hmac.new(SECRET.encode(), b"ext-1", hashlib.sha256).hexdigest()
    assert token == digest[:32]  # HMAC-SHA256 keyed with WEBHOOK_SECRET, hex, truncated


async def test_a_submitted_task_carries_the_hmac_token_in_its_callback_url(
    simulator: KlingSimulator,
) -> None:
    h = await Harness(callback_settings(simulator)).open()
    try:
        record = await h.submit()
        running = await h.wait_for_state(
            record.id, {TaskState.SUBMITTED, TaskState.PROCESSING, TaskState.DELIVERED}
        )
        mac = hmac.new(SECRET.encode(), running.external_task_id.encode(), hashlib.sha256)
        assert running.callback_token == mac.hexdigest()[:32]
        sent = simulator.tasks[running.kling_task_id or ""].callback_url
        assert sent == f"{h.settings.public_base_url}/kling/callback/{running.callback_token}"
    finally:
        await h.close()


async def test_a_callback_while_the_store_is_down_answers_503(listener: Harness) -> None:
    h = listener
    record = await running_task(h)
    await h.store.close()  # the database went away under the listener
    try:
        status, text = await post(h, f"/kling/callback/{record.callback_token}", body(record))
        assert status == 503  # "try again", never a 500
        assert json.loads(text) == {"error": "temporarily unavailable"}
        assert h.core.metrics.callbacks[("error", "")] == 1
    finally:
        await h.store.open()  # for the fixture's clean close
    assert (await post(h, f"/kling/callback/{record.callback_token}", body(record)))[0] == 200


async def test_a_progress_callback_moves_the_task_forward_once(listener: Harness) -> None:
    h = listener
    record = await running_task(h)
    path = f"/kling/callback/{record.callback_token}"
    assert await post(h, path, body(record)) == (200, '{"status": "accepted"}')
    processing = await h.wait_for_state(record.id, {TaskState.PROCESSING})
    assert processing.kling_status == "processing"
    assert await post(h, path, body(record)) == (200, '{"status": "ignored"}')  # duplicate
    stale = body(record, "submitted")
    assert await post(h, path, stale) == (200, '{"status": "ignored"}')  # never backwards
    after = await h.store.get(record.id)
    assert after is not None and after.state is TaskState.PROCESSING
    await h.wait_until(lambda: h.events)
    assert [e.task.state for e in h.events if e.type is EventType.STATE] == [TaskState.PROCESSING]


async def test_refusals_never_break_the_listener(listener: Harness) -> None:
    h = listener
    record = await running_task(h)
    other = await running_task(h, "kling-2")
    path = f"/kling/callback/{record.callback_token}"

    assert (await post(h, "/kling/callback/" + "0" * 32, body(record)))[0] == 404
    assert (await post(h, path, b"{not json"))[0] == 400
    assert (await post(h, path, b"\xff\xfe"))[0] == 400
    assert (await post(h, path, [1, 2, 3]))[0] == 400
    assert (await post(h, path, {"task_status": "succeed"}))[0] == 400  # no task_id
    assert (await post(h, path, body(other)))[0] == 400  # another task's body
    forged_external = body(record, task_info={"external_task_id": "ext-kling-2"})
    assert (await post(h, path, forged_external))[0] == 400
    big = body(record, padding="x" * 4096)
    assert (await post(h, path, big))[0] == 413

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: aiohttp's own cap applies
        yield json.dumps(big).encode()

    async with h.session.post(url(h, path), data=chunks()) as response:
        assert response.status == 413

    assert (await h.store.get(record.id)).state is TaskState.SUBMITTED  # type: ignore[union-attr]
    # Still serving, and still accepting the genuine callback.
    assert (await post(h, path, body(record)))[0] == 200
    refused = {k[1]: n for k, n in h.core.metrics.callbacks.items() if k[0] == "refused"}
    assert refused == {"unknown_token": 1, "malformed": 4, "mismatch": 2, "too_large": 2}


async def test_healthz_reports_the_store_and_every_check(listener: Harness) -> None:
    h = listener
    async with h.session.get(url(h, "/healthz")) as response:
        assert response.status == 200
        assert await response.json() == {"status": "ok", "checks": {"store": True}}
    connected = {"value": False}
    h.core.health_checks.append(lambda: ("discord", connected["value"]))
    async with h.session.get(url(h, "/healthz")) as response:
        assert response.status == 503
        assert (await response.json())["checks"] == {"store": True, "discord": False}
    connected["value"] = True

    def broken() -> tuple[str, bool]:
        raise RuntimeError("boom")

    h.core.health_checks.append(broken)
    async with h.session.get(url(h, "/healthz")) as response:
        assert response.status == 503
    h.core.health_checks.pop()
    await h.store.close()
    async with h.session.get(url(h, "/healthz")) as response:
        assert response.status == 503
        assert (await response.json())["checks"]["store"] is False
    await h.store.open()  # for the fixture's clean close


async def test_metrics_count_calls_callbacks_and_states(simulator: KlingSimulator) -> None:
    h = await Harness(callback_settings(simulator)).open()
    try:
        record = await h.submit()
        await h.wait_for_state(record.id, {TaskState.DELIVERED})
        await post(h, "/kling/callback/" + "f" * 32, {"task_id": "x", "task_status": "succeed"})
        async with h.session.get(url(h, "/metrics")) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = await response.text()
    finally:
        await h.close()
    lines = set(text.splitlines())
    assert 'kling_bot_tasks{state="delivered"} 1' in lines
    assert 'kling_bot_tasks{state="queued"} 0' in lines
    assert 'kling_bot_kling_calls_total{endpoint="create_image",code="0"} 1' in lines
    assert 'kling_bot_kling_calls_total{endpoint="get_image",code="0"} 1' in lines
    # Kling sent three callbacks (submitted, processing, succeed); "submitted" is news only
    # when it beats the create answer, otherwise a duplicate of what the create said.
    counted = {
        line.split(" ")[0]: int(line.split(" ")[1])
        for line in lines
        if line.startswith('kling_bot_callbacks_total{result="')
    }
    accepted = counted.get('kling_bot_callbacks_total{result="accepted"}', 0)
    ignored = counted.get('kling_bot_callbacks_total{result="ignored"}', 0)
    assert accepted >= 2 and accepted + ignored == 3
    assert 'kling_bot_callbacks_total{result="refused",reason="unknown_token"} 1' in lines
    assert 'kling_bot_queue_length{kind="image"} 0' in lines
    assert "kling_bot_download_seconds_count 1" in lines
    assert "kling_bot_delivery_seconds_count 1" in lines
    assert "# TYPE kling_bot_delivery_seconds summary" in lines
    assert not [line for line in lines if line.startswith("kling_bot_polls_total{")]


async def test_metrics_count_the_poller_s_requests(simulator: KlingSimulator) -> None:
    simulator.config.faults.callback_drop_rate = 1.0  # only polls can settle it
    settings = callback_settings(simulator, poll_first_delay=0.05, poll_interval_with_callbacks=0.2)
    h = await Harness(settings).open()
    try:
        record = await h.submit()
        await h.wait_for_state(record.id, {TaskState.DELIVERED})
        async with h.session.get(url(h, "/metrics")) as response:
            text = await response.text()
    finally:
        await h.close()
    polls = {
        line.rsplit(" ", 1)[0]: int(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("kling_bot_polls_total{")
    }
    listed = polls.get('kling_bot_polls_total{kind="image",method="list"}', 0)
    assert listed >= 1 and listed == simulator.calls["list_image"]
    assert "# TYPE kling_bot_polls_total counter" in text.splitlines()
