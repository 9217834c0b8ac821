"""Every value a Kling request option may take, defined once.

The slash-command choices, the CLI's choices, the request models, the server-defaults check and
the simulator all read these, so a new model or aspect ratio is one line here. Each set is a
``Literal`` (what the type checker and pydantic see) and the tuple of its values, in the order
members are shown them.
"""

from __future__ import annotations

from typing import Literal, get_args

ImageModel = Literal["kling-v2", "kling-v2-1"]
VideoModel = Literal["kling-v1-6"]
ImageAspectRatio = Literal["16:9", "9:16", "1:1", "4:3", "3:4", "3:2", "2:3", "21:9"]
VideoAspectRatio = Literal["16:9", "9:16", "1:1"]
VideoMode = Literal["std", "pro"]
VideoDuration = Literal["5", "10"]

IMAGE_MODELS: tuple[ImageModel, ...] = get_args(ImageModel)
VIDEO_MODELS: tuple[VideoModel, ...] = get_args(VideoModel)
IMAGE_ASPECT_RATIOS: tuple[ImageAspectRatio, ...] = get_args(ImageAspectRatio)
VIDEO_ASPECT_RATIOS: tuple[VideoAspectRatio, ...] = get_args(VideoAspectRatio)
VIDEO_MODES: tuple[VideoMode, ...] = get_args(VideoMode)
VIDEO_DURATIONS: tuple[VideoDuration, ...] = get_args(VideoDuration)

# Kling's own defaults: what applies when a request leaves the option out.
DEFAULT_IMAGE_MODEL: ImageModel = "kling-v2"
DEFAULT_VIDEO_MODEL: VideoModel = "kling-v1-6"
DEFAULT_IMAGE_ASPECT_RATIO: ImageAspectRatio = "16:9"
DEFAULT_VIDEO_ASPECT_RATIO: VideoAspectRatio = "16:9"
DEFAULT_VIDEO_MODE: VideoMode = "std"
DEFAULT_VIDEO_DURATION: VideoDuration = "5"
DEFAULT_IMAGE_COUNT = 1

IMAGE_COUNT_MIN = 1
IMAGE_COUNT_MAX = 9
MAX_PROMPT_CHARS = 2500
MAX_INPUT_IMAGES = 4
MAX_EXTERNAL_TASK_ID_CHARS = 128

# The labels of a task's input images, in the order they are sent.
SUBJECT_LABELS: tuple[str, ...] = tuple(f"subject{i}" for i in range(1, MAX_INPUT_IMAGES + 1))
IMAGE_ROLE_LABELS: tuple[str, ...] = ("scene", "style")
VIDEO_IMAGE_LABELS: tuple[str, ...] = tuple(f"image{i}" for i in range(1, MAX_INPUT_IMAGES + 1))
