"""In-process fake of Discord's REST API and gateway for driving the real discord.py.

One aiohttp server on 127.0.0.1 serves three things:

* ``/api/v10/...`` -- the REST routes discord.py (and its interaction webhooks) use,
* ``/gateway``      -- a websocket gateway (HELLO, IDENTIFY -> READY + GUILD_CREATE,
  heartbeats, RESUME -> RESUMED, INTERACTION_CREATE / MESSAGE_CREATE dispatches),
* ``/attachments/{id}/{filename}`` -- the bytes of every attachment the fake knows
  (interaction attachments from :meth:`FakeDiscord.add_attachment` and every file
  uploaded in a message), so ``Attachment.read()`` / aiohttp downloads work.

Pointing an unmodified discord.py at it
---------------------------------------
discord.py builds every REST URL -- including interaction callbacks, follow-ups and
``@original`` edits, which go through ``discord.webhook.async_`` but reuse
``discord.http.Route`` -- from the class attribute ``discord.http.Route.BASE``. A plain
``discord.Client``/``commands.Bot`` never asks ``GET /gateway/bot``: it connects straight
to ``discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY`` (only ``AutoShardedClient`` asks
``/gateway/bot``); after READY it uses ``resume_gateway_url`` for resumes. So both class
attributes must be patched::

    fake = FakeDiscord()
    await fake.start()
    with point_discord_py_at(fake.api_base, fake.gateway_url):
        bot = commands.Bot(command_prefix=commands.when_mentioned,
                           intents=discord.Intents.default(), guild_ready_timeout=0.05)
        task = asyncio.create_task(bot.start("fake-token"))
        ...
        await bot.close()
        await task
    await fake.close()

``guild_ready_timeout`` matters: discord.py always waits that long (default 2 s) after the
last GUILD_CREATE before firing ``on_ready``. The patch is process-global; keep the
context open for the whole life of the client (``Route`` reads ``BASE`` per request).
``fake.patch_discord_py()`` is the same context manager. ``AutoShardedClient`` works too.

Public API
----------
``FakeDiscord(*, app_id=None, bot_user_id=None, bot_name="KlingBot", token=None,
token_lifetime=900.0, ack_deadline=3.0, heartbeat_interval=41.25, compress_gateway=False)``

* ``await start()`` / ``await close()`` (or ``async with FakeDiscord() as fake``); ``api_base`` (``http://127.0.0.1:PORT/api/v10``),
  ``gateway_url`` (``ws://127.0.0.1:PORT/gateway``), ``http_base`` (``http://127.0.0.1:PORT``).
* World: ``add_guild(guild_id=None, *, name="Test Guild", premium_tier=0,
  channels=("general",), owner_id=None) -> FakeGuild`` (``channels`` items are names,
  ids, or ``(id, name)``); ``add_channel(guild_id, channel_id=None, *, name="general",
  type=0) -> FakeChannel``; ``set_channel_permissions(channel_id, *, can_send=False,
  can_attach_files=None, can_read_history=None)`` (``None``: attach follows ``can_send``,
  history stays as it was); ``delete_channel(channel_id)``; ``add_role(guild_id, *,
  name, permissions=0, role_id=None) -> FakeRole``; ``add_user(user_id=None, *,
  name="tester", global_name=None, bot=False, accepts_dms=True) -> FakeUser``;
  ``add_member(guild_id, user, *, roles=(), permissions=None, nick=None) -> FakeMember``
  (interaction ``member.permissions`` = explicit override, else owner -> all, else
  @everyone | roles, ADMINISTRATOR -> all; ``member_permissions(guild_id, user_id)``);
  ``block_dms(user_id, blocked=True)``; ``add_attachment(filename, data,
  content_type=None) -> dict`` (a resolved attachment object with loopback url);
  ``default_user`` (a FakeUser created at init), ``bot_user`` (dict), ``guilds``,
  ``channels``, ``users``.
* Interactions (each dispatches INTERACTION_CREATE over every connected gateway session
  and returns a :class:`FakeInteraction`):
  ``await send_slash_command(name, *, subcommand=None, subcommand_group=None,
  options=None, attachments=None, guild_id=None, channel_id=None, user=None,
  permissions=None, locale="en-US")`` -- ``user`` is a FakeUser, a user id, or
  ``{"id": ..., "name": ..., "permissions": "8"}`` (default ``default_user``; guild and
  channel default to the first guild's first channel); option types come from the synced command
  schema when the bot registered it (PUT .../commands), else inferred (str 3, bool 5,
  int 4, float 10); ``attachments`` maps option name to bytes, ``(filename, bytes)``,
  ``(filename, bytes, content_type)`` or a dict from ``add_attachment`` (type 11 options
  with ``data.resolved.attachments``);
  ``await click_button(*, message_id, custom_id, channel_id=None, guild_id=None,
  user=None, permissions=None, component_type=2, values=None)``;
  ``await submit_modal(*, custom_id, values, channel_id=None, guild_id=None, user=None,
  permissions=None, message_id=None)``.
* Inspection: ``requests: list[Recorded]`` (every HTTP request, in completion order,
  with ``method``, ``path`` (API-relative, e.g. ``/channels/1/messages``), ``query``,
  ``headers``, ``json`` (JSON body or ``payload_json``), ``files`` (``RecordedFile``:
  ``field``, ``filename``, ``content_type`` as sent, ``data``), ``status``,
  ``response``, ``time``); ``unknown_requests``; ``requests_to(method, path_regex)``;
  ``messages(channel_id) -> list[FakeMessage]`` (not deleted, incl. interaction
  responses/follow-ups; attachments carry the real bytes); ``message(message_id)``;
  ``interactions``; ``original_message(interaction)``; ``followups(interaction)``;
  ``commands(guild_id=None)`` (what the bot synced); ``gateway_received`` (client
  gateway payloads); ``identify_payloads``; ``gateway_connections`` (ws query strings).
* Hooks: ``request_hooks: list[Callable[[Recorded], None]]`` -- called synchronously with
  every recorded request (status and response filled in) before its answer is sent, e.g. to
  SIGKILL a bot process in the window between "Discord stored the post" and "the bot knows".
* Waiting: ``await wait_for(predicate=None, *, method=None, path=None, status=None,
  timeout=10.0, since=0) -> Recorded`` (``path`` is a full-match regex; already recorded
  requests from index ``since`` count); ``await wait_for_message(channel_id=None, *,
  predicate=None, timeout=10.0, since_id=0) -> FakeMessage``; ``await
  wait_for_callback(interaction, timeout=10.0) -> dict``; ``await
  wait_until_ready(timeout=10.0)`` (a session got READY).
* Faults: ``fail_next(method, path_regex, status, *, code=0, message=None, count=1,
  retry_after=0.05, is_global=False) -> FaultRule`` (``method`` ``"*"`` matches all;
  429s carry ``retry_after``/``global`` and ``X-RateLimit-*``, ``Retry-After`` and
  ``Via`` headers -- discord.py treats a 429 *without* ``Via`` as a Cloudflare ban and
  raises instead of retrying); ``advance_time(seconds)`` shifts the fake clock used for
  the 3 s ack deadline (404 10062) and the token lifetime (401 50027);
  ``expire_interaction(interaction)``; ``await request_reconnect()`` (op 7, the client
  RESUMEs); ``await dispatch(event, data)`` (any raw gateway DISPATCH); ``snowflake()``.

Built-in Discord behaviour: a second callback -> 400 40060; unknown/expired webhook
token -> 401 50027; follow-up before the callback -> 404 10015; unknown/deleted channel
-> 404 10003; ``can_send=False`` -> 403 50013 on message creation (and
``can_attach_files=False`` when files are attached); DM to a user refusing DMs -> 403
50007; any uploaded file above the guild limit (10 MiB; tier 2 50 MiB; tier 3 100 MiB;
DMs 10 MiB) -> 413 40005; ``GET /channels/{id}/messages`` (history: ``limit`` 1..100,
default 50, and one of ``before``/``after``/``around``; newest first like Discord; never
ephemeral or deleted messages; ``can_read_history=False`` -> 403 50001); ``GET
/users/{id}`` (unknown -> 404 10013); unknown paths -> 404 ``{"message": "404: Not Found", "code":
0}`` (wrong method on a known path -> 405; both land in ``unknown_requests``). Callbacks
honour ``?with_response=1`` (discord.py always sends it) with an InteractionCallback body.
discord.py uploads every file as ``application/octet-stream``; like Discord, the fake
derives the stored attachment ``content_type`` from the filename.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import mimetypes
import re
import secrets
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import yarl
from aiohttp import WSMsgType, web

__all__ = [
    "FakeChannel",
    "FakeDiscord",
    "FakeGuild",
    "FakeInteraction",
    "FakeMember",
    "FakeMessage",
    "FakeRole",
    "FakeUser",
    "FaultRule",
    "Recorded",
    "RecordedFile",
    "StoredAttachment",
    "point_discord_py_at",
]

DISCORD_EPOCH_MS = 1420070400000
API_PREFIX = "/api/v10"
MiB = 1024 * 1024

# Permission bits used by the fake.
P_ADMINISTRATOR = 1 << 3
P_ADD_REACTIONS = 1 << 6
P_VIEW_CHANNEL = 1 << 10
P_SEND_MESSAGES = 1 << 11
P_EMBED_LINKS = 1 << 14
P_ATTACH_FILES = 1 << 15
P_READ_MESSAGE_HISTORY = 1 << 16
P_USE_EXTERNAL_EMOJIS = 1 << 18
P_USE_APPLICATION_COMMANDS = 1 << 31
P_SEND_MESSAGES_IN_THREADS = 1 << 38
ALL_PERMISSIONS = (1 << 53) - 1
DEFAULT_EVERYONE_PERMISSIONS = (
    P_ADD_REACTIONS
    | P_VIEW_CHANNEL
    | P_SEND_MESSAGES
    | P_EMBED_LINKS
    | P_ATTACH_FILES
    | P_READ_MESSAGE_HISTORY
    | P_USE_EXTERNAL_EMOJIS
    | P_USE_APPLICATION_COMMANDS
    | P_SEND_MESSAGES_IN_THREADS
)
BOT_PERMISSIONS = DEFAULT_EVERYONE_PERMISSIONS

INTENT_GUILD_MESSAGES = 1 << 9
INTENT_DIRECT_MESSAGES = 1 << 12

_UPLOAD_LIMITS = {0: 10 * MiB, 1: 10 * MiB, 2: 50 * MiB, 3: 100 * MiB}


def _iso(ts: float | None = None) -> str:
    return dt.datetime.fromtimestamp(ts if ts is not None else time.time(), dt.UTC).isoformat()


def _guess_type(filename: str) -> str | None:
    return mimetypes.guess_type(filename)[0]


def _sniff_ext(data: bytes) -> str:
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


# --------------------------------------------------------------------------- pointing


@contextlib.contextmanager
def point_discord_py_at(api_base: str, gateway_url: str | None = None) -> Iterator[None]:
    """Point discord.py's REST and gateway at ``api_base``/``gateway_url``; restore on exit.

    ``api_base`` replaces ``discord.http.Route.BASE`` (also used by interaction webhooks),
    ``gateway_url`` replaces ``discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY``. When
    ``gateway_url`` is omitted it is derived the way this fake lays out its server
    (``http://h:p/api/v10`` -> ``ws://h:p/gateway``).
    """
    from discord.gateway import DiscordWebSocket
    from discord.http import Route

    if gateway_url is None:
        base = yarl.URL(api_base)
        scheme = "wss" if base.scheme == "https" else "ws"
        gateway_url = str(base.with_scheme(scheme).with_path("/gateway"))
    old_base, old_gateway = Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY
    Route.BASE = api_base.rstrip("/")
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)
    try:
        yield
    finally:
        Route.BASE = old_base
        DiscordWebSocket.DEFAULT_GATEWAY = old_gateway


# --------------------------------------------------------------------------- records


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
    joined_at: str = field(default_factory=_iso)


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
    joined_at: str = field(default_factory=_iso)

    @property
    def upload_limit(self) -> int:
        return _UPLOAD_LIMITS.get(self.premium_tier, 10 * MiB)

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
    timestamp: str = field(default_factory=_iso)
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


class _ApiError(Exception):
    def __init__(
        self, status: int, code: int, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(f"{status} {code} {message}")
        self.status = status
        self.body: dict[str, Any] = {"message": message, "code": code}
        self.headers = headers or {}


@dataclass
class _Session:
    session_id: str
    intents: int
    ws: web.WebSocketResponse | None
    seq: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    compressor: Any = None


def _json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    if status == 204:
        return web.Response(status=204, headers=headers)
    all_headers = {"Content-Type": "application/json"}  # exactly; no charset (discord.py)
    all_headers.update(headers or {})
    return web.Response(status=status, body=json.dumps(body).encode(), headers=all_headers)


_ROUTES: list[tuple[str, str, str]] = [
    ("GET", r"/users/@me", "_r_get_me"),
    ("GET", r"/oauth2/applications/@me", "_r_get_application"),
    ("GET", r"/applications/@me", "_r_get_application"),
    ("GET", r"/gateway", "_r_get_gateway"),
    ("GET", r"/gateway/bot", "_r_get_gateway_bot"),
    ("POST", r"/interactions/(?P<iid>\d+)/(?P<token>[^/]+)/callback", "_r_callback"),
    ("POST", r"/webhooks/(?P<app_id>\d+)/(?P<token>[^/]+)", "_r_followup"),
    (
        "GET",
        r"/webhooks/(?P<app_id>\d+)/(?P<token>[^/]+)/messages/(?P<mid>@original|\d+)",
        "_r_wh_get",
    ),
    (
        "PATCH",
        r"/webhooks/(?P<app_id>\d+)/(?P<token>[^/]+)/messages/(?P<mid>@original|\d+)",
        "_r_wh_edit",
    ),
    (
        "DELETE",
        r"/webhooks/(?P<app_id>\d+)/(?P<token>[^/]+)/messages/(?P<mid>@original|\d+)",
        "_r_wh_delete",
    ),
    ("GET", r"/users/(?P<uid>\d+)", "_r_get_user"),
    ("GET", r"/channels/(?P<cid>\d+)", "_r_get_channel"),
    ("GET", r"/channels/(?P<cid>\d+)/messages", "_r_list_messages"),
    ("POST", r"/channels/(?P<cid>\d+)/messages", "_r_create_message"),
    ("GET", r"/channels/(?P<cid>\d+)/messages/(?P<mid>\d+)", "_r_get_message"),
    ("PATCH", r"/channels/(?P<cid>\d+)/messages/(?P<mid>\d+)", "_r_edit_message"),
    ("DELETE", r"/channels/(?P<cid>\d+)/messages/(?P<mid>\d+)", "_r_delete_message"),
    ("POST", r"/channels/(?P<cid>\d+)/typing", "_r_typing"),
    ("POST", r"/users/@me/channels", "_r_create_dm"),
    ("GET", r"/applications/(?P<app_id>\d+)/commands", "_r_get_commands"),
    ("PUT", r"/applications/(?P<app_id>\d+)/commands", "_r_put_commands"),
    ("GET", r"/applications/(?P<app_id>\d+)/guilds/(?P<gid>\d+)/commands", "_r_get_commands"),
    ("PUT", r"/applications/(?P<app_id>\d+)/guilds/(?P<gid>\d+)/commands", "_r_put_commands"),
]
_COMPILED_ROUTES = [(m, re.compile(p), h) for m, p, h in _ROUTES]


class FakeDiscord:
    """A loopback Discord (REST + gateway + attachment CDN). See the module docstring."""

    def __init__(
        self,
        *,
        app_id: int | None = None,
        bot_user_id: int | None = None,
        bot_name: str = "KlingBot",
        token: str | None = None,
        token_lifetime: float = 900.0,
        ack_deadline: float = 3.0,
        heartbeat_interval: float = 41.25,
        compress_gateway: bool = False,
    ) -> None:
        self._last_snowflake = 0
        self.app_id = app_id or self.snowflake()
        self.bot_user_id = bot_user_id or self.app_id
        self.token = token
        self.token_lifetime = token_lifetime
        self.ack_deadline = ack_deadline
        self.heartbeat_interval = heartbeat_interval
        self.compress_gateway = compress_gateway
        self.bot = FakeUser(self.bot_user_id, bot_name, bot=True)

        self.guilds: dict[int, FakeGuild] = {}
        self.channels: dict[int, FakeChannel] = {}
        self.users: dict[int, FakeUser] = {self.bot.id: self.bot}
        self.attachments: dict[int, StoredAttachment] = {}
        self.interactions: list[FakeInteraction] = []
        self._interactions_by_id: dict[int, FakeInteraction] = {}
        self._interactions_by_token: dict[str, FakeInteraction] = {}
        self._messages: dict[int, FakeMessage] = {}
        self._global_commands: list[dict[str, Any]] = []
        self._guild_commands: dict[int, list[dict[str, Any]]] = {}
        self._dm_channels: dict[int, int] = {}  # user id -> channel id

        self.requests: list[Recorded] = []
        self.unknown_requests: list[Recorded] = []
        self.faults: list[FaultRule] = []
        self.request_hooks: list[Callable[[Recorded], None]] = []
        self.gateway_received: list[dict[str, Any]] = []
        self.identify_payloads: list[dict[str, Any]] = []
        self.gateway_connections: list[dict[str, str]] = []  # query of each ws connect
        self._sessions: dict[str, _Session] = {}
        self._time_offset = 0.0
        self._waiters: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []

        self.default_user = self.add_user(name="tester", global_name="Tester")

        self._runner: web.AppRunner | None = None
        self._ws_responses: set[web.WebSocketResponse] = set()
        self.port = 0

    # ------------------------------------------------------------------ lifecycle

    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base(self) -> str:
        return f"{self.http_base}{API_PREFIX}"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    def patch_discord_py(self) -> contextlib.AbstractContextManager[None]:
        """Shorthand for ``point_discord_py_at(self.api_base, self.gateway_url)``."""
        return point_discord_py_at(self.api_base, self.gateway_url)

    async def start(self) -> None:
        app = web.Application(client_max_size=512 * MiB)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def close(self) -> None:
        for ws in list(self._ws_responses):
            with contextlib.suppress(Exception):
                await ws.close(code=1001)
        for _, fut in self._waiters:
            if not fut.done():
                fut.cancel()
        self._waiters.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeDiscord:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ ids and time

    def snowflake(self) -> int:
        ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
        value = (ms << 22) | (1 << 17)
        if value <= self._last_snowflake:
            value = self._last_snowflake + 1
        self._last_snowflake = value
        return value

    def now(self) -> float:
        """The fake clock (monotonic + ``advance_time`` offset)."""
        return time.monotonic() + self._time_offset

    def advance_time(self, seconds: float) -> None:
        self._time_offset += seconds

    def expire_interaction(self, interaction: FakeInteraction) -> None:
        interaction.created_at = self.now() - self.token_lifetime - 1.0

    # ------------------------------------------------------------------ world building

    @property
    def bot_user(self) -> dict[str, Any]:
        return self.bot.to_payload()

    def add_user(
        self,
        user_id: int | None = None,
        *,
        name: str = "tester",
        global_name: str | None = None,
        bot: bool = False,
        accepts_dms: bool = True,
    ) -> FakeUser:
        user = FakeUser(user_id or self.snowflake(), name, global_name, bot, accepts_dms)
        self.users[user.id] = user
        return user

    def block_dms(self, user_id: int, blocked: bool = True) -> None:
        self._user(user_id).accepts_dms = not blocked

    def add_guild(
        self,
        guild_id: int | None = None,
        *,
        name: str = "Test Guild",
        premium_tier: int = 0,
        channels: Iterable[str | int | tuple[int, str]] = ("general",),
        owner_id: int | None = None,
    ) -> FakeGuild:
        gid = guild_id or self.snowflake()
        owner = owner_id or self.snowflake()
        if owner not in self.users:
            self.add_user(owner, name="owner")
        guild = FakeGuild(gid, name, premium_tier, owner)
        guild.roles[gid] = FakeRole(gid, gid, "@everyone", DEFAULT_EVERYONE_PERMISSIONS)
        self.guilds[gid] = guild
        self.add_member(gid, self.bot, permissions=BOT_PERMISSIONS)
        self.add_member(gid, owner)
        for spec in channels:
            if isinstance(spec, tuple):
                self.add_channel(gid, spec[0], name=spec[1])
            elif isinstance(spec, int):
                self.add_channel(gid, spec, name=f"channel-{len(guild.channels)}")
            else:
                self.add_channel(gid, name=spec)
        return guild

    def add_channel(
        self, guild_id: int, channel_id: int | None = None, *, name: str = "general", type: int = 0
    ) -> FakeChannel:
        guild = self.guilds[guild_id]
        channel = FakeChannel(
            channel_id or self.snowflake(), guild_id, name, type, len(guild.channels)
        )
        guild.channels[channel.id] = channel
        self.channels[channel.id] = channel
        return channel

    def set_channel_permissions(
        self,
        channel_id: int,
        *,
        can_send: bool = False,
        can_attach_files: bool | None = None,
        can_read_history: bool | None = None,
    ) -> None:
        channel = self.channels[channel_id]
        channel.can_send = can_send
        channel.can_attach_files = can_send if can_attach_files is None else can_attach_files
        if can_read_history is not None:
            channel.can_read_history = can_read_history

    def delete_channel(self, channel_id: int) -> None:
        self.channels[channel_id].deleted = True

    def add_role(
        self, guild_id: int, *, name: str, permissions: int = 0, role_id: int | None = None
    ) -> FakeRole:
        guild = self.guilds[guild_id]
        role = FakeRole(role_id or self.snowflake(), guild_id, name, permissions, len(guild.roles))
        guild.roles[role.id] = role
        return role

    def add_member(
        self,
        guild_id: int,
        user: FakeUser | int,
        *,
        roles: Iterable[int | FakeRole] = (),
        permissions: int | str | None = None,
        nick: str | None = None,
    ) -> FakeMember:
        fake_user = user if isinstance(user, FakeUser) else self._user(user)
        self.users.setdefault(fake_user.id, fake_user)
        member = FakeMember(
            fake_user,
            guild_id,
            [r.id if isinstance(r, FakeRole) else int(r) for r in roles],
            int(permissions) if permissions is not None else None,
            nick,
        )
        self.guilds[guild_id].members[fake_user.id] = member
        return member

    def member_permissions(self, guild_id: int, user_id: int) -> int:
        guild = self.guilds[guild_id]
        member = guild.members.get(user_id)
        if member is not None and member.permissions is not None:
            return member.permissions
        if user_id == guild.owner_id:
            return ALL_PERMISSIONS
        perms = guild.everyone.permissions
        for role_id in member.roles if member else ():
            role = guild.roles.get(role_id)
            if role is not None:
                perms |= role.permissions
        return ALL_PERMISSIONS if perms & P_ADMINISTRATOR else perms

    def add_attachment(
        self, filename: str, data: bytes, content_type: str | None = None
    ) -> dict[str, Any]:
        """Store ``data`` on the fake CDN and return a Discord attachment object for it."""
        return self._store_attachment(filename, data, content_type).to_payload()

    def _store_attachment(
        self,
        filename: str,
        data: bytes,
        content_type: str | None = None,
        description: str | None = None,
    ) -> StoredAttachment:
        att_id = self.snowflake()
        url = f"{self.http_base}/attachments/{att_id}/{filename}"
        att = StoredAttachment(
            att_id, filename, content_type or _guess_type(filename), bytes(data), url, description
        )
        self.attachments[att_id] = att
        return att

    def _user(self, user_id: int) -> FakeUser:
        user = self.users.get(user_id)
        if user is None:
            user = self.add_user(user_id, name=f"user{user_id}")
        return user

    # ------------------------------------------------------------------ inspection

    def messages(self, channel_id: int) -> list[FakeMessage]:
        return [m for m in self._messages.values() if m.channel_id == channel_id and not m.deleted]

    def message(self, message_id: int) -> FakeMessage:
        return self._messages[message_id]

    def original_message(self, interaction: FakeInteraction) -> FakeMessage | None:
        mid = interaction.original_message_id
        return self._messages.get(mid) if mid is not None else None

    def followups(self, interaction: FakeInteraction) -> list[FakeMessage]:
        return [self._messages[i] for i in interaction.followup_ids]

    def commands(self, guild_id: int | None = None) -> list[dict[str, Any]]:
        if guild_id is None:
            return list(self._global_commands)
        return list(self._guild_commands.get(guild_id, []))

    def requests_to(self, method: str, path_regex: str) -> list[Recorded]:
        pattern = re.compile(path_regex)
        return [
            r
            for r in self.requests
            if (method == "*" or r.method == method.upper()) and pattern.fullmatch(r.path)
        ]

    # ------------------------------------------------------------------ waiting

    def _notify(self) -> None:
        for check, fut in list(self._waiters):
            if fut.done():
                self._waiters.remove((check, fut))
                continue
            try:
                result = check()
            except Exception as exc:
                fut.set_exception(exc)
                continue
            if result is not None:
                fut.set_result(result)
        self._waiters = [(c, f) for c, f in self._waiters if not f.done()]

    async def _wait(self, check: Callable[[], Any], timeout: float, what: str) -> Any:  # noqa: ASYNC109
        result = check()
        if result is not None:
            return result
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        entry = (check, fut)
        self._waiters.append(entry)
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            recent = [f"{r.method} {r.path} -> {r.status}" for r in self.requests[-10:]]
            raise TimeoutError(f"timed out waiting for {what}; recent requests: {recent}") from None
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)

    async def wait_for(
        self,
        predicate: Callable[[Recorded], bool] | None = None,
        *,
        method: str | None = None,
        path: str | None = None,
        status: int | None = None,
        timeout: float = 10.0,  # noqa: ASYNC109
        since: int = 0,
    ) -> Recorded:
        """Return the first recorded request (from index ``since``) matching all filters."""
        pattern = re.compile(path) if path is not None else None

        def matches(r: Recorded) -> bool:
            if method is not None and r.method != method.upper():
                return False
            if pattern is not None and not pattern.fullmatch(r.path):
                return False
            if status is not None and r.status != status:
                return False
            return predicate is None or bool(predicate(r))

        def check() -> Recorded | None:
            return next((r for r in self.requests[since:] if matches(r)), None)

        return await self._wait(check, timeout, f"request method={method} path={path}")

    async def wait_for_message(
        self,
        channel_id: int | None = None,
        *,
        predicate: Callable[[FakeMessage], bool] | None = None,
        timeout: float = 10.0,  # noqa: ASYNC109
        since_id: int = 0,
    ) -> FakeMessage:
        """Return the first stored message (id > ``since_id``) matching the filters."""

        def check() -> FakeMessage | None:
            for m in self._messages.values():
                if m.deleted or m.id <= since_id:
                    continue
                if channel_id is not None and m.channel_id != channel_id:
                    continue
                if predicate is None or predicate(m):
                    return m
            return None

        return await self._wait(check, timeout, f"message in channel {channel_id}")

    async def wait_for_callback(
        self,
        interaction: FakeInteraction,
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> dict[str, Any]:
        """Wait until the bot acknowledged ``interaction``; returns the callback body."""

        def check() -> dict[str, Any] | None:
            if interaction.callback_type is None:
                return None
            return {"type": interaction.callback_type, "data": interaction.callback_data}

        return await self._wait(check, timeout, f"callback for interaction {interaction.id}")

    async def wait_until_ready(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        def check() -> bool | None:
            return (
                True
                if any(s.ws is not None and not s.ws.closed for s in self._sessions.values())
                else None
            )

        await self._wait(check, timeout, "a READY gateway session")

    # ------------------------------------------------------------------ faults

    def fail_next(
        self,
        method: str,
        path_regex: str,
        status: int,
        *,
        code: int = 0,
        message: str | None = None,
        count: int = 1,
        retry_after: float = 0.05,
        is_global: bool = False,
        after_handling: bool = False,
    ) -> FaultRule:
        """Answer the next ``count`` requests whose API-relative path full-matches.

        ``after_handling``: carry the request out first (a message is stored), then answer with
        the error anyway, like a Discord whose answer is lost after it did the work.
        """
        default_messages = {
            429: "You are being rate limited.",
            500: "500: Internal Server Error",
            502: "502: Bad Gateway",
            403: "Missing Permissions",
            404: "404: Not Found",
        }
        rule = FaultRule(
            method.upper(),
            re.compile(path_regex),
            status,
            code,
            message or default_messages.get(status, f"{status}: Error"),
            count,
            retry_after,
            is_global,
            after_handling,
        )
        self.faults.append(rule)
        return rule

    def _match_fault(self, rec: Recorded, *, after: bool = False) -> web.Response | None:
        for rule in self.faults:
            if rule.remaining <= 0 or rule.after_handling is not after:
                continue
            if rule.method not in ("*", rec.method) or not rule.pattern.fullmatch(rec.path):
                continue
            rule.remaining -= 1
            rule.hits.append(rec)
            body: dict[str, Any] = {"message": rule.message, "code": rule.code}
            headers: dict[str, str] = {}
            if rule.status == 429:
                body.update(retry_after=rule.retry_after, **{"global": rule.is_global})
                headers = {
                    "Retry-After": str(max(1, round(rule.retry_after))),
                    "X-RateLimit-Limit": "5",
                    "X-RateLimit-Remaining": "0",
                    "X-RateLimit-Reset": f"{time.time() + rule.retry_after:.3f}",
                    "X-RateLimit-Reset-After": f"{rule.retry_after:.3f}",
                    "X-RateLimit-Bucket": "fakebucket"
                    + str(abs(hash(rule.pattern.pattern)) % 10**8),
                    "X-RateLimit-Scope": "global" if rule.is_global else "user",
                    "Via": "1.1 google",
                }
                if rule.is_global:
                    headers["X-RateLimit-Global"] = "true"
            rec.status, rec.response = rule.status, body
            return _json_response(rule.status, body, headers)
        return None

    # ------------------------------------------------------------------ HTTP plumbing

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/gateway":
            return await self._gateway(request)
        full_path = request.path
        rel = full_path[len(API_PREFIX) :] if full_path.startswith(API_PREFIX + "/") else full_path
        rec = Recorded(
            method=request.method,
            path=rel,
            query=dict(request.query),
            headers=dict(request.headers),
            time=self.now(),
        )
        await self._parse_body(request, rec)
        response = self._match_fault(rec)
        if response is None:
            response = await self._dispatch(request, rec, full_path)
            response = self._match_fault(rec, after=True) or response
        self.requests.append(rec)
        for hook in list(self.request_hooks):
            hook(rec)
        self._notify()
        return response

    async def _parse_body(self, request: web.Request, rec: Recorded) -> None:
        if not request.body_exists:
            return
        ctype = request.content_type
        if ctype.startswith("multipart/"):
            reader = await request.multipart()
            async for part in reader:
                if part is None or not hasattr(part, "read"):
                    continue
                data = bytes(await part.read(decode=False))  # type: ignore[union-attr]
                name = part.name or ""
                if name == "payload_json":
                    rec.json = json.loads(data)
                elif part.filename is not None:
                    rec.files.append(
                        RecordedFile(name, part.filename, part.headers.get("Content-Type"), data)
                    )
                else:
                    rec.json = rec.json or {}
                    rec.json[name] = data.decode()
            return
        rec.body = await request.read()
        if rec.body and "json" in ctype:
            rec.json = json.loads(rec.body)

    async def _dispatch(self, request: web.Request, rec: Recorded, full_path: str) -> web.Response:
        try:
            if full_path.startswith("/attachments/"):
                return self._serve_attachment(rec, full_path)
            if not full_path.startswith(API_PREFIX + "/"):
                raise _ApiError(404, 0, "404: Not Found")
            path_matched = False
            for method, pattern, handler_name in _COMPILED_ROUTES:
                m = pattern.fullmatch(rec.path)
                if m is None:
                    continue
                path_matched = True
                if method != rec.method:
                    continue
                status, body = await getattr(self, handler_name)(rec, **m.groupdict())
                rec.status, rec.response = status, body
                return _json_response(status, body)
            if path_matched:
                raise _ApiError(405, 0, "405: Method Not Allowed")
            raise _ApiError(404, 0, "404: Not Found")
        except _ApiError as exc:
            rec.status, rec.response = exc.status, exc.body
            if exc.body["code"] == 0 and exc.status in (404, 405):
                self.unknown_requests.append(rec)
            return _json_response(exc.status, exc.body, exc.headers)

    def _serve_attachment(self, rec: Recorded, full_path: str) -> web.Response:
        m = re.fullmatch(r"/attachments/(\d+)/([^/]+)", full_path)
        att = self.attachments.get(int(m.group(1))) if m else None
        if att is None or rec.method not in ("GET", "HEAD"):
            raise _ApiError(404, 0, "404: Not Found")
        rec.status = 200
        return web.Response(
            body=att.data, content_type=att.content_type or "application/octet-stream"
        )

    def _require_bot_auth(self, rec: Recorded) -> None:
        auth = rec.authorization or ""
        if not auth.startswith("Bot ") or (self.token is not None and auth != f"Bot {self.token}"):
            raise _ApiError(401, 0, "401: Unauthorized")

    # ------------------------------------------------------------------ REST handlers

    async def _r_get_me(self, rec: Recorded) -> tuple[int, Any]:
        self._require_bot_auth(rec)
        return 200, {**self.bot.to_payload(), "verified": True, "mfa_enabled": False, "flags": 0}

    async def _r_get_application(self, rec: Recorded) -> tuple[int, Any]:
        self._require_bot_auth(rec)
        owner = self.users[next(iter(self.guilds.values())).owner_id] if self.guilds else self.bot
        return 200, {
            "id": str(self.app_id),
            "name": self.bot.name,
            "icon": None,
            "description": "",
            "summary": "",
            "bot_public": True,
            "bot_require_code_grant": False,
            "owner": owner.to_payload(),
            "team": None,
            "verify_key": "0" * 64,
            "flags": 0,
            "bot": self.bot.to_payload(),
            "redirect_uris": [],
            "interactions_endpoint_url": None,
        }

    async def _r_get_gateway(self, rec: Recorded) -> tuple[int, Any]:
        return 200, {"url": self.gateway_url}

    async def _r_get_gateway_bot(self, rec: Recorded) -> tuple[int, Any]:
        self._require_bot_auth(rec)
        return 200, {
            "url": self.gateway_url,
            "shards": 1,
            "session_start_limit": {
                "total": 1000,
                "remaining": 999,
                "reset_after": 0,
                "max_concurrency": 1,
            },
        }

    async def _r_get_channel(self, rec: Recorded, cid: str) -> tuple[int, Any]:
        self._require_bot_auth(rec)
        return 200, self._live_channel(int(cid)).to_payload(self)

    async def _r_create_dm(self, rec: Recorded) -> tuple[int, Any]:
        self._require_bot_auth(rec)
        recipient = int((rec.json or {}).get("recipient_id", 0))
        if recipient not in self.users:
            raise _ApiError(400, 50033, "Invalid Recipient(s)")
        cid = self._dm_channels.get(recipient)
        if cid is None:
            channel = FakeChannel(self.snowflake(), None, "", 1, recipient_id=recipient)
            self.channels[channel.id] = channel
            self._dm_channels[recipient] = cid = channel.id
        return 200, self.channels[cid].to_payload(self)

    async def _r_create_message(self, rec: Recorded, cid: str) -> tuple[int, Any]:
        self._require_bot_auth(rec)
        channel = self._live_channel(int(cid))
        if channel.type == 1:
            recipient = self.users.get(channel.recipient_id or 0)
            if recipient is None or not recipient.accepts_dms:
                raise _ApiError(403, 50007, "Cannot send messages to this user")
        elif not channel.can_send or (rec.files and not channel.can_attach_files):
            raise _ApiError(403, 50013, "Missing Permissions")
        self._check_upload_size(rec, channel)
        message = self._new_message(channel, rec.json or {}, rec.files)
        await self._dispatch_message_create(message)
        return 200, message.to_payload()

    async def _r_get_user(self, rec: Recorded, uid: str) -> tuple[int, Any]:
        self._require_bot_auth(rec)
        user = self.users.get(int(uid))
        if user is None:
            raise _ApiError(404, 10013, "Unknown User")
        return 200, user.to_payload()

    async def _r_list_messages(self, rec: Recorded, cid: str) -> tuple[int, Any]:
        """Channel history the way Discord answers it: at most ``limit`` messages, newest
        first; ``before`` the newest older ones, ``after`` the oldest newer ones, ``around``
        half on each side (the message itself included)."""
        self._require_bot_auth(rec)
        channel = self._live_channel(int(cid))
        if channel.type != 1 and not channel.can_read_history:
            raise _ApiError(403, 50001, "Missing Access")
        anchors = [k for k in ("before", "after", "around") if k in rec.query]
        try:
            limit = int(rec.query.get("limit", "50"))
            anchor = int(rec.query[anchors[0]]) if anchors else None
        except ValueError:
            raise _ApiError(400, 50035, "Invalid Form Body") from None
        if not 1 <= limit <= 100 or len(anchors) > 1:
            raise _ApiError(400, 50035, "Invalid Form Body")
        visible = sorted(
            (m for m in self.messages(channel.id) if not m.ephemeral), key=lambda m: m.id
        )
        if anchor is None:
            chosen = visible[-limit:]
        elif anchors[0] == "before":
            chosen = [m for m in visible if m.id < anchor][-limit:]
        elif anchors[0] == "after":
            chosen = [m for m in visible if m.id > anchor][:limit]
        else:
            older = [m for m in visible if m.id <= anchor][-((limit + 1) // 2) :]
            newer = [m for m in visible if m.id > anchor][: limit // 2]
            chosen = older + newer
        return 200, [m.to_payload() for m in reversed(chosen)]

    async def _r_get_message(self, rec: Recorded, cid: str, mid: str) -> tuple[int, Any]:
        self._require_bot_auth(rec)
        return 200, self._channel_message(int(cid), int(mid)).to_payload()

    async def _r_edit_message(self, rec: Recorded, cid: str, mid: str) -> tuple[int, Any]:
        self._require_bot_auth(rec)
        channel = self._live_channel(int(cid))
        message = self._channel_message(int(cid), int(mid))
        self._check_upload_size(rec, channel)
        self._apply_edit(message, rec.json or {}, rec.files)
        return 200, message.to_payload()

    async def _r_delete_message(self, rec: Recorded, cid: str, mid: str) -> tuple[int, Any]:
        self._require_bot_auth(rec)
        self._channel_message(int(cid), int(mid)).deleted = True
        return 204, None

    async def _r_typing(self, rec: Recorded, cid: str) -> tuple[int, Any]:
        self._require_bot_auth(rec)
        self._live_channel(int(cid))
        return 204, None

    async def _r_get_commands(
        self, rec: Recorded, app_id: str, gid: str | None = None
    ) -> tuple[int, Any]:
        self._require_bot_auth(rec)
        self._check_app(app_id)
        return 200, self.commands(int(gid) if gid else None)

    async def _r_put_commands(
        self, rec: Recorded, app_id: str, gid: str | None = None
    ) -> tuple[int, Any]:
        self._require_bot_auth(rec)
        self._check_app(app_id)
        existing = {c["name"]: c for c in self.commands(int(gid) if gid else None)}
        stored = []
        for cmd in rec.json or []:
            old = existing.get(cmd["name"])
            stored.append(
                {
                    "type": 1,
                    "description": "",
                    "options": [],
                    "default_member_permissions": None,
                    "dm_permission": True,
                    "nsfw": False,
                    **cmd,
                    "id": old["id"] if old else str(self.snowflake()),
                    "application_id": str(self.app_id),
                    "version": str(self.snowflake()),
                    **({"guild_id": gid} if gid else {}),
                }
            )
        if gid:
            self._guild_commands[int(gid)] = stored
        else:
            self._global_commands = stored
        return 200, stored

    def _check_app(self, app_id: str) -> None:
        if int(app_id) != self.app_id:
            raise _ApiError(403, 50001, "Missing Access")

    # -- interactions

    async def _r_callback(self, rec: Recorded, iid: str, token: str) -> tuple[int, Any]:
        interaction = self._interactions_by_id.get(int(iid))
        if interaction is None or interaction.token != token:
            raise _ApiError(404, 10062, "Unknown interaction")
        interaction.callbacks.append(rec)
        if interaction.acknowledged:
            raise _ApiError(400, 40060, "Interaction has already been acknowledged")
        if self.now() - interaction.created_at > self.ack_deadline:
            raise _ApiError(404, 10062, "Unknown interaction")
        body = rec.json or {}
        ctype = int(body.get("type", 0))
        data = body.get("data") or {}
        if ctype not in (4, 5, 6, 7, 8, 9, 12):
            raise _ApiError(400, 50035, "Invalid Form Body")
        channel = self.channels.get(interaction.channel_id)
        if ctype in (4, 7) and channel is not None:
            self._check_upload_size(rec, channel)
        interaction.callback_type, interaction.callback_data = ctype, data
        message: FakeMessage | None = None
        if ctype in (4, 5):
            flags = int(data.get("flags", 0) or 0)
            if ctype == 5:
                flags = (flags & 64) | 128
            message = self._new_message(
                self._interaction_channel(interaction),
                {**data, "flags": flags},
                rec.files,
                interaction=interaction,
            )
            interaction.original_message_id = message.id
            if not message.ephemeral:
                await self._dispatch_message_create(message)
        elif ctype in (6, 7) and interaction.message_id is not None:
            interaction.original_message_id = interaction.message_id
            message = self._messages.get(interaction.message_id)
            if ctype == 7 and message is not None:
                self._apply_edit(message, data, rec.files)
        self._notify()
        if rec.query.get("with_response") not in ("1", "true", "True"):
            return 204, None
        response: dict[str, Any] = {
            "interaction": {
                "id": str(interaction.id),
                "type": interaction.type,
                "response_message_loading": ctype == 5,
                "response_message_ephemeral": bool(message and message.ephemeral),
            }
        }
        if message is not None and ctype in (4, 5, 7):
            response["interaction"]["response_message_id"] = str(message.id)
            response["resource"] = {"type": ctype, "message": message.to_payload()}
        elif ctype in (6, 9, 8):
            response["resource"] = {"type": ctype}
        return 200, response

    def _webhook_interaction(self, app_id: str, token: str) -> FakeInteraction:
        if int(app_id) != self.app_id:
            raise _ApiError(404, 10015, "Unknown Webhook")
        interaction = self._interactions_by_token.get(token)
        if interaction is None or self.now() - interaction.created_at > self.token_lifetime:
            raise _ApiError(401, 50027, "Invalid Webhook Token")
        return interaction

    def _webhook_message(self, interaction: FakeInteraction, mid: str) -> FakeMessage:
        if mid == "@original":
            message_id = interaction.original_message_id
        else:
            message_id = int(mid)
            allowed = {interaction.original_message_id, *interaction.followup_ids}
            if message_id not in allowed:
                raise _ApiError(404, 10008, "Unknown Message")
        message = self._messages.get(message_id) if message_id is not None else None
        if message is None or message.deleted:
            raise _ApiError(404, 10008, "Unknown Message")
        return message

    async def _r_followup(self, rec: Recorded, app_id: str, token: str) -> tuple[int, Any]:
        interaction = self._webhook_interaction(app_id, token)
        if not interaction.acknowledged:
            raise _ApiError(404, 10015, "Unknown Webhook")
        channel = self._interaction_channel(interaction)
        self._check_upload_size(rec, channel)
        message = self._new_message(channel, rec.json or {}, rec.files, interaction=interaction)
        interaction.followup_ids.append(message.id)
        if not message.ephemeral:
            await self._dispatch_message_create(message)
        if rec.query.get("wait") in ("1", "true", "True"):
            return 200, message.to_payload()
        return 204, None

    async def _r_wh_get(self, rec: Recorded, app_id: str, token: str, mid: str) -> tuple[int, Any]:
        interaction = self._webhook_interaction(app_id, token)
        return 200, self._webhook_message(interaction, mid).to_payload()

    async def _r_wh_edit(self, rec: Recorded, app_id: str, token: str, mid: str) -> tuple[int, Any]:
        interaction = self._webhook_interaction(app_id, token)
        message = self._webhook_message(interaction, mid)
        self._check_upload_size(rec, self._interaction_channel(interaction))
        self._apply_edit(message, rec.json or {}, rec.files)
        return 200, message.to_payload()

    async def _r_wh_delete(
        self, rec: Recorded, app_id: str, token: str, mid: str
    ) -> tuple[int, Any]:
        interaction = self._webhook_interaction(app_id, token)
        self._webhook_message(interaction, mid).deleted = True
        return 204, None

    # -- message helpers

    def _live_channel(self, channel_id: int) -> FakeChannel:
        channel = self.channels.get(channel_id)
        if channel is None or channel.deleted:
            raise _ApiError(404, 10003, "Unknown Channel")
        return channel

    def _interaction_channel(self, interaction: FakeInteraction) -> FakeChannel:
        return self._live_channel(interaction.channel_id)

    def _channel_message(self, channel_id: int, message_id: int) -> FakeMessage:
        self._live_channel(channel_id)
        message = self._messages.get(message_id)
        if message is None or message.deleted or message.channel_id != channel_id:
            raise _ApiError(404, 10008, "Unknown Message")
        return message

    def upload_limit(self, channel: FakeChannel) -> int:
        guild = self.guilds.get(channel.guild_id or 0)
        return guild.upload_limit if guild else 10 * MiB

    def _check_upload_size(self, rec: Recorded, channel: FakeChannel) -> None:
        limit = self.upload_limit(channel)
        if any(len(f.data) > limit for f in rec.files):
            raise _ApiError(413, 40005, "Request entity too large")

    def _files_to_attachments(
        self, payload: dict[str, Any], files: Sequence[RecordedFile]
    ) -> list[StoredAttachment]:
        meta: dict[int, dict[str, Any]] = {}
        for item in payload.get("attachments") or []:
            with contextlib.suppress(TypeError, ValueError, KeyError):
                meta[int(item["id"])] = item
        stored = []
        for index, f in enumerate(files):
            m = re.fullmatch(r"files\[(\d+)\]", f.field) or re.fullmatch(r"file(\d*)", f.field)
            idx = int(m.group(1)) if m and m.group(1) else index
            info = meta.get(idx, {})
            filename = info.get("filename") or f.filename
            stored.append(
                self._store_attachment(
                    filename, f.data, _guess_type(filename), info.get("description")
                )
            )
        return stored

    def _new_message(
        self,
        channel: FakeChannel,
        payload: dict[str, Any],
        files: Sequence[RecordedFile],
        *,
        interaction: FakeInteraction | None = None,
    ) -> FakeMessage:
        message = FakeMessage(
            id=self.snowflake(),
            channel_id=channel.id,
            guild_id=channel.guild_id,
            author=self.bot.to_payload(),
            content=payload.get("content") or "",
            embeds=list(
                payload.get("embeds") or ([payload["embed"]] if payload.get("embed") else [])
            ),
            components=list(payload.get("components") or []),
            attachments=self._files_to_attachments(payload, files),
            flags=int(payload.get("flags") or 0),
            tts=bool(payload.get("tts", False)),
            message_reference=payload.get("message_reference"),
        )
        if interaction is not None:
            message.interaction_id = interaction.id
            message.webhook_id = self.app_id
            user = self.users[interaction.user_id]
            message.extra["interaction_metadata"] = {
                "id": str(interaction.id),
                "type": interaction.type,
                "user": user.to_payload(),
                "authorizing_integration_owners": interaction.payload.get(
                    "authorizing_integration_owners", {}
                ),
            }
        self._messages[message.id] = message
        if not message.ephemeral:
            channel.last_message_id = message.id
        self._notify()
        return message

    def _apply_edit(
        self, message: FakeMessage, payload: dict[str, Any], files: Sequence[RecordedFile]
    ) -> None:
        if "content" in payload:
            message.content = payload["content"] or ""
        if "embeds" in payload:
            message.embeds = list(payload["embeds"] or [])
        if "components" in payload:
            message.components = list(payload["components"] or [])
        if "flags" in payload and payload["flags"] is not None:
            message.flags = (message.flags & 64) | int(payload["flags"])
        new = self._files_to_attachments(payload, files)
        if "attachments" in payload:
            keep = {str(a.get("id")) for a in payload["attachments"] or [] if isinstance(a, dict)}
            message.attachments = [a for a in message.attachments if str(a.id) in keep]
        message.attachments = [*message.attachments, *new]
        message.flags &= ~128  # an edit resolves "thinking..."
        message.edited_timestamp = _iso()
        message.edits += 1
        self._notify()

    # ------------------------------------------------------------------ gateway

    async def _gateway(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=0, autoping=True)
        await ws.prepare(request)
        self._ws_responses.add(ws)
        self.gateway_connections.append(dict(request.query))
        compressor = (
            zlib.compressobj()
            if self.compress_gateway and request.query.get("compress") == "zlib-stream"
            else None
        )
        conn = _Session("", 0, ws, compressor=compressor)
        session: _Session | None = None
        try:
            await self._ws_send(
                conn,
                {
                    "op": 10,
                    "d": {"heartbeat_interval": int(self.heartbeat_interval * 1000)},
                    "s": None,
                    "t": None,
                },
            )
            async for msg in ws:
                if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    break
                payload = json.loads(msg.data)
                self.gateway_received.append(payload)
                op = payload.get("op")
                data = payload.get("d")
                if op == 1:
                    await self._ws_send(conn, {"op": 11, "d": None, "s": None, "t": None})
                elif op == 2:
                    self.identify_payloads.append(data)
                    if self.token is not None and data.get("token") != self.token:
                        await ws.close(code=4004, message=b"Authentication failed.")
                        break
                    session = _Session(
                        secrets.token_hex(16),
                        int(data.get("intents", 0)),
                        ws,
                        compressor=compressor,
                    )
                    self._sessions[session.session_id] = session
                    conn = session
                    await self._send_ready(session, data)
                elif op == 6:
                    old = self._sessions.get(data.get("session_id", ""))
                    if old is None:
                        await self._ws_send(conn, {"op": 9, "d": False, "s": None, "t": None})
                        continue
                    session = old
                    session.ws, session.compressor = ws, compressor
                    conn = session
                    last = int(data.get("seq") or 0)
                    for event in session.events:
                        if event["s"] > last:
                            await self._ws_send(session, event)
                    await self._dispatch_to(session, "RESUMED", {})
                self._notify()
        finally:
            self._ws_responses.discard(ws)
            if session is not None and session.ws is ws:
                session.ws = None
        return ws

    async def _ws_send(self, session: _Session, payload: dict[str, Any]) -> None:
        ws = session.ws
        if ws is None or ws.closed:
            return
        text = json.dumps(payload)
        if session.compressor is not None:
            data = session.compressor.compress(text.encode()) + session.compressor.flush(
                zlib.Z_SYNC_FLUSH
            )
            send = ws.send_bytes(data)
        else:
            send = ws.send_str(text)
        # The peer can die between the check above and the write (a SIGKILLed bot): Discord
        # then just loses the frame, which a RESUME replays from session.events.
        with contextlib.suppress(ConnectionResetError):
            await send

    async def _dispatch_to(self, session: _Session, event: str, data: dict[str, Any]) -> None:
        session.seq += 1
        payload = {"op": 0, "t": event, "s": session.seq, "d": data}
        session.events.append(payload)
        await self._ws_send(session, payload)

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        """Send a gateway DISPATCH to every identified session."""
        for session in list(self._sessions.values()):
            await self._dispatch_to(session, event, data)

    async def request_reconnect(self) -> None:
        """Send op 7 RECONNECT; discord.py closes and RESUMEs at resume_gateway_url."""
        for session in list(self._sessions.values()):
            await self._ws_send(session, {"op": 7, "d": None, "s": None, "t": None})

    async def _send_ready(self, session: _Session, identify: dict[str, Any]) -> None:
        ready: dict[str, Any] = {
            "v": 10,
            "user": {**self.bot.to_payload(), "verified": True, "mfa_enabled": False, "flags": 0},
            "guilds": [{"id": str(g), "unavailable": True} for g in self.guilds],
            "session_id": session.session_id,
            "resume_gateway_url": self.gateway_url,
            "application": {"id": str(self.app_id), "flags": 0},
            "private_channels": [],
            "relationships": [],
            "user_settings": {},
            "session_type": "normal",
        }
        if identify.get("shard") is not None:
            ready["shard"] = identify["shard"]
        await self._dispatch_to(session, "READY", ready)
        for guild in self.guilds.values():
            await self._dispatch_to(session, "GUILD_CREATE", self._guild_payload(guild))

    def _member_payload(
        self, member: FakeMember, *, with_permissions: bool = False
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "user": member.user.to_payload(),
            "roles": [str(r) for r in member.roles],
            "joined_at": member.joined_at,
            "nick": member.nick,
            "avatar": None,
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "pending": False,
            "flags": 0,
            "communication_disabled_until": None,
        }
        if with_permissions:
            payload["permissions"] = str(self.member_permissions(member.guild_id, member.user.id))
        return payload

    def _guild_payload(self, guild: FakeGuild) -> dict[str, Any]:
        return {
            "id": str(guild.id),
            "name": guild.name,
            "icon": None,
            "owner_id": str(guild.owner_id),
            "unavailable": False,
            "premium_tier": guild.premium_tier,
            "premium_subscription_count": 0,
            "preferred_locale": guild.locale,
            "features": [],
            "roles": [r.to_payload() for r in guild.roles.values()],
            "emojis": [],
            "stickers": [],
            "channels": [c.to_payload(self) for c in guild.channels.values() if not c.deleted],
            "threads": [],
            "members": [self._member_payload(guild.members[self.bot.id])],
            "member_count": len(guild.members),
            "large": False,
            "joined_at": guild.joined_at,
            "voice_states": [],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "system_channel_flags": 0,
        }

    async def _dispatch_message_create(self, message: FakeMessage) -> None:
        intent = INTENT_GUILD_MESSAGES if message.guild_id else INTENT_DIRECT_MESSAGES
        data = message.to_payload()
        if message.guild_id:
            data["guild_id"] = str(message.guild_id)
            member = self.guilds[message.guild_id].members.get(self.bot.id)
            if member is not None:
                data["member"] = {
                    k: v for k, v in self._member_payload(member).items() if k != "user"
                }
        for session in list(self._sessions.values()):
            if session.intents & intent:
                await self._dispatch_to(session, "MESSAGE_CREATE", data)

    # ------------------------------------------------------------------ sending interactions

    def _coerce_user(
        self, user: FakeUser | int | dict[str, Any] | None, permissions: int | str | None
    ) -> tuple[FakeUser, int | str | None]:
        if user is None:
            return self.default_user, permissions
        if isinstance(user, FakeUser):
            return user, permissions
        if isinstance(user, dict):
            uid = int(user["id"])
            fake_user = self.users.get(uid) or self.add_user(uid, name=user.get("name", "tester"))
            return fake_user, user.get("permissions", permissions)
        return self._user(int(user)), permissions

    def _resolve_target(
        self,
        guild_id: int | None,
        channel_id: int | None,
        fake_user: FakeUser,
    ) -> tuple[FakeGuild | None, FakeChannel, FakeUser]:
        self.users.setdefault(fake_user.id, fake_user)
        if channel_id is not None:
            channel = self.channels[channel_id]
            guild = self.guilds.get(channel.guild_id) if channel.guild_id else None
        else:
            if guild_id is None:
                if not self.guilds:
                    raise ValueError("no guild: call add_guild() or pass channel_id")
                guild_id = next(iter(self.guilds))
            guild = self.guilds[guild_id]
            channel = next(c for c in guild.channels.values() if not c.deleted)
        if guild is not None and fake_user.id not in guild.members:
            self.add_member(guild.id, fake_user)
        return guild, channel, fake_user

    def _base_interaction(
        self,
        itype: int,
        data: dict[str, Any],
        guild: FakeGuild | None,
        channel: FakeChannel,
        user: FakeUser,
        permissions: int | str | None,
        locale: str,
    ) -> FakeInteraction:
        iid = self.snowflake()
        token = "aW50ZXJhY3Rpb24" + secrets.token_urlsafe(40)
        payload: dict[str, Any] = {
            "id": str(iid),
            "application_id": str(self.app_id),
            "type": itype,
            "data": data,
            "token": token,
            "version": 1,
            "locale": locale,
            "entitlements": [],
            "entitlement_sku_ids": [],
            "channel_id": str(channel.id),
        }
        channel_payload = channel.to_payload(self)
        if guild is not None:
            member = guild.members[user.id]
            member_payload = self._member_payload(member, with_permissions=True)
            if permissions is not None:
                member_payload["permissions"] = str(int(permissions))
            app_perms = self.member_permissions(guild.id, self.bot.id)
            if not channel.can_send:
                app_perms &= ~(P_SEND_MESSAGES | P_SEND_MESSAGES_IN_THREADS)
            if not channel.can_attach_files:
                app_perms &= ~P_ATTACH_FILES
            channel_payload["permissions"] = member_payload["permissions"]
            payload.update(
                guild_id=str(guild.id),
                guild={"id": str(guild.id), "locale": guild.locale, "features": []},
                guild_locale=guild.locale,
                member=member_payload,
                app_permissions=str(app_perms),
                authorizing_integration_owners={"0": str(guild.id)},
                context=0,
                attachment_size_limit=guild.upload_limit,
            )
        else:
            payload.update(
                user=user.to_payload(),
                app_permissions=str(BOT_PERMISSIONS),
                authorizing_integration_owners={"0": str(user.id)},
                context=1,
                attachment_size_limit=10 * MiB,
            )
        payload["channel"] = channel_payload
        interaction = FakeInteraction(
            id=iid,
            token=token,
            type=itype,
            payload=payload,
            created_at=self.now(),
            guild_id=guild.id if guild else None,
            channel_id=channel.id,
            user_id=user.id,
        )
        self.interactions.append(interaction)
        self._interactions_by_id[iid] = interaction
        self._interactions_by_token[token] = interaction
        return interaction

    async def _send_interaction(self, interaction: FakeInteraction) -> FakeInteraction:
        if not any(s.ws is not None and not s.ws.closed for s in self._sessions.values()):
            await self.wait_until_ready(timeout=5.0)
        interaction.created_at = self.now()
        await self.dispatch("INTERACTION_CREATE", interaction.payload)
        return interaction

    def _registered_command(self, name: str, guild_id: int | None) -> dict[str, Any] | None:
        if guild_id is not None:
            for cmd in self._guild_commands.get(guild_id, []):
                if cmd["name"] == name and cmd.get("type", 1) == 1:
                    return cmd
        for cmd in self._global_commands:
            if cmd["name"] == name and cmd.get("type", 1) == 1:
                return cmd
        return None

    @staticmethod
    def _infer_type(value: Any) -> int:
        if isinstance(value, bool):
            return 5
        if isinstance(value, int):
            return 4
        if isinstance(value, float):
            return 10
        return 3

    def _attachment_value(self, name: str, value: Any) -> dict[str, Any]:
        if isinstance(value, dict):
            return value
        if isinstance(value, (bytes, bytearray, memoryview)):
            data = bytes(value)
            return self.add_attachment(f"{name}{_sniff_ext(data)}", data)
        if isinstance(value, tuple) and len(value) in (2, 3):
            filename, data = value[0], bytes(value[1])
            return self.add_attachment(filename, data, value[2] if len(value) == 3 else None)
        raise TypeError(f"unsupported attachment value for {name!r}: {type(value).__name__}")

    async def send_slash_command(
        self,
        name: str,
        *,
        subcommand: str | None = None,
        subcommand_group: str | None = None,
        options: dict[str, Any] | None = None,
        attachments: dict[str, Any] | None = None,
        guild_id: int | None = None,
        channel_id: int | None = None,
        user: FakeUser | int | dict[str, Any] | None = None,
        permissions: int | str | None = None,
        locale: str = "en-US",
    ) -> FakeInteraction:
        """Dispatch an APPLICATION_COMMAND (type 2) interaction for ``/name [group] [sub]``."""
        fake_user, permissions = self._coerce_user(user, permissions)
        guild, channel, fake_user = self._resolve_target(guild_id, channel_id, fake_user)
        gid = guild.id if guild else None
        registered = self._registered_command(name, gid)

        schema: list[dict[str, Any]] = list((registered or {}).get("options") or [])
        for level in (subcommand_group, subcommand):
            if level is None:
                continue
            sub = next((o for o in schema if o.get("name") == level), None)
            schema = list((sub or {}).get("options") or [])
        declared = {o["name"]: int(o["type"]) for o in schema if "name" in o and "type" in o}

        leaf: list[dict[str, Any]] = []
        for key, value in (options or {}).items():
            otype = declared.get(key, self._infer_type(value))
            if otype in (3,):
                value = str(value)
            elif otype == 4:
                value = int(value)
            elif otype == 10:
                value = float(value)
            elif otype in (6, 7, 8, 9):
                value = str(value)
            leaf.append({"name": key, "type": otype, "value": value})
        resolved_attachments: dict[str, Any] = {}
        for key, value in (attachments or {}).items():
            att = self._attachment_value(key, value)
            resolved_attachments[att["id"]] = att
            leaf.append({"name": key, "type": 11, "value": att["id"]})

        opts: list[dict[str, Any]] = leaf
        if subcommand is not None:
            opts = [{"name": subcommand, "type": 1, "options": opts}]
        if subcommand_group is not None:
            opts = [{"name": subcommand_group, "type": 2, "options": opts}]

        data: dict[str, Any] = {
            "id": (registered or {}).get("id") or str(self.snowflake()),
            "name": name,
            "type": 1,
            "options": opts,
        }
        if registered is not None and registered.get("guild_id"):
            data["guild_id"] = registered["guild_id"]
        if resolved_attachments:
            data["resolved"] = {"attachments": resolved_attachments}
        interaction = self._base_interaction(
            2, data, guild, channel, fake_user, permissions, locale
        )
        return await self._send_interaction(interaction)

    async def click_button(
        self,
        *,
        message_id: int,
        custom_id: str,
        channel_id: int | None = None,
        guild_id: int | None = None,
        user: FakeUser | int | dict[str, Any] | None = None,
        permissions: int | str | None = None,
        component_type: int = 2,
        values: list[str] | None = None,
        locale: str = "en-US",
    ) -> FakeInteraction:
        """Dispatch a MESSAGE_COMPONENT (type 3) interaction from ``message_id``."""
        stored = self._messages.get(message_id)
        if channel_id is None and stored is not None:
            channel_id = stored.channel_id
        fake_user, permissions = self._coerce_user(user, permissions)
        guild, channel, fake_user = self._resolve_target(guild_id, channel_id, fake_user)
        data: dict[str, Any] = {"custom_id": custom_id, "component_type": component_type}
        if component_type != 2:
            data["values"] = list(values or [])
        interaction = self._base_interaction(
            3, data, guild, channel, fake_user, permissions, locale
        )
        if stored is not None:
            message_payload = stored.to_payload()
        else:
            message_payload = FakeMessage(
                message_id, channel.id, channel.guild_id, self.bot.to_payload()
            ).to_payload()
        interaction.payload["message"] = message_payload
        interaction.message_id = message_id
        return await self._send_interaction(interaction)

    async def submit_modal(
        self,
        *,
        custom_id: str,
        values: dict[str, str],
        channel_id: int | None = None,
        guild_id: int | None = None,
        user: FakeUser | int | dict[str, Any] | None = None,
        permissions: int | str | None = None,
        message_id: int | None = None,
        locale: str = "en-US",
    ) -> FakeInteraction:
        """Dispatch a MODAL_SUBMIT (type 5) interaction with text-input ``values``."""
        stored = self._messages.get(message_id) if message_id is not None else None
        if channel_id is None and stored is not None:
            channel_id = stored.channel_id
        fake_user, permissions = self._coerce_user(user, permissions)
        guild, channel, fake_user = self._resolve_target(guild_id, channel_id, fake_user)
        data = {
            "custom_id": custom_id,
            "components": [
                {"type": 1, "components": [{"type": 4, "custom_id": k, "value": v}]}
                for k, v in values.items()
            ],
        }
        interaction = self._base_interaction(
            5, data, guild, channel, fake_user, permissions, locale
        )
        if stored is not None:
            interaction.payload["message"] = stored.to_payload()
            interaction.message_id = stored.id
        return await self._send_interaction(interaction)
