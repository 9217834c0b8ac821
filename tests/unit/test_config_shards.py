"""The scale-out settings: DISCORD_SHARD_COUNT, DISCORD_SHARD_IDS and LEASE_TIMEOUT, each
checked at start with one line naming the variable and the value it has."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import ConfigError, Settings, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Each test sees only the variables it sets, and no .env from the working directory.
    for name in list(Settings.model_fields):
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.chdir(tmp_path)


def _refusal(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    message = str(raised.value)
    assert "\n" not in message
    return message


def test_without_shard_settings_run_takes_every_shard() -> None:
    settings = load_settings()
    assert (settings.discord_shard_count, settings.discord_shard_ids) == (None, None)
    assert settings.lease_timeout == 30.0


@pytest.mark.parametrize(
    ("ids", "expected"),
    [("0,1", (0, 1)), ("0-3", (0, 1, 2, 3)), ("0-1,3", (0, 1, 3)), (" 5 , 2-3 ", (2, 3, 5))],
)
def test_shard_ids_take_lists_ranges_and_a_mix(
    monkeypatch: pytest.MonkeyPatch, ids: str, expected: tuple[int, ...]
) -> None:
    monkeypatch.setenv("DISCORD_SHARD_COUNT", "6")
    monkeypatch.setenv("DISCORD_SHARD_IDS", ids)
    settings = load_settings()
    assert settings.discord_shard_count == 6
    assert settings.discord_shard_ids == expected


def test_a_shard_count_alone_runs_all_of_its_shards(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISCORD_SHARD_COUNT", "4")
    settings = load_settings()
    assert (settings.discord_shard_count, settings.discord_shard_ids) == (4, None)


@pytest.mark.parametrize(
    "ids", ["a", "1-", "3-1", "0,,1", "-1", "0;1", "1,1", "0-2,2", "0-999999999"]
)
def test_unreadable_shard_ids_are_one_line_with_the_value(
    monkeypatch: pytest.MonkeyPatch, ids: str
) -> None:
    message = _refusal(monkeypatch, DISCORD_SHARD_COUNT="4", DISCORD_SHARD_IDS=ids)
    assert message.startswith("DISCORD_SHARD_IDS: ")
    assert repr(ids.strip()) in message
    assert "0-3" in message  # an example of what to write


def test_shard_ids_without_a_count_say_to_set_the_count(monkeypatch: pytest.MonkeyPatch) -> None:
    message = _refusal(monkeypatch, DISCORD_SHARD_IDS="0,1")
    assert message.startswith("DISCORD_SHARD_IDS")
    assert "set DISCORD_SHARD_COUNT" in message


def test_a_shard_id_beyond_the_count_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    message = _refusal(monkeypatch, DISCORD_SHARD_COUNT="2", DISCORD_SHARD_IDS="1-2")
    assert message.startswith("DISCORD_SHARD_IDS")
    assert "2" in message and "DISCORD_SHARD_COUNT=2" in message
    assert "0 to 1" in message


@pytest.mark.parametrize("count", ["0", "-2", "two", "1.5"])
def test_a_bad_shard_count_is_one_line_with_the_value(
    monkeypatch: pytest.MonkeyPatch, count: str
) -> None:
    message = _refusal(monkeypatch, DISCORD_SHARD_COUNT=count)
    assert message.startswith("DISCORD_SHARD_COUNT: ")
    assert repr(count) in message


@pytest.mark.parametrize("seconds", ["0", "-5", "soon", "inf", "nan"])
def test_a_bad_lease_timeout_is_one_line_with_the_value(
    monkeypatch: pytest.MonkeyPatch, seconds: str
) -> None:
    message = _refusal(monkeypatch, LEASE_TIMEOUT=seconds)
    assert message.startswith("LEASE_TIMEOUT: ")
    assert repr(seconds) in message


def test_lease_timeout_takes_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEASE_TIMEOUT", "12.5")
    assert load_settings().lease_timeout == 12.5
