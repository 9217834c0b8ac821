"""The fake's one aiohttp server: start and close, record every request (JSON and multipart
bodies), apply faults, and route it to the REST handler named in ``ROUTES``."""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any, Self

from aiohttp import web

from testing.fake_discord.constants import API_PREFIX, MiB
from testing.fake_discord.models import ApiError, Recorded, RecordedFile
from testing.fake_discord.state import FakeState


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    if status == 204:
        return web.Response(status=204, headers=headers)
    all_headers = {"Content-Type": "application/json"}  # exactly; no charset (discord.py)
    all_headers.update(headers or {})
    return web.Response(status=status, body=json.dumps(body).encode(), headers=all_headers)


ROUTES: list[tuple[str, str, str]] = [
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

COMPILED_ROUTES = [(m, re.compile(p), h) for m, p, h in ROUTES]


class HttpServer(FakeState):
    """Serves REST, the gateway and the attachment CDN on one loopback port."""

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

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

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
                raise ApiError(404, 0, "404: Not Found")
            path_matched = False
            for method, pattern, handler_name in COMPILED_ROUTES:
                m = pattern.fullmatch(rec.path)
                if m is None:
                    continue
                path_matched = True
                if method != rec.method:
                    continue
                status, body = await getattr(self, handler_name)(rec, **m.groupdict())
                rec.status, rec.response = status, body
                return json_response(status, body)
            if path_matched:
                raise ApiError(405, 0, "405: Method Not Allowed")
            raise ApiError(404, 0, "404: Not Found")
        except ApiError as exc:
            rec.status, rec.response = exc.status, exc.body
            if exc.body["code"] == 0 and exc.status in (404, 405):
                self.unknown_requests.append(rec)
            return json_response(exc.status, exc.body, exc.headers)

    def _serve_attachment(self, rec: Recorded, full_path: str) -> web.Response:
        m = re.fullmatch(r"/attachments/(\d+)/([^/]+)", full_path)
        att = self.attachments.get(int(m.group(1))) if m else None
        if att is None or rec.method not in ("GET", "HEAD"):
            raise ApiError(404, 0, "404: Not Found")
        rec.status = 200
        return web.Response(
            body=att.data, content_type=att.content_type or "application/octet-stream"
        )

    def _require_bot_auth(self, rec: Recorded) -> None:
        auth = rec.authorization or ""
        if not auth.startswith("Bot ") or (self.token is not None and auth != f"Bot {self.token}"):
            raise ApiError(401, 0, "401: Unauthorized")
