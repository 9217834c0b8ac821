"""Every option's allowed values defined once (``bot.kling.options``) and used everywhere; a
request's options typed (``bot.kling.params``) from the command through the store to Kling."""

from __future__ import annotations

import argparse
from base64 import b64encode
from typing import Any, get_args

import aiohttp
import pytest
from pydantic import ValidationError

from bot.cli import build_parser
from bot.config import Settings
from bot.kling import options
from bot.kling.client import KlingClient
from bot.kling.errors import KlingInvalidRequest
from bot.kling.models import ImageTaskRequest, TaskKind, VideoTaskRequest
from bot.kling.params import ImageParams, VideoParams, build_request, params_for
from kling_sim.simulator import KlingSimulator
from kling_sim.validation import ApiError, validate_image, validate_video
from testing.images import make_png
from testing.settings import settings_for

PNG = b64encode(make_png(400, 400)).decode()


def _choices(parser: argparse.ArgumentParser, *path: str) -> dict[str, tuple[str, ...]]:
    """The choices of every option of the subcommand at ``path`` (argparse's own records)."""
    for name in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return {a.dest: tuple(a.choices) for a in parser._actions if a.choices and a.dest != "help"}


def test_each_literal_and_its_tuple_hold_the_same_values() -> None:
    pairs = [
        (options.ImageModel, options.IMAGE_MODELS),
        (options.VideoModel, options.VIDEO_MODELS),
        (options.ImageAspectRatio, options.IMAGE_ASPECT_RATIOS),
        (options.VideoAspectRatio, options.VIDEO_ASPECT_RATIOS),
        (options.VideoMode, options.VIDEO_MODES),
        (options.VideoDuration, options.VIDEO_DURATIONS),
    ]
    for literal, values in pairs:
        assert get_args(literal) == values


def test_the_request_models_take_the_options_and_their_defaults() -> None:
    image = ImageTaskRequest(subject_images=[PNG])
    video = VideoTaskRequest(images=[PNG], prompt="a walk")
    assert (image.model_name, image.aspect_ratio, image.n) == (
        options.DEFAULT_IMAGE_MODEL,
        options.DEFAULT_IMAGE_ASPECT_RATIO,
        options.DEFAULT_IMAGE_COUNT,
    )
    assert (video.model_name, video.mode, video.duration, video.aspect_ratio) == (
        options.DEFAULT_VIDEO_MODEL,
        options.DEFAULT_VIDEO_MODE,
        options.DEFAULT_VIDEO_DURATION,
        options.DEFAULT_VIDEO_ASPECT_RATIO,
    )
    for ratio in options.IMAGE_ASPECT_RATIOS:
        assert ImageTaskRequest(subject_images=[PNG], aspect_ratio=ratio).aspect_ratio == ratio
    with pytest.raises(ValidationError):
        VideoTaskRequest(images=[PNG], prompt="x", aspect_ratio="4:3")  # an image-only ratio
    with pytest.raises(ValidationError):
        ImageTaskRequest(subject_images=[PNG], n=options.IMAGE_COUNT_MAX + 1)


def test_the_cli_offers_exactly_the_options() -> None:
    parser = build_parser()
    image = _choices(parser, "generate", "image")
    video = _choices(parser, "generate", "video")
    assert image == {
        "aspect_ratio": options.IMAGE_ASPECT_RATIOS,
        "model": options.IMAGE_MODELS,
    }
    assert video == {
        "mode": options.VIDEO_MODES,
        "duration": options.VIDEO_DURATIONS,
        "aspect_ratio": options.VIDEO_ASPECT_RATIOS,
    }
    defaults = parser.parse_args(["generate", "video", "--image", "a.png", "--prompt", "x"])
    assert (defaults.mode, defaults.duration, defaults.aspect_ratio) == (
        options.DEFAULT_VIDEO_MODE,
        options.DEFAULT_VIDEO_DURATION,
        options.DEFAULT_VIDEO_ASPECT_RATIO,
    )


def test_the_simulator_accepts_exactly_the_options() -> None:
    def image_body(**extra: Any) -> dict[str, Any]:
        return {"subject_image_list": [{"subject_image": PNG}], **extra}

    def video_body(**extra: Any) -> dict[str, Any]:
        return {"image_list": [{"image": PNG}], "prompt": "a walk", **extra}

    for model in options.IMAGE_MODELS:
        validate_image(image_body(model_name=model), "official")
    for ratio in options.IMAGE_ASPECT_RATIOS:
        assert validate_image(image_body(aspect_ratio=ratio), "official")["aspect_ratio"] == ratio
    for mode in options.VIDEO_MODES:
        assert validate_video(video_body(mode=mode), "official")["mode"] == mode
    for duration in options.VIDEO_DURATIONS:
        assert validate_video(video_body(duration=duration), "official")["duration"] == duration
    refused = [
        (validate_image, image_body(model_name="kling-v9")),
        (validate_image, image_body(n=options.IMAGE_COUNT_MAX + 1)),
        (validate_video, video_body(aspect_ratio="21:9")),
        (validate_video, video_body(mode="max")),
        (validate_video, video_body(duration="7")),
        (validate_video, video_body(model_name=options.DEFAULT_IMAGE_MODEL)),
    ]
    for validate, body in refused:
        with pytest.raises(ApiError) as caught:
            validate(body, "official")
        assert caught.value.code == 1201


def test_the_settings_default_image_model_is_klings_default() -> None:
    assert Settings(_env_file=None).kling_image_model == options.DEFAULT_IMAGE_MODEL


# --- typed parameters ------------------------------------------------------------------------

# Rows as the bot has always stored them (the cogs' dicts, None left out).
IMAGE_ROW = {"prompt": "a cat", "n": 3, "aspect_ratio": "1:1", "model_name": "kling-v2-1"}
VIDEO_ROW = {
    "prompt": "the cat walks",
    "mode": "pro",
    "duration": "10",
    "aspect_ratio": "9:16",
    "model_name": "kling-v1-6",
}


@pytest.mark.parametrize(("kind", "row"), [("image", IMAGE_ROW), ("video", VIDEO_ROW)])
def test_stored_params_read_back_typed_and_store_the_same_shape(
    kind: str, row: dict[str, Any]
) -> None:
    params = params_for(TaskKind(kind), row)
    assert isinstance(params, ImageParams if kind == "image" else VideoParams)
    assert params.model_dump(exclude_none=True) == row == params.stored()
    assert params_for(kind, {"prompt": "x"}).model_dump(exclude_none=True) == {"prompt": "x"}


def test_slots_are_the_image_count_or_one() -> None:
    assert params_for("image", IMAGE_ROW).slots == 3
    assert ImageParams().slots == 1  # n not chosen: Kling makes one
    assert params_for("video", VIDEO_ROW).slots == 1


@pytest.mark.parametrize(
    ("kind", "row"),
    [
        ("image", {"n": 0}),
        ("image", {"n": 10}),
        ("image", {"aspect_ratio": "5:4"}),
        ("image", {"model_name": "kling-v1-6"}),
        ("image", {"mode": "pro"}),  # a video option
        ("video", {"prompt": "   "}),  # blank after strip
        ("video", {}),  # a video needs a prompt
        ("video", {"prompt": "x", "aspect_ratio": "4:3"}),
        ("video", {"prompt": "x" * (options.MAX_PROMPT_CHARS + 1)}),
        ("video", {"prompt": "x", "images": ["abc"]}),  # images never live in params
    ],
)
def test_params_refuse_what_kling_would(kind: str, row: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        params_for(kind, row)


def test_build_request_places_each_image_by_its_label() -> None:
    params = params_for("image", IMAGE_ROW)
    request = build_request(
        params,
        [("subject1", "S1"), ("scene", "SC"), ("subject2", "S2"), ("style", "ST")],
        external_task_id="kb-1",
        callback_url="https://bot.example/cb",
    )
    assert isinstance(request, ImageTaskRequest)
    assert request.subject_images == ["S1", "S2"]
    assert (request.scene_image, request.style_image) == ("SC", "ST")
    assert (request.n, request.aspect_ratio, request.model_name) == (3, "1:1", "kling-v2-1")
    assert (request.external_task_id, request.callback_url) == ("kb-1", "https://bot.example/cb")
    assert request.slots == params.slots

    video = build_request(
        params_for("video", {"prompt": " go "}), [("image1", "A"), ("image2", "B")]
    )
    assert isinstance(video, VideoTaskRequest)
    assert (video.images, video.prompt) == (["A", "B"], "go")
    assert (video.mode, video.duration) == (
        options.DEFAULT_VIDEO_MODE,
        options.DEFAULT_VIDEO_DURATION,
    )

    with pytest.raises(KlingInvalidRequest, match="unknown image labels"):
        build_request(params, [("subject1", "S1"), ("image1", "X")])


async def test_the_chosen_options_reach_kling_as_chosen(simulator: KlingSimulator) -> None:
    settings = settings_for(simulator)
    images = [("subject1", PNG), ("subject2", PNG)]
    async with aiohttp.ClientSession() as session:
        client = KlingClient.from_settings(settings, session)
        image = await client.create_task(build_request(params_for("image", IMAGE_ROW), images))
        video = await client.create_task(
            build_request(params_for("video", VIDEO_ROW), [("image1", PNG)])
        )
    made = simulator.tasks[image.task_id]
    assert (made.n, made.aspect_ratio, made.prompt) == (3, "1:1", "a cat")
    assert made.request["model_name"] == "kling-v2-1" and len(made.images) == 2
    clip = simulator.tasks[video.task_id]
    assert (clip.mode, clip.duration, clip.aspect_ratio) == ("pro", "10", "9:16")
