"""Settings: defaults per provider, one clear line for each missing or contradictory setting."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from bot.config import ConfigError, Settings, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Each test sees only the variables it sets, and no .env from the working directory.
    for name in list(Settings.model_fields):
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.chdir(tmp_path)


def test_official_defaults_to_singapore() -> None:
    settings = load_settings(kling_access_key="ak", kling_secret_key="sk")
    settings.require_kling_credentials()
    assert settings.kling_base() == "https://api-singapore.klingai.com"
    assert settings.provider.auth == "jwt"


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({}, "KLING_ACCESS_KEY"),
        ({"KLING_ACCESS_KEY": "ak"}, "KLING_SECRET_KEY"),
        ({"KLING_PROVIDER": "gateway", "KLING_BASE_URL": "https://gw.test"}, "KLING_API_KEY"),
        ({"KLING_PROVIDER": "gateway", "KLING_API_KEY": "key"}, "KLING_BASE_URL"),
        ({"KLING_ACCESS_KEY": "a", "KLING_SECRET_KEY": "s", "KLING_API_KEY": "k"}, "KLING_API_KEY"),
        (
            {"KLING_PROVIDER": "gateway-native", "KLING_BASE_URL": "https://gw.test"},
            "KLING_API_KEY",
        ),
        ({"KLING_PROVIDER": "gateway-native", "KLING_API_KEY": "key"}, "KLING_BASE_URL"),
    ],
)
def test_missing_or_contradictory_credentials_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], variable: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as raised:
        load_settings().require_kling_credentials()
    message = str(raised.value)
    assert message.startswith(variable)
    assert "\n" not in message


def test_simulator_needs_no_credentials() -> None:
    load_settings(kling_provider="simulator").require_kling_credentials()


def test_bad_value_is_one_line_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLING_PROVIDER", "openai")
    with pytest.raises(ConfigError, match=r"^KLING_PROVIDER: ") as raised:
        load_settings()
    assert "\n" not in str(raised.value)
    assert "'gateway-native'" in str(raised.value)  # the choices are listed


def test_gateway_native_is_a_bearer_flavour(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLING_PROVIDER", "gateway-native")
    monkeypatch.setenv("KLING_API_KEY", "key")
    monkeypatch.setenv("KLING_BASE_URL", "https://gw.test/")
    settings = load_settings()
    settings.require_kling_credentials()
    assert (settings.provider.name, settings.provider.auth) == ("gateway-native", "bearer")
    assert settings.kling_base() == "https://gw.test"


# .env.example leaves values blank ("KLING_API_KEY="): blank means "not set", wherever it is.
BLANKS = "KLING_API_KEY=\nKLING_IMAGE_CONCURRENCY=\nKLING_BASE_URL=\nKLING_MAX_ATTEMPTS=\n"


@pytest.mark.parametrize("source", ["environment", ".env"])
def test_blank_values_count_as_not_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, source: str
) -> None:
    if source == ".env":
        (tmp_path / ".env").write_text(BLANKS)
    else:
        for line in BLANKS.splitlines():
            monkeypatch.setenv(line.removesuffix("="), "")
    settings = load_settings(kling_access_key="ak", kling_secret_key="sk")
    settings.require_kling_credentials()  # no "KLING_API_KEY is set" for a blank one
    assert settings.kling_api_key is None
    assert settings.kling_image_concurrency is None
    assert settings.kling_max_attempts == 5
    assert settings.kling_base() == "https://api-singapore.klingai.com"


def test_blank_api_key_given_directly_is_not_a_contradiction() -> None:
    settings = load_settings(kling_access_key="ak", kling_secret_key="sk", kling_api_key="")
    settings.require_kling_credentials()


@pytest.mark.parametrize(
    "url", ["api-singapore.klingai.com", "gw.example.com/kling", "ftp://gw.test", "https://"]
)
def test_kling_base_url_without_scheme_is_one_line(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("KLING_PROVIDER", "gateway")
    monkeypatch.setenv("KLING_API_KEY", "key")
    monkeypatch.setenv("KLING_BASE_URL", url)
    with pytest.raises(ConfigError, match=r"^KLING_BASE_URL: .*https://") as raised:
        load_settings()
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("url", ["https://gw.example.com", "http://127.0.0.1:8100/"])
def test_kling_base_url_with_scheme_is_accepted(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("KLING_BASE_URL", url)
    assert load_settings().kling_base() == url.rstrip("/")


def test_public_url_without_webhook_secret_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUBLIC_BASE_URL", "https://bot.example.com")
    with pytest.raises(ConfigError, match="WEBHOOK_SECRET"):
        load_settings()


@pytest.mark.parametrize("secret", ["hunter2", "x" * 31, " " * 40 + "short"])
def test_short_webhook_secret_stops_the_start_with_one_line(
    monkeypatch: pytest.MonkeyPatch, secret: str
) -> None:
    monkeypatch.setenv("WEBHOOK_SECRET", secret)
    with pytest.raises(ConfigError, match=r"^WEBHOOK_SECRET: .*at least 32 characters") as raised:
        load_settings()
    message = str(raised.value)
    assert "\n" not in message
    assert secret.strip() not in message  # never echoed


def test_webhook_secret_of_32_characters_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUBLIC_BASE_URL", "https://bot.example.com")
    monkeypatch.setenv("WEBHOOK_SECRET", "0123456789abcdef" * 2)
    settings = load_settings()
    assert settings.webhook_secret is not None
    assert len(settings.webhook_secret.get_secret_value()) == 32


def test_missing_discord_token_is_one_line() -> None:
    with pytest.raises(ConfigError, match=r"^DISCORD_TOKEN is not set"):
        load_settings().require_discord_token()


def test_only_sqlite_database_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().sqlite_path() == Path("data/kling-bot.db")
    monkeypatch.setenv("DATABASE_URL", "postgresql://db/kling")
    with pytest.raises(ConfigError, match=r"^DATABASE_URL"):
        load_settings().sqlite_path()


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("KLING_PROVIDER=gateway\nKLING_API_KEY=from-dotenv\n")
    settings = load_settings()
    assert settings.kling_provider == "gateway"
    assert settings.kling_api_key is not None
    assert settings.kling_api_key.get_secret_value() == "from-dotenv"


def test_secrets_never_appear_in_repr_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    secrets = {
        "discord_token": "discord-secret-123",
        "kling_access_key": "access-secret-456",
        "kling_secret_key": "signing-secret-789",
        "kling_api_key": "gateway-key-321",
        "webhook_secret": "hook-secret-000-0123456789abcdef-000",
    }
    settings = load_settings(**secrets)
    caplog.set_level(logging.DEBUG)
    logging.getLogger("test").info("settings: %s %r", settings, settings)
    dumped = settings.model_dump_json()
    for value in secrets.values():
        assert value not in repr(settings)
        assert value not in str(settings)
        assert value not in caplog.text
        assert value not in dumped


def test_log_level_is_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOG_LEVEL", "debug")
    assert load_settings().log_level == "DEBUG"
    monkeypatch.setenv("LOG_LEVEL", "loud")
    with pytest.raises(ConfigError, match=r"^LOG_LEVEL: "):
        load_settings()
