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
  serving its guild, see Sharding, and returns a :class:`FakeInteraction`):
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
  permissions=None, message_id=None)``; ``add_command_reply(name="kling", *, guild_id=None,
  channel_id=None, user=None, locale="en-US")`` (not dispatched: a command the bot already
  answered with a deferred reply, as a process that is gone left it; for a ``worker``).
* Sharding: a session that identified with ``shard: [id, count]`` gets only the guilds of its
  shard (``(guild_id >> 22) % count == id``) in READY and GUILD_CREATE and only their events
  (direct messages on shard 0); an unsharded session gets everything. ``recommended_shards``
  (default 1) is what ``GET /gateway/bot`` answers as ``shards``.
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

Layout
------
``state`` (what the fake holds, ids, clock), ``world`` (building and inspecting it),
``waiting``, ``http`` (the server, request recording, multipart bodies, routing), ``faults``,
``rest_channels`` and ``rest_interactions`` (the REST routes), ``messages`` (storing and editing
messages), ``gateway``, ``interactions`` (sending interactions), ``models`` and ``constants``
(the records and numbers), ``pointing`` (``point_discord_py_at``); ``fake`` joins them into
``FakeDiscord``. Every public name is importable from ``testing.fake_discord``.
"""

from __future__ import annotations

from testing.fake_discord.constants import (
    ALL_PERMISSIONS,
    API_PREFIX,
    BOT_PERMISSIONS,
    DEFAULT_EVERYONE_PERMISSIONS,
    DISCORD_EPOCH_MS,
    INTENT_DIRECT_MESSAGES,
    INTENT_GUILD_MESSAGES,
    P_ADD_REACTIONS,
    P_ADMINISTRATOR,
    P_ATTACH_FILES,
    P_EMBED_LINKS,
    P_READ_MESSAGE_HISTORY,
    P_SEND_MESSAGES,
    P_SEND_MESSAGES_IN_THREADS,
    P_USE_APPLICATION_COMMANDS,
    P_USE_EXTERNAL_EMOJIS,
    P_VIEW_CHANNEL,
    MiB,
)
from testing.fake_discord.fake import FakeDiscord
from testing.fake_discord.models import (
    FakeChannel,
    FakeGuild,
    FakeInteraction,
    FakeMember,
    FakeMessage,
    FakeRole,
    FakeUser,
    FaultRule,
    Recorded,
    RecordedFile,
    StoredAttachment,
)
from testing.fake_discord.pointing import point_discord_py_at

__all__ = [
    "ALL_PERMISSIONS",
    "API_PREFIX",
    "BOT_PERMISSIONS",
    "DEFAULT_EVERYONE_PERMISSIONS",
    "DISCORD_EPOCH_MS",
    "INTENT_DIRECT_MESSAGES",
    "INTENT_GUILD_MESSAGES",
    "P_ADD_REACTIONS",
    "P_ADMINISTRATOR",
    "P_ATTACH_FILES",
    "P_EMBED_LINKS",
    "P_READ_MESSAGE_HISTORY",
    "P_SEND_MESSAGES",
    "P_SEND_MESSAGES_IN_THREADS",
    "P_USE_APPLICATION_COMMANDS",
    "P_USE_EXTERNAL_EMOJIS",
    "P_VIEW_CHANNEL",
    "FakeChannel",
    "FakeDiscord",
    "FakeGuild",
    "FakeInteraction",
    "FakeMember",
    "FakeMessage",
    "FakeRole",
    "FakeUser",
    "FaultRule",
    "MiB",
    "Recorded",
    "RecordedFile",
    "StoredAttachment",
    "point_discord_py_at",
]
