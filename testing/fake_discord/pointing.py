"""Point an unmodified discord.py at the fake: its REST base and its gateway URL."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import yarl


@contextlib.contextmanager
def point_discord_py_at(api_base: str, gateway_url: str | None = None) -> Iterator[None]:
    """Point discord.py's REST and gateway at ``api_base``/``gateway_url``; restore on exit.

    ``api_base`` replaces ``discord.http.Route.BASE`` (also used by interaction webhooks),
    ``gateway_url`` replaces ``discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY``. When
    ``gateway_url`` is omitted it is derived the way this fake lays out its server
    (``http://h:p/api/v10`` -> ``ws://h:p/gateway``).
    """
    from discord.gateway import DiscordWebSocket
    from discord.http import Route

    if gateway_url is None:
        base = yarl.URL(api_base)
        scheme = "wss" if base.scheme == "https" else "ws"
        gateway_url = str(base.with_scheme(scheme).with_path("/gateway"))
    old_base, old_gateway = Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY
    Route.BASE = api_base.rstrip("/")
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)
    try:
        yield
    finally:
        Route.BASE = old_base
        DiscordWebSocket.DEFAULT_GATEWAY = old_gateway
