"""REST routes of interactions: the callback (with Discord's deadlines and double-ack rule),
follow-ups and the ``@original``/follow-up webhook messages."""

from __future__ import annotations

from typing import Any

from testing.fake_discord.models import ApiError, FakeInteraction, FakeMessage, Recorded
from testing.fake_discord.state import FakeState


class InteractionRoutes(FakeState):
    """The interaction callback and webhook handlers named in ``ROUTES``."""

    async def _r_callback(self, rec: Recorded, iid: str, token: str) -> tuple[int, Any]:
        interaction = self._interactions_by_id.get(int(iid))
        if interaction is None or interaction.token != token:
            raise ApiError(404, 10062, "Unknown interaction")
        interaction.callbacks.append(rec)
        if interaction.acknowledged:
            raise ApiError(400, 40060, "Interaction has already been acknowledged")
        if self.now() - interaction.created_at > self.ack_deadline:
            raise ApiError(404, 10062, "Unknown interaction")
        body = rec.json or {}
        ctype = int(body.get("type", 0))
        data = body.get("data") or {}
        if ctype not in (4, 5, 6, 7, 8, 9, 12):
            raise ApiError(400, 50035, "Invalid Form Body")
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
            raise ApiError(404, 10015, "Unknown Webhook")
        interaction = self._interactions_by_token.get(token)
        if interaction is None or self.now() - interaction.created_at > self.token_lifetime:
            raise ApiError(401, 50027, "Invalid Webhook Token")
        return interaction

    def _webhook_message(self, interaction: FakeInteraction, mid: str) -> FakeMessage:
        if mid == "@original":
            message_id = interaction.original_message_id
        else:
            message_id = int(mid)
            allowed = {interaction.original_message_id, *interaction.followup_ids}
            if message_id not in allowed:
                raise ApiError(404, 10008, "Unknown Message")
        message = self._messages.get(message_id) if message_id is not None else None
        if message is None or message.deleted:
            raise ApiError(404, 10008, "Unknown Message")
        return message

    async def _r_followup(self, rec: Recorded, app_id: str, token: str) -> tuple[int, Any]:
        interaction = self._webhook_interaction(app_id, token)
        if not interaction.acknowledged:
            raise ApiError(404, 10015, "Unknown Webhook")
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
