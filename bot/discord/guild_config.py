"""A server's rules and defaults, as stored in its guild config (a JSON object).

Keys: ``allowed_channels`` (list of channel ids; empty = every channel), ``max_active`` (a
member's tasks not yet finished at Kling), ``daily_limit`` (a member's tasks per 24 h),
``blocked_words`` (list), ``moderator_role_id``, ``defaults`` (the options a member leaves out:
``image_model``, ``image_aspect_ratio``, ``image_count``, ``video_mode``, ``video_duration``,
``video_aspect_ratio``). A missing limit uses the server-wide setting (MEMBER_MAX_ACTIVE,
MEMBER_DAILY_LIMIT); 0 means no limit. A missing default uses the server-wide setting, else
Kling's own default. The allowed values come from ``bot.kling.options``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from bot.discord.context import DiscordApp
from bot.kling.options import (
    DEFAULT_IMAGE_ASPECT_RATIO,
    DEFAULT_IMAGE_COUNT,
    DEFAULT_IMAGE_MODEL,
    DEFAULT_VIDEO_ASPECT_RATIO,
    DEFAULT_VIDEO_DURATION,
    DEFAULT_VIDEO_MODE,
    DEFAULT_VIDEO_MODEL,
    IMAGE_ASPECT_RATIOS,
    IMAGE_COUNT_MAX,
    IMAGE_COUNT_MIN,
    IMAGE_MODELS,
    VIDEO_ASPECT_RATIOS,
    VIDEO_DURATIONS,
    VIDEO_MODES,
)

# Used where no Settings are at hand; the bot passes MEMBER_MAX_ACTIVE / MEMBER_DAILY_LIMIT.
DEFAULT_MAX_ACTIVE = 3
DEFAULT_DAILY_LIMIT = 50
IMAGE_COUNTS = range(IMAGE_COUNT_MIN, IMAGE_COUNT_MAX + 1)


def first_set(*values: Any) -> Any:
    return next((value for value in values if value is not None), None)


def _one_of(value: Any, allowed: Iterable[Any]) -> Any:
    # A stored value Kling no longer takes (a retired model) must not break every command.
    return value if value in tuple(allowed) else None


@dataclass(slots=True)
class GenerationDefaults:
    """A guild's values for the options a member leaves out; None: the server-wide default."""

    image_model: str | None = None
    image_aspect_ratio: str | None = None
    image_count: int | None = None
    video_mode: str | None = None
    video_duration: str | None = None
    video_aspect_ratio: str | None = None

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> GenerationDefaults:
        raw = raw or {}
        return cls(
            image_model=_one_of(raw.get("image_model"), IMAGE_MODELS),
            image_aspect_ratio=_one_of(raw.get("image_aspect_ratio"), IMAGE_ASPECT_RATIOS),
            image_count=_one_of(raw.get("image_count"), IMAGE_COUNTS),
            video_mode=_one_of(raw.get("video_mode"), VIDEO_MODES),
            video_duration=_one_of(raw.get("video_duration"), VIDEO_DURATIONS),
            video_aspect_ratio=_one_of(raw.get("video_aspect_ratio"), VIDEO_ASPECT_RATIOS),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def image_options(
        self,
        *,
        count: int | None,
        aspect_ratio: str | None,
        model: str | None,
        server_model: str | None,
    ) -> dict[str, Any]:
        """Image parameters: the member's option, else this guild's default, else the
        server-wide setting, else Kling's default. Stored resolved, so Again repeats them."""
        return {
            "n": first_set(count, self.image_count, DEFAULT_IMAGE_COUNT),
            "aspect_ratio": first_set(
                aspect_ratio, self.image_aspect_ratio, DEFAULT_IMAGE_ASPECT_RATIO
            ),
            "model_name": first_set(model, self.image_model, server_model, DEFAULT_IMAGE_MODEL),
        }

    def video_options(
        self, *, mode: str | None, duration: str | None, aspect_ratio: str | None
    ) -> dict[str, Any]:
        """Video parameters, resolved like ``image_options``."""
        return {
            "mode": first_set(mode, self.video_mode, DEFAULT_VIDEO_MODE),
            "duration": first_set(duration, self.video_duration, DEFAULT_VIDEO_DURATION),
            "aspect_ratio": first_set(
                aspect_ratio, self.video_aspect_ratio, DEFAULT_VIDEO_ASPECT_RATIO
            ),
            "model_name": DEFAULT_VIDEO_MODEL,
        }


@dataclass(slots=True)
class GuildConfig:
    allowed_channels: list[int] = field(default_factory=list)
    max_active: int = DEFAULT_MAX_ACTIVE
    daily_limit: int = DEFAULT_DAILY_LIMIT
    blocked_words: list[str] = field(default_factory=list)
    moderator_role_id: int | None = None
    defaults: GenerationDefaults = field(default_factory=GenerationDefaults)

    @classmethod
    def from_dict(
        cls,
        raw: dict[str, Any] | None,
        *,
        max_active: int = DEFAULT_MAX_ACTIVE,
        daily_limit: int = DEFAULT_DAILY_LIMIT,
    ) -> GuildConfig:
        """The guild's stored config; limits it never set come from the server-wide defaults."""
        raw = raw or {}

        def limit(key: str, default: int) -> int:
            value = raw.get(key)
            return default if value is None else int(value)

        role = raw.get("moderator_role_id")
        return cls(
            allowed_channels=[int(c) for c in raw.get("allowed_channels") or []],
            max_active=limit("max_active", max_active),
            daily_limit=limit("daily_limit", daily_limit),
            blocked_words=[str(w) for w in raw.get("blocked_words") or []],
            moderator_role_id=int(role) if role else None,
            defaults=GenerationDefaults.from_dict(raw.get("defaults")),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "allowed_channels": list(self.allowed_channels),
            "max_active": self.max_active,
            "daily_limit": self.daily_limit,
            "blocked_words": list(self.blocked_words),
            "moderator_role_id": self.moderator_role_id,
            "defaults": self.defaults.to_dict(),
        }


async def load_guild_config(app: DiscordApp, guild_id: int | None) -> GuildConfig:
    """The server's rules, with the server-wide limits where it set none (a DM: no rules)."""
    settings = app.settings
    store = app.tracker.guild_settings
    raw = await store.get_guild_config(guild_id) if guild_id is not None else {}
    return GuildConfig.from_dict(
        raw, max_active=settings.member_max_active, daily_limit=settings.member_daily_limit
    )


async def save_guild_config(app: DiscordApp, guild_id: int, config: GuildConfig) -> None:
    await app.tracker.guild_settings.set_guild_config(guild_id, config.to_dict())
