"""What the fake records and holds: requests, fault rules, users, roles, members, channels,
guilds, messages, attachments, interactions, gateway sessions, and the error a route raises."""

from __future__ import annotations

import datetime as dt
import mimetypes
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from testing.fake_discord.constants import UPLOAD_LIMITS, MiB

if TYPE_CHECKING:
    from testing.fake_discord.fake import FakeDiscord


def iso_time(ts: float | None = None) -> str:
    return dt.datetime.fromtimestamp(ts if ts is not None else time.time(), dt.UTC).isoformat()


def guess_type(filename: str) -> str | None:
    return mimetypes.guess_type(filename)[0]


def sniff_extension(data: bytes) -> str:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return ".png"
    if data.startswith(b"\xff\xd8\xff"):
        return ".jpg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return ".gif"
    if data[4:8] == b"ftyp":
        return ".mp4"
    return ".bin"


@dataclass
class RecordedFile:
    field: str
    filename: str
    content_type: str | None
    data: bytes


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any = None
    files: list[RecordedFile] = field(default_factory=list)
    body: bytes = b""
    status: int = 0
    response: Any = None
    time: float = 0.0

    @property
    def authorization(self) -> str | None:
        return self.headers.get("Authorization")


@dataclass
class FaultRule:
    method: str
    pattern: re.Pattern[str]
    status: int
    code: int
    message: str
    remaining: int
    retry_after: float
    is_global: bool
    after_handling: bool = False
    hits: list[Recorded] = field(default_factory=list)


@dataclass
class StoredAttachment:
    id: int
    filename: str
    content_type: str | None
    data: bytes
    url: str
    description: str | None = None

    @property
    def size(self) -> int:
        return len(self.data)

    def to_payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "id": str(self.id),
            "filename": self.filename,
            "size": len(self.data),
            "url": self.url,
            "proxy_url": self.url,
        }
        if self.content_type:
            payload["content_type"] = self.content_type
        if self.description:
            payload["description"] = self.description
        return payload


@dataclass
class FakeUser:
    id: int
    name: str = "tester"
    global_name: str | None = None
    bot: bool = False
    accepts_dms: bool = True

    def to_payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "username": self.name,
            "global_name": self.global_name,
            "discriminator": "0",
            "avatar": None,
            "bot": self.bot,
            "public_flags": 0,
        }


@dataclass
class FakeRole:
    id: int
    guild_id: int
    name: str
    permissions: int = 0
    position: int = 0

    def to_payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "name": self.name,
            "permissions": str(self.permissions),
            "position": self.position,
            "color": 0,
            "colors": {"primary_color": 0},
            "hoist": False,
            "managed": False,
            "mentionable": False,
            "flags": 0,
        }


@dataclass
class FakeMember:
    user: FakeUser
    guild_id: int
    roles: list[int] = field(default_factory=list)
    permissions: int | None = None  # explicit override of computed guild permissions
    nick: str | None = None
    joined_at: str = field(default_factory=iso_time)


@dataclass
class FakeChannel:
    id: int
    guild_id: int | None
    name: str = "general"
    type: int = 0
    position: int = 0
    can_send: bool = True
    can_attach_files: bool = True
    can_read_history: bool = True
    deleted: bool = False
    recipient_id: int | None = None
    last_message_id: int | None = None

    def to_payload(self, fake: FakeDiscord) -> dict[str, Any]:
        if self.type == 1:
            recipient = fake.users.get(self.recipient_id or 0)
            return {
                "id": str(self.id),
                "type": 1,
                "last_message_id": str(self.last_message_id) if self.last_message_id else None,
                "recipients": [recipient.to_payload()] if recipient else [],
                "flags": 0,
            }
        return {
            "id": str(self.id),
            "type": self.type,
            "guild_id": str(self.guild_id),
            "name": self.name,
            "position": self.position,
            "permission_overwrites": [],
            "nsfw": False,
            "parent_id": None,
            "topic": None,
            "rate_limit_per_user": 0,
            "last_message_id": str(self.last_message_id) if self.last_message_id else None,
            "flags": 0,
        }


@dataclass
class FakeGuild:
    id: int
    name: str
    premium_tier: int
    owner_id: int
    channels: dict[int, FakeChannel] = field(default_factory=dict)
    roles: dict[int, FakeRole] = field(default_factory=dict)
    members: dict[int, FakeMember] = field(default_factory=dict)
    locale: str = "en-US"
    joined_at: str = field(default_factory=iso_time)

    @property
    def upload_limit(self) -> int:
        return UPLOAD_LIMITS.get(self.premium_tier, 10 * MiB)

    @property
    def everyone(self) -> FakeRole:
        return self.roles[self.id]


@dataclass
class FakeMessage:
    id: int
    channel_id: int
    guild_id: int | None
    author: dict[str, Any]
    content: str = ""
    embeds: list[dict[str, Any]] = field(default_factory=list)
    components: list[dict[str, Any]] = field(default_factory=list)
    attachments: list[StoredAttachment] = field(default_factory=list)
    flags: int = 0
    timestamp: str = field(default_factory=iso_time)
    edited_timestamp: str | None = None
    interaction_id: int | None = None
    webhook_id: int | None = None
    message_reference: dict[str, Any] | None = None
    tts: bool = False
    deleted: bool = False
    edits: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & 64)

    @property
    def loading(self) -> bool:
        return bool(self.flags & 128)

    def file(self, filename: str) -> StoredAttachment:
        for att in self.attachments:
            if att.filename == filename:
                return att
        raise KeyError(filename)

    def to_payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "id": str(self.id),
            "channel_id": str(self.channel_id),
            "type": 0 if self.interaction_id is None else 20,
            "author": self.author,
            "content": self.content,
            "timestamp": self.timestamp,
            "edited_timestamp": self.edited_timestamp,
            "tts": self.tts,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [a.to_payload() for a in self.attachments],
            "embeds": self.embeds,
            "components": self.components,
            "pinned": False,
            "flags": self.flags,
        }
        if self.webhook_id is not None:
            payload["webhook_id"] = str(self.webhook_id)
            payload["application_id"] = str(self.webhook_id)
        if self.message_reference is not None:
            payload["message_reference"] = self.message_reference
        payload.update(self.extra)
        return payload


@dataclass
class FakeInteraction:
    id: int
    token: str
    type: int
    payload: dict[str, Any]
    created_at: float
    guild_id: int | None
    channel_id: int
    user_id: int
    message_id: int | None = None  # component/modal interactions: the source message
    callback_type: int | None = None
    callback_data: dict[str, Any] | None = None
    callbacks: list[Recorded] = field(default_factory=list)  # every callback attempt
    original_message_id: int | None = None
    followup_ids: list[int] = field(default_factory=list)

    @property
    def acknowledged(self) -> bool:
        return self.callback_type is not None

    @property
    def modal(self) -> dict[str, Any] | None:
        return self.callback_data if self.callback_type == 9 else None


class ApiError(Exception):
    def __init__(
        self, status: int, code: int, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(f"{status} {code} {message}")
        self.status = status
        self.body: dict[str, Any] = {"message": message, "code": code}
        self.headers = headers or {}


@dataclass
class GatewaySession:
    session_id: str
    intents: int
    ws: web.WebSocketResponse | None
    seq: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    compressor: Any = None
    shard: tuple[int, int] | None = None  # [shard_id, shard_count] from IDENTIFY

    def serves(self, guild_id: int | None) -> bool:
        """Whether Discord sends this guild's events on this session: a guild lives on shard
        ``(guild_id >> 22) % shard_count``; direct messages on shard 0."""
        if self.shard is None:
            return True
        shard_id, count = self.shard
        return ((guild_id or 0) >> 22) % count == shard_id
