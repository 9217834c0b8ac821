"""The API flavours the bot speaks: Kling's own and the gateways that re-expose it.

Every difference between them lives in this one table, so the client has no
``if provider == ...`` branches: it asks the flavour for a URL or a body. Each flavour's
address and sign-in scheme come from ``bot.config.PROVIDERS``, which the settings check needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bot.config import PROVIDERS, AuthScheme, Provider, ProviderName
from bot.kling.errors import KlingInvalidRequest
from bot.kling.models import ImageTaskRequest, TaskKind, VideoTaskRequest
from bot.text import t

__all__ = [
    "FLAVOURS",
    "IMAGE_PATH",
    "VIDEO_PATH",
    "AuthScheme",
    "Flavour",
    "ProviderName",
    "flavour_for",
]

IMAGE_PATH = "/v1/images/multi-image2image"
VIDEO_PATH = "/v1/videos/multi-image2video"


@dataclass(frozen=True, slots=True)
class Flavour:
    provider: Provider
    path_prefix: str = ""
    image_create_path: str = IMAGE_PATH
    image_query_path: str = IMAGE_PATH
    video_path: str = VIDEO_PATH
    scene_field: str = "scene_image"
    subjects_as_strings: bool = False
    min_subjects: int = 1
    supports_list: bool = True

    @property
    def name(self) -> ProviderName:
        return self.provider.name

    @property
    def default_base_url(self) -> str | None:
        return self.provider.default_base_url

    @property
    def auth(self) -> AuthScheme:
        return self.provider.auth

    def create_path(self, kind: TaskKind) -> str:
        path = self.image_create_path if kind is TaskKind.IMAGE else self.video_path
        return self.path_prefix + path

    def query_path(self, kind: TaskKind) -> str:
        """The path of one task (append ``/{id}``) and of the list."""
        path = self.image_query_path if kind is TaskKind.IMAGE else self.video_path
        return self.path_prefix + path

    def check(self, request: ImageTaskRequest | VideoTaskRequest) -> None:
        """Rules of this flavour beyond the request model's own (nothing is sent when it fails)."""
        if (
            isinstance(request, ImageTaskRequest)
            and len(request.subject_images) < self.min_subjects
        ):
            raise KlingInvalidRequest(
                t("kling.request.min_subjects", provider=self.name, count=self.min_subjects)
            )

    def image_body(self, request: ImageTaskRequest) -> dict[str, Any]:
        body = _common(request)
        body["model_name"] = request.model_name
        if self.subjects_as_strings:
            body["subject_image_list"] = list(request.subject_images)
        else:
            body["subject_image_list"] = [{"subject_image": s} for s in request.subject_images]
        if request.scene_image:
            body[self.scene_field] = request.scene_image
        if request.style_image:
            body["style_image"] = request.style_image
        body["n"] = request.n
        body["aspect_ratio"] = request.aspect_ratio
        return body

    def video_body(self, request: VideoTaskRequest) -> dict[str, Any]:
        body = _common(request)
        body["model_name"] = request.model_name
        body["image_list"] = [{"image": image} for image in request.images]
        body["mode"] = request.mode
        body["duration"] = request.duration
        body["aspect_ratio"] = request.aspect_ratio
        return body


def _common(request: ImageTaskRequest | VideoTaskRequest) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if request.prompt:
        body["prompt"] = request.prompt
    if request.negative_prompt:
        body["negative_prompt"] = request.negative_prompt
    if request.watermark is not None:
        body["watermark_info"] = {"enabled": request.watermark}
    if request.callback_url:
        body["callback_url"] = request.callback_url
    if request.external_task_id:
        body["external_task_id"] = request.external_task_id
    return body


FLAVOURS: dict[ProviderName, Flavour] = {
    # Kling's own API (seeds 002, 004): JWT signed with the access and secret keys.
    "official": Flavour(PROVIDERS["official"]),
    # Resellers that re-expose Kling under /kling with a Bearer key, as seed 001 documents them:
    # "scence_image" and subjects as plain strings. Listing is not documented, so the poller
    # queries tasks one by one.
    "gateway": Flavour(
        PROVIDERS["gateway"],
        path_prefix="/kling",
        scene_field="scence_image",
        subjects_as_strings=True,
        supports_list=False,
    ),
    # Seed 000's gateway: the same /kling prefix and Bearer key, but a "Kling native" body,
    # subjects as {"subject_image": ...} objects and "scene_image", as the official API has it.
    "gateway-native": Flavour(
        PROVIDERS["gateway-native"],
        path_prefix="/kling",
        supports_list=False,
    ),
    # CometAPI (seed 003): its own create path, 2..4 subjects, "scence_image".
    "cometapi": Flavour(
        PROVIDERS["cometapi"],
        path_prefix="/kling",
        image_create_path="/v1/images/generations",
        image_query_path="/v1/images/generations",
        scene_field="scence_image",
        min_subjects=2,
        supports_list=False,
    ),
    # The built-in simulator speaks the official flavour, JWT included, on a loopback port.
    "simulator": Flavour(PROVIDERS["simulator"]),
}


def flavour_for(name: ProviderName) -> Flavour:
    return FLAVOURS[name]
