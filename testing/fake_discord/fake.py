"""``FakeDiscord``: the state and every part of the fake joined into the one public class.

The order of the bases is the method resolution order; no two parts define the same method.
"""

from __future__ import annotations

from testing.fake_discord.faults import Faults
from testing.fake_discord.gateway import Gateway
from testing.fake_discord.http import HttpServer
from testing.fake_discord.interactions import InteractionSender
from testing.fake_discord.messages import MessageStore
from testing.fake_discord.rest_channels import ChannelRoutes
from testing.fake_discord.rest_interactions import InteractionRoutes
from testing.fake_discord.waiting import Waiting
from testing.fake_discord.world import WorldBuilding


class FakeDiscord(
    InteractionSender,
    Gateway,
    InteractionRoutes,
    ChannelRoutes,
    MessageStore,
    Faults,
    HttpServer,
    Waiting,
    WorldBuilding,
):
    """A loopback Discord (REST + gateway + attachment CDN). See the package docstring."""
