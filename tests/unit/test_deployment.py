"""compose.yaml and the Dockerfile, checked without a Docker daemon: compose's services, their
commands, health checks (run for real against a local listener), the data volume and the
settings it uses, against ``bot.config.Settings`` and README's "Scaling out" section."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import unused_port

from bot.config import Settings
from testing.paths import REPO_ROOT

BOT_SERVICES = ("run", "worker")
SERVICES = {"postgres", "run", "worker", "proxy"}
# Interpolated from the shell or .env by compose: ${NAME}, ${NAME:-default}, ${NAME:?error}.
INTERPOLATED = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((REPO_ROOT / "compose.yaml").read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = compose["services"][name]
    return found


def settings_env_names() -> set[str]:
    return {name.upper() for name in Settings.model_fields}


def substitute(text: str, **values: str) -> str:
    """``text`` as compose interpolates it with ``values`` for the variables."""
    return re.sub(r"\$\{([A-Z_][A-Z0-9_]*)[^}]*\}", lambda m: values[m[1]], text)


def interpolated(compose: dict[str, Any]) -> set[str]:
    return set(INTERPOLATED.findall(json.dumps(compose)))


def test_the_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == SERVICES
    assert service(compose, "run")["command"] == ["run"]
    assert service(compose, "worker")["command"] == ["worker"]
    assert service(compose, "worker")["deploy"]["replicas"] == 2
    assert "replicas" not in service(compose, "run").get("deploy", {})  # one gateway process


def test_the_bot_services_are_the_repos_image_on_postgres(compose: dict[str, Any]) -> None:
    for name in BOT_SERVICES:
        bot = service(compose, name)
        assert bot["build"] == ".", name  # the repository's Dockerfile
        assert bot["env_file"] == ".env", name  # the secrets stay out of compose.yaml
        assert bot["depends_on"]["postgres"]["condition"] == "service_healthy", name
        # Replicas cannot share a host port: the proxy reaches every container instead.
        assert "ports" not in bot, name


def test_database_url_names_the_postgres_service(compose: dict[str, Any]) -> None:
    postgres = service(compose, "postgres")
    assert postgres["image"].split(":") == ["postgres", "15"]
    env = {name: substitute(value, POSTGRES_PASSWORD="pw") for name, value in
           postgres["environment"].items()}  # fmt: skip
    assert env["POSTGRES_PASSWORD"] == "pw"  # from .env, never written in compose.yaml
    for name in BOT_SERVICES:
        url = urlsplit(substitute(service(compose, name)["environment"]["DATABASE_URL"],
                                  POSTGRES_PASSWORD="pw"))  # fmt: skip
        assert url.scheme == "postgresql", name
        assert (url.hostname, url.port) == ("postgres", 5432), name
        assert (url.username, url.password) == (env["POSTGRES_USER"], "pw"), name
        assert url.path == "/" + env["POSTGRES_DB"], name


def test_the_data_volume(compose: dict[str, Any]) -> None:
    volumes = service(compose, "postgres")["volumes"]
    assert "postgres-data:/var/lib/postgresql/data" in volumes
    assert "postgres-data" in compose["volumes"]


def test_postgres_health_check_asks_pg_isready(compose: dict[str, Any]) -> None:
    check = service(compose, "postgres")["healthcheck"]["test"]
    assert check[:2] == ["CMD", "pg_isready"]
    assert "--dbname=" + service(compose, "postgres")["environment"]["POSTGRES_DB"] in check


def test_every_setting_the_bot_services_use_is_a_setting(compose: dict[str, Any]) -> None:
    known = settings_env_names()
    for name in BOT_SERVICES:
        bot = service(compose, name)
        used = set(bot["environment"])
        used |= set(re.findall(r"environ\['([A-Z_]+)'\]", json.dumps(bot["healthcheck"])))
        assert used - known == set(), name
        assert "WEBHOOK_PORT" in used and "DATABASE_URL" in used, name


def test_the_proxy_balances_callbacks_over_every_bot_service(compose: dict[str, Any]) -> None:
    proxy = service(compose, "proxy")
    (mounted,) = proxy["configs"]
    config = compose["configs"][mounted["source"]]["content"]
    upstreams = re.findall(r"^\s*server\s+([\w-]+):(\d+)", config, flags=re.MULTILINE)
    ports = {service(compose, name)["environment"]["WEBHOOK_PORT"] for name in BOT_SERVICES}
    assert {host for host, _ in upstreams} == set(BOT_SERVICES)
    assert {port for _, port in upstreams} == ports
    assert "location /kling/callback/ {" in config  # the callback path of bot/tasks/webhook.py
    assert proxy["ports"]


# --- the health checks, run against a real listener ----------------------------------------


@pytest.fixture
async def healthz() -> AsyncIterator[tuple[int, list[int]]]:
    """A listener on 127.0.0.1 whose /healthz answers the status at the end of the list."""
    statuses = [200]

    async def answer(request: web.Request) -> web.Response:
        return web.json_response({}, status=statuses[-1])

    app = web.Application()
    app.router.add_get("/healthz", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    port = unused_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield port, statuses
    finally:
        await runner.cleanup()


async def run_check(test: list[str], port: int) -> int:
    """A ``CMD`` health check's exit code, its ``python`` the one running the tests."""
    assert test[:2] == ["CMD", "python"], test
    process = await asyncio.create_subprocess_exec(
        sys.executable, *test[2:], env={"WEBHOOK_PORT": str(port)}
    )
    return await asyncio.wait_for(process.wait(), 30)


def dockerfile_health_check() -> list[str]:
    text = (REPO_ROOT / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    match = re.search(r"^HEALTHCHECK .*?\bCMD (\[.*\])$", text, flags=re.MULTILINE)
    assert match, "the Dockerfile has no HEALTHCHECK in JSON form"
    return ["CMD", *json.loads(match[1])]


async def test_the_health_checks_pass_on_200_and_fail_on_503(
    compose: dict[str, Any], healthz: tuple[int, list[int]]
) -> None:
    port, statuses = healthz
    checks = {name: service(compose, name)["healthcheck"]["test"] for name in BOT_SERVICES}
    checks["Dockerfile"] = dockerfile_health_check()
    for name, test in checks.items():
        statuses.append(200)
        assert await run_check(test, port) == 0, name
        statuses.append(503)  # the store unreachable, or the gateway down
        assert await run_check(test, port) != 0, name
    closed = unused_port()
    assert await run_check(checks["run"], closed) != 0  # nothing listening


# --- README ---------------------------------------------------------------------------------


def readme_section(title: str) -> str:
    """The text under README's heading ``title``, up to the next heading of its level or
    higher (lines in code blocks are not headings)."""
    level, body, fenced = 0, [], False
    for line in (REPO_ROOT / "README.md").read_text(encoding="utf-8").splitlines():
        fenced ^= line.startswith("```")
        heading = None if fenced else re.match(r"(#+) (.*)", line)
        if heading and level and len(heading[1]) <= level:
            break
        if level:
            body.append(line)
        elif heading and heading[2].strip() == title:
            level = len(heading[1])
    assert level, f'README.md has no section "{title}"'
    return "\n".join(body)


def in_code(name: str, text: str) -> bool:
    """Whether ``name`` appears as a word in some `code span` of ``text``."""
    return re.search(rf"`[^`]*(?<![\w-]){re.escape(name)}(?![\w-])[^`]*`", text) is not None


def test_readme_scaling_out_names_every_service_and_setting_compose_uses(
    compose: dict[str, Any],
) -> None:
    section = readme_section("Scaling out")
    names = set(compose["services"]) | set(compose["volumes"]) | interpolated(compose)
    names |= {name for bot in BOT_SERVICES for name in service(compose, bot)["environment"]}
    names |= {"compose.yaml", "PUBLIC_BASE_URL"}  # PUBLIC_BASE_URL: where callbacks arrive
    assert {name for name in names if not in_code(name, section)} == set()
