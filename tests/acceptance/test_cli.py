from __future__ import annotations

import os
import subprocess
import sys

import asyncpg

from square_mirror.db import SCHEMA_VERSION
from tests.services import free_port_for_tests


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "square_mirror", *args], capture_output=True, text=True, env=full_env, timeout=120
    )


def test_help_lists_the_commands() -> None:
    result = _run("--help")
    assert result.returncode == 0
    assert "migrate" in result.stdout


async def test_migrate_applies_the_schema_to_database_url(db_dsn: str) -> None:
    conn = await asyncpg.connect(db_dsn)
    await conn.execute("DROP SCHEMA square CASCADE")
    await conn.close()
    result = _run("migrate", "--print", env={"DATABASE_URL": db_dsn})
    assert result.returncode == 0, result.stderr
    assert f"schema square is at version {SCHEMA_VERSION}" in result.stdout
    assert "view  square.customer_id_resolution" in result.stdout
    conn = await asyncpg.connect(db_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM square.customers") == 0
    finally:
        await conn.close()


def test_unreachable_database_url_is_a_clear_error_not_a_fallback() -> None:
    port = free_port_for_tests()
    result = _run("migrate", env={"DATABASE_URL": f"postgresql://nobody@127.0.0.1:{port}/none"})
    assert result.returncode == 2
    assert "DATABASE_URL is set but Postgres cannot be reached" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_database_url_names_the_variable() -> None:
    result = _run("migrate")
    assert result.returncode == 2
    assert "DATABASE_URL is not set" in result.stderr


def test_malformed_setting_fails_with_one_line_naming_it() -> None:
    result = _run("migrate", env={"DATABASE_URL": "postgresql://x@127.0.0.1/db", "LOG_LEVEL": "LOUD"})
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "LOG_LEVEL" in result.stderr
