"""Messages as Discord stores them: channel checks, upload limits, files turned into
attachments, new messages and edits."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from typing import Any

from testing.fake_discord.constants import MiB
from testing.fake_discord.models import (
    ApiError,
    FakeChannel,
    FakeInteraction,
    FakeMessage,
    Recorded,
    RecordedFile,
    StoredAttachment,
    guess_type,
    iso_time,
)
from testing.fake_discord.state import FakeState


class MessageStore(FakeState):
    """Creates and edits stored messages for the REST routes."""

    def _live_channel(self, channel_id: int) -> FakeChannel:
        channel = self.channels.get(channel_id)
        if channel is None or channel.deleted:
            raise ApiError(404, 10003, "Unknown Channel")
        return channel

    def _interaction_channel(self, interaction: FakeInteraction) -> FakeChannel:
        return self._live_channel(interaction.channel_id)

    def _channel_message(self, channel_id: int, message_id: int) -> FakeMessage:
        self._live_channel(channel_id)
        message = self._messages.get(message_id)
        if message is None or message.deleted or message.channel_id != channel_id:
            raise ApiError(404, 10008, "Unknown Message")
        return message

    def upload_limit(self, channel: FakeChannel) -> int:
        guild = self.guilds.get(channel.guild_id or 0)
        return guild.upload_limit if guild else 10 * MiB

    def _check_upload_size(self, rec: Recorded, channel: FakeChannel) -> None:
        limit = self.upload_limit(channel)
        if any(len(f.data) > limit for f in rec.files):
            raise ApiError(413, 40005, "Request entity too large")

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
                    filename, f.data, guess_type(filename), info.get("description")
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
        message.edited_timestamp = iso_time()
        message.edits += 1
        self._notify()
