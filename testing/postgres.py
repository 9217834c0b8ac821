"""A PostgreSQL server for the suites, and a fresh database on it for each test.

``PG_TEST_URL`` set (``postgresql://USER:PASSWORD@HOST:PORT/DBNAME``): that server is used;
its database is only where ``CREATE DATABASE`` runs. Otherwise ``ThrowawayCluster.start()``
makes a private cluster in a temporary folder with the server binaries (``initdb`` and
``pg_ctl`` from PATH, else ``/usr/lib/postgresql/*/bin``): run as the ``postgres`` user when
we are root (initdb refuses root), durability off (``fsync``, ``synchronous_commit``,
``full_page_writes``: a test's data need not survive a power cut), listening on 127.0.0.1
only, on a free port, its unix socket inside the folder, trust authentication (loopback only,
and nothing in it is worth a password). ``stop()`` ends it at once and removes the folder.

``PostgresUnavailable`` says what is missing when no server can be had; ``no_postgres`` turns
it into a skip, or a failure under ``CI=true`` (the fixtures of tests/conftest.py use it).
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import secrets
import shlex
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

_SEARCHED = "/usr/lib/postgresql/*/bin"
_SERVER_USER = "postgres"
_START_TIMEOUT = 60  # seconds pg_ctl waits for the server to accept connections
_PORT_TRIES = 3  # another program may take the free port between our probe and the start
_database_numbers = itertools.count(1)


class PostgresUnavailable(Exception):
    """No PostgreSQL server can be had here; the message says what is missing."""


def find_server_binaries(
    search_path: str | None = None, searched: str = _SEARCHED
) -> tuple[Path, Path]:
    """``initdb`` and ``pg_ctl``: on ``search_path`` (PATH), else in the newest ``searched``
    folder (``/usr/lib/postgresql/*/bin``, where Debian's postgresql package puts them)."""
    initdb, pg_ctl = (
        shutil.which("initdb", path=search_path),
        shutil.which("pg_ctl", path=search_path),
    )
    if initdb and pg_ctl:
        return Path(initdb), Path(pg_ctl)
    for folder in sorted(glob.glob(searched), key=_version_of, reverse=True):
        found = Path(folder, "initdb"), Path(folder, "pg_ctl")
        if all(os.access(path, os.X_OK) for path in found):
            return found
    raise PostgresUnavailable(
        f"PostgreSQL's server binaries initdb and pg_ctl are not on PATH nor in {searched} "
        "(install the postgresql package, or set PG_TEST_URL to a server's URL)"
    )


def no_postgres(missing: PostgresUnavailable) -> NoReturn:
    """Skip the test that needs PostgreSQL, saying what is missing; under ``CI=true`` fail
    it instead: CI must run every PostgreSQL test."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true: the PostgreSQL tests must run, but {missing}", pytrace=False)
    pytest.skip(f"no PostgreSQL: {missing}")


def _version_of(folder: str) -> int:
    name = Path(folder).parent.name
    return int(name) if name.isdigit() else 0


def _as_server_user() -> list[str]:
    """The prefix that runs a command as the server's user: none unless we are root."""
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser")
    if runuser is None:
        raise PostgresUnavailable("running as root, initdb needs runuser, which is not installed")
    try:
        pwd.getpwnam(_SERVER_USER)
    except KeyError:
        raise PostgresUnavailable(
            f"running as root, initdb must run as the {_SERVER_USER!r} user, who does not exist"
        ) from None
    return [runuser, "-u", _SERVER_USER, "--"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class ThrowawayCluster:
    """A private PostgreSQL server in ``folder``; ``url`` is its superuser's maintenance
    database."""

    folder: Path
    port: int
    pg_ctl: Path
    prefix: list[str]

    @property
    def url(self) -> str:
        return f"postgresql://{_SERVER_USER}@127.0.0.1:{self.port}/postgres"

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @classmethod
    def start(cls) -> ThrowawayCluster:
        initdb, pg_ctl = find_server_binaries()
        prefix = _as_server_user()
        folder = Path(tempfile.mkdtemp(prefix="kling-pg-"))
        try:
            if prefix:
                user = pwd.getpwnam(_SERVER_USER)
                os.chown(folder, user.pw_uid, user.pw_gid)
            _run([*prefix, str(initdb), *_INITDB_OPTIONS, "-D", str(folder / "data")])
            return cls._start_on_a_free_port(folder, pg_ctl, prefix)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    @classmethod
    def _start_on_a_free_port(
        cls, folder: Path, pg_ctl: Path, prefix: list[str]
    ) -> ThrowawayCluster:
        for _ in range(_PORT_TRIES - 1):
            cluster = cls(folder, _free_port(), pg_ctl, prefix)
            try:
                cluster._start_server()
                return cluster
            except RuntimeError as exc:
                if "already in use" not in str(exc):
                    raise
        cluster = cls(folder, _free_port(), pg_ctl, prefix)
        cluster._start_server()
        return cluster

    def _start_server(self) -> None:
        settings = {
            "port": str(self.port),
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.folder),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",  # the crash suite runs several bots, ten each at most
        }
        options = " ".join(f"-c {name}={shlex.quote(value)}" for name, value in settings.items())
        try:
            self._pg_ctl_start(options)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\nserver log:\n{self.log()[-2000:]}") from None

    def _pg_ctl_start(self, options: str) -> None:
        _run(
            [
                *self.prefix,
                str(self.pg_ctl),
                "start",
                "-w",
                "-t",
                str(_START_TIMEOUT),
                "-D",
                str(self.data),
                "-l",
                str(self.folder / "server.log"),
                "-o",
                options,
            ]
        )

    def log(self) -> str:
        try:
            return (self.folder / "server.log").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """End the server at once (nothing in it is kept) and remove its folder."""
        try:
            subprocess.run(
                [*self.prefix, str(self.pg_ctl), "stop", "-m", "immediate", "-D", str(self.data)],
                capture_output=True,
                timeout=60,
                check=False,
            )
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


# -U: the superuser is "postgres" whoever runs initdb; C locale: no locale data needed, the
# same sort order everywhere; --no-sync: a throwaway cluster need not reach the disk.
_INITDB_OPTIONS = ["-U", _SERVER_USER, "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"]


def _run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"{shlex.join(command)} failed ({done.returncode}): "
            f"{(done.stderr or done.stdout).strip()[-2000:]}"
        )


# --- one database per test


def database_url(server_url: str, name: str) -> str:
    """``server_url`` naming database ``name`` instead (user, password and options kept)."""
    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def create_database(server_url: str) -> str:
    """A new, empty database on the server; its URL. Named apart from every other run's."""
    name = f"kling_test_{os.getpid()}_{next(_database_numbers)}_{secrets.token_hex(3)}"
    connection = await asyncpg.connect(server_url)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return database_url(server_url, name)


async def drop_database(server_url: str, url: str) -> None:
    """Remove the database ``url`` names, ending any connection a test left open."""
    name = urlsplit(url).path.lstrip("/")
    connection = await asyncpg.connect(server_url)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()
