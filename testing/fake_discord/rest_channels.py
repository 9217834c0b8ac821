"""REST routes for the bot itself, the gateway address, channels, DMs, messages, users and
application commands."""

from __future__ import annotations

from typing import Any

from testing.fake_discord.models import ApiError, FakeChannel, Recorded
from testing.fake_discord.state import FakeState


class ChannelRoutes(FakeState):
    """The REST handlers named ``_r_*`` in ``ROUTES`` that are not interaction webhooks."""

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
            "shards": self.recommended_shards,
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
            raise ApiError(400, 50033, "Invalid Recipient(s)")
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
                raise ApiError(403, 50007, "Cannot send messages to this user")
        elif not channel.can_send or (rec.files and not channel.can_attach_files):
            raise ApiError(403, 50013, "Missing Permissions")
        self._check_upload_size(rec, channel)
        message = self._new_message(channel, rec.json or {}, rec.files)
        await self._dispatch_message_create(message)
        return 200, message.to_payload()

    async def _r_get_user(self, rec: Recorded, uid: str) -> tuple[int, Any]:
        self._require_bot_auth(rec)
        user = self.users.get(int(uid))
        if user is None:
            raise ApiError(404, 10013, "Unknown User")
        return 200, user.to_payload()

    async def _r_list_messages(self, rec: Recorded, cid: str) -> tuple[int, Any]:
        """Channel history the way Discord answers it: at most ``limit`` messages, newest
        first; ``before`` the newest older ones, ``after`` the oldest newer ones, ``around``
        half on each side (the message itself included)."""
        self._require_bot_auth(rec)
        channel = self._live_channel(int(cid))
        if channel.type != 1 and not channel.can_read_history:
            raise ApiError(403, 50001, "Missing Access")
        anchors = [k for k in ("before", "after", "around") if k in rec.query]
        try:
            limit = int(rec.query.get("limit", "50"))
            anchor = int(rec.query[anchors[0]]) if anchors else None
        except ValueError:
            raise ApiError(400, 50035, "Invalid Form Body") from None
        if not 1 <= limit <= 100 or len(anchors) > 1:
            raise ApiError(400, 50035, "Invalid Form Body")
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
            raise ApiError(403, 50001, "Missing Access")
