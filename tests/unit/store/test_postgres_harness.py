"""The suite's own PostgreSQL (testing/postgres.py): finding the binaries, skipping or failing
without them, and a throwaway cluster that leaves nothing behind."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import asyncpg
import pytest

from testing.postgres import (
    PostgresUnavailable,
    ThrowawayCluster,
    database_url,
    find_server_binaries,
    no_postgres,
)


def fake_binaries(folder: Path) -> None:
    folder.mkdir(parents=True)
    for name in ("initdb", "pg_ctl"):
        path = folder / name
        path.write_text("#!/bin/sh\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_without_binaries_the_reason_names_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(PostgresUnavailable) as caught:
        find_server_binaries(search_path=str(tmp_path), searched=str(tmp_path / "*" / "bin"))
    assert "initdb and pg_ctl" in str(caught.value) and "PG_TEST_URL" in str(caught.value)


def test_binaries_on_path_first_then_the_newest_version_folder(tmp_path: Path) -> None:
    for version in ("9", "13", "15"):
        fake_binaries(tmp_path / "lib" / version / "bin")
    searched = str(tmp_path / "lib" / "*" / "bin")
    initdb, pg_ctl = find_server_binaries(search_path=str(tmp_path), searched=searched)
    assert initdb == tmp_path / "lib" / "15" / "bin" / "initdb"
    assert pg_ctl.name == "pg_ctl"
    fake_binaries(tmp_path / "path")
    found = find_server_binaries(search_path=str(tmp_path / "path"), searched=searched)
    assert found[0] == tmp_path / "path" / "initdb"


def test_no_postgres_skips_with_the_reason_but_fails_under_ci(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    missing = PostgresUnavailable("initdb is not on PATH")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="initdb is not on PATH"):
        no_postgres(missing)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"CI=true.*initdb is not on PATH"):
        no_postgres(missing)


def test_a_database_url_keeps_the_credentials_and_options() -> None:
    url = database_url("postgresql://bot:pw@db:5433/postgres?sslmode=disable", "kling_test_1")
    assert url == "postgresql://bot:pw@db:5433/kling_test_1?sslmode=disable"


async def test_a_throwaway_cluster_serves_loopback_and_leaves_nothing_behind() -> None:
    try:
        cluster = await asyncio.to_thread(ThrowawayCluster.start)
    except PostgresUnavailable as missing:
        no_postgres(missing)
    try:
        assert cluster.url.startswith(f"postgresql://postgres@127.0.0.1:{cluster.port}/")
        connection = await asyncpg.connect(cluster.url)
        try:
            settings = {
                name: await connection.fetchval(f"SHOW {name}")
                for name in ("fsync", "synchronous_commit", "full_page_writes", "listen_addresses")
            }
        finally:
            await connection.close()
        assert settings == {
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "listen_addresses": "127.0.0.1",
        }
        assert any(name.startswith(".s.PGSQL.") for name in os.listdir(cluster.folder))
    finally:
        await asyncio.to_thread(cluster.stop)
    assert not cluster.folder.exists()
    with pytest.raises(OSError):
        await asyncpg.connect(cluster.url, timeout=5)
