"""The state shared by every part of the fake, its addresses, ids and clock.

``FakeDiscord`` (fake.py) is this state plus one mixin per concern (world building, waiting,
HTTP plumbing, faults, REST routes, the gateway, sending interactions); the mixins reach one
another through ``self``, as the methods of the one class they were."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from testing.fake_discord.constants import API_PREFIX, DISCORD_EPOCH_MS
from testing.fake_discord.models import (
    FakeChannel,
    FakeGuild,
    FakeInteraction,
    FakeMessage,
    FakeUser,
    FaultRule,
    GatewaySession,
    Recorded,
    StoredAttachment,
)
from testing.fake_discord.pointing import point_discord_py_at


class FakeState:
    """Everything the fake knows, its addresses, its ids and its clock."""

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
        self.recommended_shards = 1  # GET /gateway/bot's "shards"
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
        self._sessions: dict[str, GatewaySession] = {}
        self._time_offset = 0.0
        self._waiters: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []

        self.default_user = self.add_user(name="tester", global_name="Tester")

        self._runner: web.AppRunner | None = None
        self._ws_responses: set[web.WebSocketResponse] = set()
        self.port = 0

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
