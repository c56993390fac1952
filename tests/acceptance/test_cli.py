from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import asyncpg

from emulator.testing import run_emulator
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


async def _migrate(db_dsn: str, **env: str) -> tuple[int, str]:
    """`square-mirror migrate` as a process, without blocking the loop that serves an in-process emulator."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_", "SQUARE_"))}
    full_env.update(DATABASE_URL=db_dsn, **env)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "square_mirror", "migrate", env=full_env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=120)
    return proc.returncode or 0, out.decode()


async def test_migrate_enables_the_configured_sellers_events(db_dsn: str) -> None:
    async with run_emulator() as emu:  # events disabled, as on Square
        code, out = await _migrate(db_dsn, SQUARE_BASE_URL=emu.base_url, SQUARE_ACCESS_TOKEN=emu.token,
                                   SQUARE_MERCHANT_ID=emu.merchant_id)
        assert code == 0, out
        assert f"events for {emu.merchant_id}: searchable" in out
        assert (await emu.truth())["events_api"]["enabled"] is True
    conn = await asyncpg.connect(db_dsn)
    try:
        assert await conn.fetchval("SELECT events_searchable_since IS NOT NULL FROM square.merchants") is True
    finally:
        await conn.close()


async def test_migrate_succeeds_when_square_cannot_be_reached(db_dsn: str) -> None:
    code, out = await _migrate(db_dsn, SQUARE_BASE_URL=f"http://127.0.0.1:{free_port_for_tests()}",
                               SQUARE_ACCESS_TOKEN="EAAAnotreachable", SQUARE_MERCHANT_ID="MLNOWHERE")
    assert code == 0, out
    assert "events for MLNOWHERE: not enabled yet" in out
