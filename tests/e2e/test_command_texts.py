"""The slash commands are synced with their words from the catalogue, through discord.py's
translator: English descriptions and choice names, and a translation for each language whose
catalogue words them differently (none yet: English only)."""

from __future__ import annotations

from typing import Any

from bot.discord.runner import sync_commands
from bot.text import t
from testing.discord_world import World

SUBCOMMAND = 1


def with_subcommands(command: dict[str, Any]) -> list[dict[str, Any]]:
    subcommands = [o for o in command.get("options") or [] if o["type"] == SUBCOMMAND]
    return [command, *subcommands]


async def test_commands_are_synced_with_the_catalogues_words(world: World) -> None:
    await sync_commands(world.settings, world.guild_id)
    commands = {c["name"]: c for c in world.fake.commands(world.guild_id)}
    assert commands["kling"]["description"] == t("command.kling")
    help_command = next(o for o in commands["kling"]["options"] if o["name"] == "help")
    assert help_command["description"] == t("command.help")
    video = next(o for o in commands["kling"]["options"] if o["name"] == "video")
    mode = next(o for o in video["options"] if o["name"] == "mode")
    assert [c["name"] for c in mode["choices"]] == [t("choice.mode.std"), t("choice.mode.pro")]
    # The translator ran for every command (English only: nothing differs from English yet).
    parts = [part for command in commands.values() for part in with_subcommands(command)]
    assert len(parts) == 2 + 5 + 6
    assert all(part.get("description_localizations") == {} for part in parts)
