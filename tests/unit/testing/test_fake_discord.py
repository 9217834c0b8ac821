"""Proves testing/fake_discord/ drives the real, unmodified discord.py over loopback."""

from __future__ import annotations

import asyncio
import contextlib
import io
import struct
import time
import zlib
from collections.abc import AsyncIterator, Callable

import aiohttp
import discord
import pytest
from discord import app_commands
from discord.ext import commands

from testing.fake_discord import FakeDiscord, Recorded, point_discord_py_at

pytestmark = [
    pytest.mark.filterwarnings("error::ResourceWarning"),
    pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning"),
]

GUILD_ID = 900000000000000001
CHANNEL_ID = 900000000000000011
LOCKED_ID = 900000000000000012
TOKEN = "fake-bot-token"


def make_png(width: int = 2, height: int = 2) -> bytes:
    def chunk(tag: bytes, data: bytes) -> bytes:
        body = tag + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    raw = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


PNG = make_png()


class PingView(discord.ui.View):
    def __init__(self, bot: DemoBot) -> None:
        super().__init__(timeout=None)
        self.bot = bot

    @discord.ui.button(label="Ping", custom_id="demo:ping")
    async def ping(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        self.bot.clicks.append(interaction)
        await interaction.response.edit_message(content="pong", view=None)


class NameModal(discord.ui.Modal, title="Your name"):
    name: discord.ui.TextInput = discord.ui.TextInput(label="Name", custom_id="name")

    def __init__(self, bot: DemoBot) -> None:
        super().__init__(custom_id="demo:form")
        self.bot = bot

    async def on_submit(self, interaction: discord.Interaction) -> None:
        self.bot.submissions.append(self.name.value)
        await interaction.response.send_message(f"hello {self.name.value}", ephemeral=True)


class Demo(app_commands.Group):
    def __init__(self, bot: DemoBot) -> None:
        super().__init__(name="demo", description="Demo commands")
        self.bot = bot

    @app_commands.command(description="Echo an attachment back")
    async def echo(
        self, interaction: discord.Interaction, text: str, file: discord.Attachment
    ) -> None:
        self.bot.interactions.append(interaction)
        await interaction.response.defer(thinking=True)
        data = await file.read()
        await interaction.followup.send(
            content=text, file=discord.File(io.BytesIO(data), filename=file.filename), wait=True
        )
        channel = self.bot.get_partial_messageable(interaction.channel_id or 0)
        await channel.send(
            content=f"posted {text}",
            file=discord.File(io.BytesIO(data), filename=f"copy-{file.filename}"),
        )
        await interaction.edit_original_response(content="done")

    @app_commands.command(description="Send a button")
    async def button(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message("press", view=PingView(self.bot))

    @app_commands.command(description="Open a modal")
    async def form(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_modal(NameModal(self.bot))

    @app_commands.command(description="Wait for the test, then defer")
    async def wait(self, interaction: discord.Interaction, count: int = 1) -> None:
        self.bot.interactions.append(interaction)
        await self.bot.gate.wait()
        await interaction.response.defer()


class DemoBot(commands.Bot):
    def __init__(self) -> None:
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=discord.Intents.default(),
            guild_ready_timeout=0.05,
        )
        self.interactions: list[discord.Interaction] = []
        self.clicks: list[discord.Interaction] = []
        self.submissions: list[str] = []
        self.errors: list[BaseException] = []
        self.gate = asyncio.Event()
        self.resumed = asyncio.Event()

    async def setup_hook(self) -> None:
        self.tree.add_command(Demo(self))
        self.tree.on_error = self._on_tree_error  # type: ignore[method-assign]
        guild = discord.Object(GUILD_ID)
        self.tree.copy_global_to(guild=guild)
        await self.tree.sync(guild=guild)

    async def _on_tree_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        self.errors.append(getattr(error, "original", error))

    async def on_resumed(self) -> None:
        self.resumed.set()


def build_fake(**kwargs: object) -> FakeDiscord:
    fake = FakeDiscord(token=TOKEN, **kwargs)  # type: ignore[arg-type]
    fake.add_guild(GUILD_ID, name="Kling Lab", channels=[(CHANNEL_ID, "general"), (LOCKED_ID, "x")])
    return fake


@contextlib.asynccontextmanager
async def running_bot(fake: FakeDiscord) -> AsyncIterator[DemoBot]:
    with point_discord_py_at(fake.api_base, fake.gateway_url):
        bot = DemoBot()
        runner = asyncio.create_task(bot.start(TOKEN))
        ready = asyncio.create_task(bot.wait_until_ready())
        try:
            done, _ = await asyncio.wait({runner, ready}, timeout=5, return_when="FIRST_COMPLETED")
            if runner in done:
                runner.result()  # re-raise a startup failure
            assert ready in done, "bot never became ready"
            yield bot
        finally:
            ready.cancel()
            await bot.close()
            await asyncio.wait_for(runner, 5)


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    fake = build_fake()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.close()


@pytest.fixture
async def bot(fake: FakeDiscord) -> AsyncIterator[DemoBot]:
    async with running_bot(fake) as bot:
        yield bot


async def until(condition: Callable[[], object], timeout: float = 5.0) -> None:  # noqa: ASYNC109
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


def channel_messages_path(channel_id: int) -> str:
    return rf"/channels/{channel_id}/messages"


async def test_connects_fires_ready_and_syncs(fake: FakeDiscord, bot: DemoBot) -> None:
    assert bot.is_ready()
    assert bot.user is not None and bot.user.id == fake.bot.id
    assert bot.application_id == fake.app_id
    guild = bot.get_guild(GUILD_ID)
    assert guild is not None and guild.name == "Kling Lab"
    assert guild.get_channel(CHANNEL_ID) is not None
    assert guild.me is not None
    # login + application info, bot-authenticated
    me = await fake.wait_for(method="GET", path="/users/@me")
    assert me.authorization == f"Bot {TOKEN}"
    await fake.wait_for(method="GET", path="/oauth2/applications/@me")
    # identify went over the websocket with the token and intents
    assert fake.identify_payloads[0]["token"] == TOKEN
    assert fake.identify_payloads[0]["intents"] == discord.Intents.default().value
    # tree.sync() bulk-overwrote the guild commands
    put = await fake.wait_for(method="PUT", path=rf"/applications/\d+/guilds/{GUILD_ID}/commands")
    assert put.status == 200
    assert [c["name"] for c in fake.commands(GUILD_ID)] == ["demo"]
    assert fake.unknown_requests == []


async def test_slash_command_with_attachment_roundtrip(fake: FakeDiscord, bot: DemoBot) -> None:
    inter = await fake.send_slash_command(
        "demo",
        subcommand="echo",
        options={"text": "hi"},
        attachments={"file": ("input.png", PNG)},
    )
    callback = await fake.wait_for_callback(inter)
    assert callback["type"] == 5  # deferred channel message ("thinking")

    followup = await fake.wait_for(method="POST", path=rf"/webhooks/{fake.app_id}/[^/]+")
    assert followup.status == 200 and followup.query.get("wait") == "1"
    assert followup.authorization is None  # interaction webhooks are unauthenticated
    assert followup.json["content"] == "hi"
    assert [(f.filename, f.data) for f in followup.files] == [("input.png", PNG)]
    assert followup.files[0].content_type == "application/octet-stream"  # what discord.py sends

    posted = await fake.wait_for(method="POST", path=channel_messages_path(CHANNEL_ID))
    assert posted.status == 200
    assert posted.files[0].filename == "copy-input.png" and posted.files[0].data == PNG
    edit = await fake.wait_for(method="PATCH", path=r"/webhooks/\d+/[^/]+/messages/@original")
    assert edit.json["content"] == "done"

    # the bot downloaded the attachment from the fake CDN
    download = fake.requests_to("GET", r"/attachments/\d+/input\.png")
    assert len(download) == 1 and download[0].status == 200

    msgs = fake.messages(CHANNEL_ID)
    assert [m.content for m in msgs] == ["done", "hi", "posted hi"]
    original, follow, channel_msg = msgs
    assert not original.loading and original.interaction_id == inter.id
    assert fake.followups(inter) == [follow]
    assert follow.attachments[0].data == PNG
    assert follow.attachments[0].content_type == "image/png"
    assert channel_msg.file("copy-input.png").data == PNG
    # the discord.py Interaction saw the member, its permissions and the upload limit
    seen = bot.interactions[0]
    assert isinstance(seen.user, discord.Member) and seen.user.id == fake.default_user.id
    assert seen.permissions.send_messages and seen.app_permissions.attach_files
    assert seen.filesize_limit == 10 * 1024 * 1024
    assert bot.errors == [] and fake.unknown_requests == []


async def test_button_click_reaches_view(fake: FakeDiscord, bot: DemoBot) -> None:
    inter = await fake.send_slash_command("demo", subcommand="button")
    assert (await fake.wait_for_callback(inter))["type"] == 4
    message = fake.original_message(inter)
    assert message is not None and message.content == "press"
    button = message.components[0]["components"][0]
    assert button["custom_id"] == "demo:ping"

    click = await fake.click_button(message_id=message.id, custom_id="demo:ping")
    assert (await fake.wait_for_callback(click))["type"] == 7
    assert len(bot.clicks) == 1 and bot.clicks[0].message is not None
    assert bot.clicks[0].message.id == message.id
    assert fake.message(message.id).content == "pong"
    assert fake.message(message.id).components == []


async def test_modal_submit(fake: FakeDiscord, bot: DemoBot) -> None:
    inter = await fake.send_slash_command("demo", subcommand="form")
    assert (await fake.wait_for_callback(inter))["type"] == 9
    assert inter.modal is not None and inter.modal["custom_id"] == "demo:form"
    submit = await fake.submit_modal(custom_id="demo:form", values={"name": "Ada"})
    await fake.wait_for_callback(submit)
    assert bot.submissions == ["Ada"]
    reply = fake.original_message(submit)
    assert reply is not None and reply.content == "hello Ada" and reply.ephemeral


async def test_rate_limit_429_is_waited_out(fake: FakeDiscord, bot: DemoBot) -> None:
    rule = fake.fail_next("POST", channel_messages_path(CHANNEL_ID), 429, retry_after=0.3)
    started = time.monotonic()
    message = await bot.get_partial_messageable(CHANNEL_ID).send("after the limit")
    assert time.monotonic() - started >= 0.3
    assert len(rule.hits) == 1 and rule.hits[0].response["retry_after"] == 0.3
    attempts = fake.requests_to("POST", channel_messages_path(CHANNEL_ID))
    assert [r.status for r in attempts] == [429, 200]
    assert [m.content for m in fake.messages(CHANNEL_ID)] == ["after the limit"]
    assert message.id == fake.messages(CHANNEL_ID)[0].id


async def test_server_error_is_retried(fake: FakeDiscord, bot: DemoBot) -> None:
    fake.fail_next("POST", channel_messages_path(CHANNEL_ID), 500)
    await bot.get_partial_messageable(CHANNEL_ID).send("eventually")  # discord.py sleeps 1 s
    statuses = [r.status for r in fake.requests_to("POST", channel_messages_path(CHANNEL_ID))]
    assert statuses == [500, 200]
    assert len(fake.messages(CHANNEL_ID)) == 1


async def test_missing_permissions_is_forbidden_50013(fake: FakeDiscord, bot: DemoBot) -> None:
    fake.set_channel_permissions(LOCKED_ID, can_send=False)
    with pytest.raises(discord.Forbidden) as excinfo:
        await bot.get_partial_messageable(LOCKED_ID).send("nope")
    assert excinfo.value.status == 403 and excinfo.value.code == 50013
    assert fake.messages(LOCKED_ID) == []


async def test_deleted_channel_is_not_found_10003(fake: FakeDiscord, bot: DemoBot) -> None:
    fake.delete_channel(LOCKED_ID)
    with pytest.raises(discord.NotFound) as excinfo:
        await bot.get_partial_messageable(LOCKED_ID).send("gone")
    assert excinfo.value.code == 10003


async def test_dm_to_user_refusing_dms_is_forbidden_50007(fake: FakeDiscord, bot: DemoBot) -> None:
    user = fake.add_user(name="shy")
    fake.block_dms(user.id)
    dm = await bot.create_dm(discord.Object(user.id))
    assert isinstance(dm, discord.DMChannel)
    with pytest.raises(discord.Forbidden) as excinfo:
        await dm.send("hello")
    assert excinfo.value.code == 50007


async def test_upload_above_guild_limit_is_413_40005(fake: FakeDiscord, bot: DemoBot) -> None:
    big = discord.File(io.BytesIO(b"\0" * (10 * 1024 * 1024 + 1)), filename="big.bin")
    with pytest.raises(discord.HTTPException) as excinfo:
        await bot.get_partial_messageable(CHANNEL_ID).send(file=big)
    assert excinfo.value.status == 413 and excinfo.value.code == 40005
    fake.guilds[GUILD_ID].premium_tier = 2  # 50 MiB
    ok = discord.File(io.BytesIO(b"\0" * (10 * 1024 * 1024 + 1)), filename="big.bin")
    await bot.get_partial_messageable(CHANNEL_ID).send(file=ok)
    assert fake.messages(CHANNEL_ID)[0].attachments[0].size == 10 * 1024 * 1024 + 1


async def test_expired_interaction_token_is_50027(fake: FakeDiscord, bot: DemoBot) -> None:
    inter = await fake.send_slash_command("demo", subcommand="wait", options={"count": 2})
    bot.gate.set()
    assert (await fake.wait_for_callback(inter))["type"] == 5
    seen = bot.interactions[0]
    assert seen.namespace.count == 2
    fake.advance_time(fake.token_lifetime + 1)
    with pytest.raises(discord.HTTPException) as excinfo:
        await seen.followup.send("too late")
    assert excinfo.value.status == 401 and excinfo.value.code == 50027
    with pytest.raises(discord.HTTPException) as excinfo:
        await seen.edit_original_response(content="too late")
    assert excinfo.value.code == 50027


async def test_late_and_double_acknowledgement(fake: FakeDiscord, bot: DemoBot) -> None:
    inter = await fake.send_slash_command("demo", subcommand="wait")
    fake.advance_time(fake.ack_deadline + 0.5)  # the bot misses the 3 s window
    bot.gate.set()
    attempt = await fake.wait_for(method="POST", path=rf"/interactions/{inter.id}/[^/]+/callback")
    assert attempt.status == 404 and attempt.response["code"] == 10062
    await until(lambda: bot.errors)
    assert isinstance(bot.errors[0], discord.NotFound) and bot.errors[0].code == 10062

    # a second acknowledgement of an acknowledged interaction (raw HTTP, discord.py
    # refuses locally)
    bot.gate.clear()
    inter2 = await fake.send_slash_command("demo", subcommand="wait")
    bot.gate.set()
    await fake.wait_for_callback(inter2)
    url = f"{fake.api_base}/interactions/{inter2.id}/{inter2.token}/callback"
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json={"type": 5}) as resp:
            assert resp.status == 400
            assert resp.headers["Content-Type"] == "application/json"
            assert (await resp.json())["code"] == 40060


async def test_unknown_routes_are_recorded(fake: FakeDiscord, bot: DemoBot) -> None:
    with pytest.raises(discord.NotFound):
        await bot.fetch_guild(GUILD_ID)
    assert [(r.method, r.path) for r in fake.unknown_requests] == [("GET", f"/guilds/{GUILD_ID}")]
    assert fake.unknown_requests[0].response == {"message": "404: Not Found", "code": 0}


async def test_gateway_resume_after_reconnect(fake: FakeDiscord, bot: DemoBot) -> None:
    await fake.request_reconnect()
    await asyncio.wait_for(bot.resumed.wait(), 5)
    assert any(p.get("op") == 6 for p in fake.gateway_received)
    assert len(fake.identify_payloads) == 1
    inter = await fake.send_slash_command("demo", subcommand="button")
    assert (await fake.wait_for_callback(inter))["type"] == 4


async def test_zlib_compressed_gateway() -> None:
    fake = build_fake(compress_gateway=True)
    await fake.start()
    try:
        async with running_bot(fake) as bot:
            assert bot.is_ready()
            assert fake.gateway_connections[0] == {
                "encoding": "json",
                "v": "10",
                "compress": "zlib-stream",
            }
            inter = await fake.send_slash_command("demo", subcommand="button")
            assert (await fake.wait_for_callback(inter))["type"] == 4
    finally:
        await fake.close()


async def test_member_roles_drive_interaction_permissions(fake: FakeDiscord, bot: DemoBot) -> None:
    bot.gate.set()
    mods = fake.add_role(GUILD_ID, name="mods", permissions=1 << 5)  # MANAGE_GUILD
    mod = fake.add_user(name="mod")
    fake.add_member(GUILD_ID, mod, roles=[mods])
    admin = {"id": 4242, "name": "boss", "permissions": str(1 << 3)}
    for user in (mod, None, admin):
        inter = await fake.send_slash_command("demo", subcommand="wait", user=user)
        await fake.wait_for_callback(inter)
    by_user = {i.user.id: i for i in bot.interactions}
    assert by_user[mod.id].permissions.manage_guild
    assert isinstance(by_user[mod.id].user, discord.Member)
    assert mods.id in by_user[mod.id].user._roles
    assert not by_user[fake.default_user.id].permissions.manage_guild
    assert by_user[4242].permissions.administrator and by_user[4242].user.name == "boss"


def test_point_discord_py_at_patches_and_restores() -> None:
    from discord.gateway import DiscordWebSocket
    from discord.http import Route

    before = (Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY)
    with point_discord_py_at("http://127.0.0.1:9/api/v10"):
        assert Route("GET", "/users/@me").url == "http://127.0.0.1:9/api/v10/users/@me"
        assert str(DiscordWebSocket.DEFAULT_GATEWAY) == "ws://127.0.0.1:9/gateway"
    assert (Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY) == before


async def test_channel_history_and_user_lookup(fake: FakeDiscord, bot: DemoBot) -> None:
    """discord.py's ``history()`` pages through the fake like through Discord: newest first,
    ``before``/``after``/``around`` anchors, no ephemeral or deleted messages, 403 when the bot
    may not read the channel; ``fetch_user`` answers known users and 404s the rest."""
    posted: list[int] = []

    def on_request(r: Recorded) -> None:
        if r.method == "POST" and r.status == 200 and r.path == channel_messages_path(CHANNEL_ID):
            posted.append(int(r.response["id"]))

    fake.request_hooks.append(on_request)
    channel = bot.get_partial_messageable(CHANNEL_ID)
    ids = [(await channel.send(content=f"m{i}")).id for i in range(7)]
    assert posted == ids  # the hook saw every post, with its answer, in order
    gone = fake.message(ids[3])
    gone.deleted = True
    hidden = fake._new_message(fake.channels[CHANNEL_ID], {"content": "secret", "flags": 64}, [])
    alive = [i for i in ids if i != ids[3]]

    newest = [m async for m in channel.history(limit=None)]
    assert [m.id for m in newest] == alive[::-1]
    assert hidden.id not in [m.id for m in newest]
    assert all(m.author.id == fake.bot.id and m.channel.id == CHANNEL_ID for m in newest)
    assert [m.content for m in newest[:2]] == ["m6", "m5"]

    # Anchors: ``before`` walks back from a message, ``after`` forward, ``around`` both ways.
    fake.requests.clear()
    walked = [m.id async for m in channel.history(limit=5, before=discord.Object(ids[6]))]
    assert walked == [ids[5], ids[4], ids[2], ids[1], ids[0]]
    after = [m.id async for m in channel.history(limit=3, after=discord.Object(ids[0]))]
    assert after == [ids[1], ids[2], ids[4]]  # oldest first, as discord.py reorders `after`
    around = [m.id async for m in channel.history(limit=3, around=discord.Object(ids[4]))]
    assert sorted(around) == [ids[2], ids[4], ids[5]]
    raw = fake.requests_to("GET", channel_messages_path(CHANNEL_ID))
    assert raw and all(isinstance(r.response, list) for r in raw)
    by_after = next(r for r in raw if "after" in r.query)
    listed = [int(m["id"]) for m in by_after.response]
    assert listed == sorted(listed, reverse=True)  # Discord answers newest first, always

    async with aiohttp.ClientSession(headers={"Authorization": f"Bot {TOKEN}"}) as http:
        base = f"{fake.api_base}/channels/{CHANNEL_ID}/messages"
        for query in ("limit=0", "limit=101", "limit=x", f"before={ids[1]}&after={ids[0]}"):
            async with http.get(f"{base}?{query}") as response:
                assert response.status == 400, query
        async with http.get(f"{base}?limit=1") as response:
            assert response.status == 200 and [m["id"] for m in await response.json()] == [
                str(ids[6])
            ]

    fake.set_channel_permissions(CHANNEL_ID, can_send=True, can_read_history=False)
    with pytest.raises(discord.Forbidden):
        await anext(channel.history(limit=1))
    with pytest.raises(discord.NotFound):
        await anext(bot.get_partial_messageable(123456789).history(limit=1))

    user = await bot.fetch_user(fake.default_user.id)
    assert (user.id, user.name) == (fake.default_user.id, "tester")
    with pytest.raises(discord.NotFound) as missing:
        await bot.fetch_user(42)
    assert missing.value.code == 10013
    assert not fake.unknown_requests
