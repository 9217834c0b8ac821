"""The websocket gateway: HELLO, heartbeats, IDENTIFY -> READY + GUILD_CREATE, RESUME with
replay, dispatches (optionally zlib-stream compressed) and the guild/member payloads.

Sharded like Discord: a session that identified with ``shard: [id, count]`` gets only the
guilds of its shard (``(guild_id >> 22) % count == id``) in READY and GUILD_CREATE, and only
their events (direct messages on shard 0); an unsharded session gets everything."""

from __future__ import annotations

import contextlib
import json
import secrets
import zlib
from typing import Any

from aiohttp import WSMsgType, web

from testing.fake_discord.constants import INTENT_DIRECT_MESSAGES, INTENT_GUILD_MESSAGES
from testing.fake_discord.models import FakeGuild, FakeMember, FakeMessage, GatewaySession
from testing.fake_discord.state import FakeState


class Gateway(FakeState):
    """Serves ``/gateway`` and dispatches events to every identified session."""

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
        conn = GatewaySession("", 0, ws, compressor=compressor)
        session: GatewaySession | None = None
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
                    shard = data.get("shard")
                    session = GatewaySession(
                        secrets.token_hex(16),
                        int(data.get("intents", 0)),
                        ws,
                        compressor=compressor,
                        shard=(int(shard[0]), int(shard[1])) if shard else None,
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

    async def _ws_send(self, session: GatewaySession, payload: dict[str, Any]) -> None:
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

    async def _dispatch_to(self, session: GatewaySession, event: str, data: dict[str, Any]) -> None:
        session.seq += 1
        payload = {"op": 0, "t": event, "s": session.seq, "d": data}
        session.events.append(payload)
        await self._ws_send(session, payload)

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        """Send a gateway DISPATCH to every identified session serving its guild."""
        guild_id = int(data["guild_id"]) if data.get("guild_id") else None
        for session in list(self._sessions.values()):
            if session.serves(guild_id):
                await self._dispatch_to(session, event, data)

    async def request_reconnect(self) -> None:
        """Send op 7 RECONNECT; discord.py closes and RESUMEs at resume_gateway_url."""
        for session in list(self._sessions.values()):
            await self._ws_send(session, {"op": 7, "d": None, "s": None, "t": None})

    async def _send_ready(self, session: GatewaySession, identify: dict[str, Any]) -> None:
        guilds = [guild for guild in self.guilds.values() if session.serves(guild.id)]
        ready: dict[str, Any] = {
            "v": 10,
            "user": {**self.bot.to_payload(), "verified": True, "mfa_enabled": False, "flags": 0},
            "guilds": [{"id": str(g.id), "unavailable": True} for g in guilds],
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
        for guild in guilds:
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
            if session.intents & intent and session.serves(message.guild_id):
                await self._dispatch_to(session, "MESSAGE_CREATE", data)
