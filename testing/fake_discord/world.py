"""Building the fake's world (users, guilds, channels, roles, members, attachments) and
looking at what happened in it (messages, follow-ups, synced commands, requests)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from testing.fake_discord.constants import (
    ALL_PERMISSIONS,
    BOT_PERMISSIONS,
    DEFAULT_EVERYONE_PERMISSIONS,
    P_ADMINISTRATOR,
)
from testing.fake_discord.models import (
    FakeChannel,
    FakeGuild,
    FakeInteraction,
    FakeMember,
    FakeMessage,
    FakeRole,
    FakeUser,
    Recorded,
    StoredAttachment,
    guess_type,
)
from testing.fake_discord.state import FakeState


class WorldBuilding(FakeState):
    """Adds and inspects users, guilds, channels, roles, members and attachments."""

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
            att_id, filename, content_type or guess_type(filename), bytes(data), url, description
        )
        self.attachments[att_id] = att
        return att

    def _user(self, user_id: int) -> FakeUser:
        user = self.users.get(user_id)
        if user is None:
            user = self.add_user(user_id, name=f"user{user_id}")
        return user

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
