"""Request models are strict, response models are lenient, flavours render the right bodies."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from bot.kling.errors import (
    KlingAuthExpired,
    KlingBillingError,
    KlingConcurrencyLimit,
    KlingConfigError,
    KlingInvalidRequest,
    KlingPolicyError,
    KlingRateLimited,
    KlingServerError,
    error_for_code,
)
from bot.kling.models import (
    Envelope,
    ImageTaskRequest,
    KlingTask,
    TaskKind,
    TaskStatus,
    VideoTaskRequest,
)
from bot.kling.providers import FLAVOURS

B64 = "iVBORw0KGgoAAAANSUhEUgAAAAUA"


@pytest.mark.parametrize(
    ("fields", "bad_field"),
    [
        ({"subject_images": []}, "subject_images"),
        ({"subject_images": [B64] * 5}, "subject_images"),
        ({"subject_images": ["data:image/png;base64," + B64]}, "subject_images"),
        ({"scene_image": "data:image/png;base64," + B64}, "scene_image"),
        ({"style_image": "data:image/png;base64," + B64}, "style_image"),
        ({"n": 0}, "n"),
        ({"n": 10}, "n"),
        ({"aspect_ratio": " 2:3"}, "aspect_ratio"),
        ({"aspect_ratio": "5:4"}, "aspect_ratio"),
        ({"model_name": "kling-v1-6"}, "model_name"),
        ({"prompt": "x" * 2501}, "prompt"),
        ({"negative_prompt": "x" * 2501}, "negative_prompt"),
        ({"unknown": 1}, "unknown"),
    ],
)
def test_image_request_rejects(fields: dict, bad_field: str) -> None:
    with pytest.raises(ValidationError) as raised:
        ImageTaskRequest(**{"subject_images": [B64], **fields})
    assert raised.value.errors()[0]["loc"][0] == bad_field


def test_image_request_limits_accepted() -> None:
    request = ImageTaskRequest(
        subject_images=[B64] * 4,
        n=9,
        aspect_ratio="21:9",
        prompt="x" * 2500,
        model_name="kling-v2-1",
    )
    assert request.slots == 9


@pytest.mark.parametrize(
    ("fields", "bad_field"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": " \n\t "}, "prompt"),
        ({"prompt": "x" * 2501}, "prompt"),
        ({"negative_prompt": "x" * 2501}, "negative_prompt"),
        ({"model_name": "kling-v2"}, "model_name"),
        ({"duration": 5}, "duration"),
        ({"duration": "7"}, "duration"),
        ({"mode": "ultra"}, "mode"),
        ({"aspect_ratio": "4:3"}, "aspect_ratio"),
        ({"images": []}, "images"),
        ({"images": [B64] * 5}, "images"),
        ({"images": ["data:image/jpeg;base64," + B64]}, "images"),
    ],
)
def test_video_request_rejects(fields: dict, bad_field: str) -> None:
    with pytest.raises(ValidationError) as raised:
        VideoTaskRequest(**{"images": [B64], "prompt": "a dog", **fields})
    assert raised.value.errors()[0]["loc"][0] == bad_field


def test_video_prompt_is_required() -> None:
    with pytest.raises(ValidationError, match="prompt"):
        VideoTaskRequest(images=[B64])
    assert VideoTaskRequest(images=[B64], prompt="p").slots == 1


def test_video_limits_accepted() -> None:
    request = VideoTaskRequest(
        images=[B64] * 4, prompt="x" * 2500, negative_prompt="y" * 2500, mode="pro", duration="10"
    )
    assert (len(request.images), len(request.prompt)) == (4, 2500)
    assert VideoTaskRequest(images=[B64], prompt="  a dog  ").prompt == "a dog"


def test_seed_002_create_and_query_responses_parse() -> None:
    create = Envelope.model_validate(
        {
            "code": 0,
            "message": "SUCCEED",
            "request_id": "r1",
            "data": {
                "task_id": "842250903629086785",
                "task_info": {"external_task_id": "kb-1"},
                "task_status": "submitted",
                "created_at": 1722769557708,
                "updated_at": 1722769557708,
            },
        }
    )
    task = KlingTask.model_validate(create.data)
    assert (task.task_id, task.external_task_id, task.task_status) == (
        "842250903629086785",
        "kb-1",
        TaskStatus.SUBMITTED,
    )
    done = KlingTask.model_validate(
        {
            "task_id": "842250903629086785",
            "task_status": "succeed",
            "task_status_msg": "",
            "task_info": {"external_task_id": "kb-1"},
            "final_unit_deduction": "8",
            "watermark_info": {"enabled": False},
            "created_at": 1722769557708,
            "updated_at": 1722769560000,
            "task_result": {
                "images": [
                    {"index": 0, "url": "https://cdn.example/0.png", "watermark_url": ""},
                    {"index": 1, "url": "https://cdn.example/1.png"},
                ]
            },
        }
    )
    assert done.is_terminal
    assert done.result_urls() == ["https://cdn.example/0.png", "https://cdn.example/1.png"]
    assert done.final_unit_deduction == "8"


def test_seed_004_video_result_parses() -> None:
    task = KlingTask.model_validate(
        {
            "task_id": "t",
            "task_status": "succeed",
            "task_result": {"videos": [{"id": "v1", "url": "https://cdn/v.mp4", "duration": 5.1}]},
        }
    )
    assert task.result_urls() == ["https://cdn/v.mp4"]
    assert task.task_result is not None and task.task_result.videos[0].duration == "5.1"


def test_lenient_parsing_of_relays() -> None:
    envelope = Envelope.model_validate({"code": "0", "message": "ok", "data": None, "extra": 1})
    assert envelope.code == 0
    task = KlingTask.model_validate(
        {
            "task_id": "t",
            "task_status": "FAILED",
            "task_info": None,
            "task_result": "",
            "final_unit_deduction": 0,
            "brand_new_field": {"x": 1},
        }
    )
    assert task.task_status is TaskStatus.FAILED
    assert task.external_task_id is None
    assert task.result_urls() == []
    assert task.final_unit_deduction == "0"


@pytest.mark.parametrize("result", [{"images": None, "videos": None}, {"images": None}])
def test_nulls_from_relays_mean_absent(result: dict) -> None:
    envelope = Envelope.model_validate({"code": 0, "message": None, "request_id": None})
    assert (envelope.message, envelope.request_id, envelope.data) == ("", None, None)
    task = KlingTask.model_validate(
        {
            "task_id": "t",
            "task_status": "succeed",
            "task_status_msg": None,
            "task_info": {"external_task_id": None},
            "watermark_info": {"enabled": None},
            "task_result": result,
        }
    )
    assert task.task_result is not None
    assert (task.task_result.images, task.task_result.videos) == ([], [])
    assert task.watermark_info is not None and task.watermark_info.enabled is False
    assert task.result_urls() == []
    assert (
        KlingTask.model_validate(
            {"task_id": "t", "task_status": "processing", "watermark_info": ""}
        ).watermark_info
        is None
    )


def test_official_bodies() -> None:
    flavour = FLAVOURS["official"]
    image = ImageTaskRequest(
        subject_images=["a", "b"],
        scene_image="s",
        style_image="y",
        n=2,
        aspect_ratio="9:16",
        prompt="p",
        callback_url="https://cb",
        external_task_id="kb-1",
        watermark=False,
    )
    assert flavour.create_path(TaskKind.IMAGE) == "/v1/images/multi-image2image"
    assert flavour.image_body(image) == {
        "prompt": "p",
        "watermark_info": {"enabled": False},
        "callback_url": "https://cb",
        "external_task_id": "kb-1",
        "model_name": "kling-v2",
        "subject_image_list": [{"subject_image": "a"}, {"subject_image": "b"}],
        "scene_image": "s",
        "style_image": "y",
        "n": 2,
        "aspect_ratio": "9:16",
    }
    video = VideoTaskRequest(images=["a"], prompt="p", mode="pro", duration="10")
    assert flavour.create_path(TaskKind.VIDEO) == "/v1/videos/multi-image2video"
    assert flavour.video_body(video) == {
        "prompt": "p",
        "model_name": "kling-v1-6",
        "image_list": [{"image": "a"}],
        "mode": "pro",
        "duration": "10",
        "aspect_ratio": "16:9",
    }


def test_gateway_and_cometapi_differences() -> None:
    request = ImageTaskRequest(subject_images=["a", "b"], scene_image="s")
    gateway, comet = FLAVOURS["gateway"], FLAVOURS["cometapi"]
    assert gateway.create_path(TaskKind.IMAGE) == "/kling/v1/images/multi-image2image"
    assert gateway.image_body(request)["subject_image_list"] == ["a", "b"]
    assert gateway.image_body(request)["scence_image"] == "s"
    assert "scene_image" not in gateway.image_body(request)
    assert comet.create_path(TaskKind.IMAGE) == "/kling/v1/images/generations"
    assert comet.image_body(request)["subject_image_list"] == [
        {"subject_image": "a"},
        {"subject_image": "b"},
    ]
    assert comet.min_subjects == 2
    assert comet.query_path(TaskKind.VIDEO) == "/kling/v1/videos/multi-image2video"


def test_gateway_native_sends_the_official_body_under_kling() -> None:
    request = ImageTaskRequest(subject_images=["a", "b"], scene_image="s")
    native, official = FLAVOURS["gateway-native"], FLAVOURS["official"]
    assert (native.auth, native.default_base_url, native.supports_list) == ("bearer", None, False)
    assert native.create_path(TaskKind.IMAGE) == "/kling/v1/images/multi-image2image"
    assert native.query_path(TaskKind.VIDEO) == "/kling/v1/videos/multi-image2video"
    assert native.image_body(request) == official.image_body(request)
    assert native.image_body(request)["subject_image_list"] == [
        {"subject_image": "a"},
        {"subject_image": "b"},
    ]
    assert native.image_body(request)["scene_image"] == "s"


@pytest.mark.parametrize(
    ("code", "status", "cls", "retryable"),
    [
        (1000, 401, KlingConfigError, False),
        (1004, 401, KlingAuthExpired, True),
        (1102, 429, KlingBillingError, False),
        (1201, 400, KlingInvalidRequest, False),
        (1301, 400, KlingPolicyError, False),
        (1302, 429, KlingRateLimited, True),
        (1303, 429, KlingConcurrencyLimit, True),
        (1304, 429, KlingConfigError, False),
        (5001, 503, KlingServerError, True),
        (9999, 502, KlingServerError, True),
        (9999, 400, KlingInvalidRequest, False),
    ],
)
def test_errors_follow_the_code_not_the_status(
    code: int, status: int, cls: type, retryable: bool
) -> None:
    error = error_for_code(code, "Kling says no", http_status=status, request_id="r")
    assert type(error) is cls
    assert error.retryable is retryable
    assert error.message == "Kling says no"
    assert error.user_message and error.user_message.endswith(".")
