"""Sending interactions to the bot as a member would: slash commands (options typed from the
synced schema, attachments resolved), button clicks and modal submissions."""

from __future__ import annotations

import secrets
from typing import Any

from testing.fake_discord.constants import (
    BOT_PERMISSIONS,
    P_ATTACH_FILES,
    P_SEND_MESSAGES,
    P_SEND_MESSAGES_IN_THREADS,
    MiB,
)
from testing.fake_discord.models import (
    FakeChannel,
    FakeGuild,
    FakeInteraction,
    FakeMessage,
    FakeUser,
    sniff_extension,
)
from testing.fake_discord.state import FakeState


class InteractionSender(FakeState):
    """Builds interaction payloads and dispatches them as INTERACTION_CREATE."""

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
            return self.add_attachment(f"{name}{sniff_extension(data)}", data)
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

    def add_command_reply(
        self,
        name: str = "kling",
        *,
        guild_id: int | None = None,
        channel_id: int | None = None,
        user: FakeUser | int | dict[str, Any] | None = None,
        locale: str = "en-US",
    ) -> FakeInteraction:
        """A slash command the bot already answered with a deferred reply ("thinking..."),
        never dispatched: what a process that is gone left behind, for a worker that never saw
        the interaction. ``original_message(interaction)`` is the reply."""
        fake_user, permissions = self._coerce_user(user, None)
        guild, channel, fake_user = self._resolve_target(guild_id, channel_id, fake_user)
        data = {"id": str(self.snowflake()), "name": name, "type": 1, "options": []}
        interaction = self._base_interaction(
            2, data, guild, channel, fake_user, permissions, locale
        )
        interaction.callback_type = 5
        reply = self._new_message(channel, {"flags": 128}, [], interaction=interaction)
        interaction.original_message_id = reply.id
        return interaction

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
