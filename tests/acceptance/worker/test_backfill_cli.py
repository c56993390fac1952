"""`square-mirror backfill` and `reconcile` as processes: exit codes, a SIGKILLed run resumed, SIGTERM, many sellers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from emulator import EmulatorConfig
from emulator.testing import EmulatorHandle, run_emulator
from tests.mirror_check import assert_mirror_matches

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
async def emu() -> AsyncIterator[EmulatorHandle]:
    async with run_emulator(EmulatorConfig(seed=3, sellers={"MSELLERONE": "token-one", "MSELLERTWO": "token-two"}),
                            ) as handle:
        yield handle


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL", "SQUARE_ACCESS_TOKEN", "SQUARE_TOKENS_FILE", "SQUARE_MERCHANT_ID")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


async def _start(*args: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "square_mirror", *args, env=_env(env),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def _finish(proc: asyncio.subprocess.Process, timeout: float = 60) -> tuple[int, list[dict[str, object]]]:
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    summaries = []
    for line in out.decode().splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict) and "status" in value and "merchant_id" in value and "event" not in value:
            summaries.append(value)
    assert proc.returncode is not None, err.decode()[-2000:]
    return proc.returncode, summaries


async def test_backfill_learns_the_merchant_from_the_token(emu: EmulatorHandle, db_dsn: str,
                                                           db_pool: asyncpg.Pool) -> None:
    await emu.seed(customers=800, merchant_id="MSELLERONE")
    env = {"DATABASE_URL": db_dsn, "SQUARE_BASE_URL": emu.base_url, "SQUARE_ACCESS_TOKEN": "token-one",
           "SQUARE_MAX_REQUESTS_PER_SECOND": "0"}
    code, summaries = await _finish(await _start("backfill", "--all", env=env))
    assert code == 0, summaries
    assert [s["merchant_id"] for s in summaries] == ["MSELLERONE"] and summaries[0]["status"] == "succeeded"
    await assert_mirror_matches(db_pool, emu, "MSELLERONE")

    code, summaries = await _finish(await _start("reconcile", "--merchant", "MSELLERONE", env=env))
    assert code == 0, summaries
    assert {s["kind"] for s in summaries} == {"reconcile:incremental", "reconcile:segments", "reconcile:groups",
                                              "reconcile:events", "reconcile:custom_attributes"}


async def test_one_sellers_failure_does_not_stop_the_others(emu: EmulatorHandle, db_dsn: str, tmp_path: Path,
                                                            db_pool: asyncpg.Pool) -> None:
    await emu.seed(customers=200, merchant_id="MSELLERONE")
    await emu.seed(customers=200, merchant_id="MSELLERTWO")
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({"MSELLERONE": "revoked-or-wrong", "MSELLERTWO": "token-two"}))
    env = {"DATABASE_URL": db_dsn, "SQUARE_BASE_URL": emu.base_url, "SQUARE_TOKENS_FILE": str(tokens),
           "SQUARE_MAX_REQUESTS_PER_SECOND": "0"}
    code, summaries = await _finish(await _start("backfill", env=env))
    assert code == 1
    status = {s["merchant_id"]: s["status"] for s in summaries}
    assert status == {"MSELLERONE": "failed", "MSELLERTWO": "succeeded"}
    await assert_mirror_matches(db_pool, emu, "MSELLERTWO")


async def _wait_for_checkpoint(db_pool: asyncpg.Pool, pages_read: int, timeout: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        checkpoint = await db_pool.fetchval(
            "SELECT checkpoint FROM square.sync_runs WHERE status = 'running' ORDER BY run_id DESC LIMIT 1")
        if checkpoint and sum(p[4] for p in checkpoint.get("partitions", [])) >= pages_read * 100:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the backfill never checkpointed its progress")


async def test_sigkilled_backfill_resumes_without_redoing_partitions(emu: EmulatorHandle, db_dsn: str,
                                                                    db_pool: asyncpg.Pool) -> None:
    await emu.seed(customers=3000, merchant_id="MSELLERONE")
    await emu.set_faults(endpoint_latency_ms={"SearchCustomers": 150})
    env = {"DATABASE_URL": db_dsn, "SQUARE_BASE_URL": emu.base_url, "SQUARE_ACCESS_TOKEN": "token-one",
           "SQUARE_MERCHANT_ID": "MSELLERONE", "SQUARE_MAX_REQUESTS_PER_SECOND": "0", "BACKFILL_CONCURRENCY": "2"}
    proc = await _start("backfill", "--no-progress", env=env)
    await _wait_for_checkpoint(db_pool, 6)
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    killed = await db_pool.fetchrow("SELECT run_id, status, checkpoint FROM square.sync_runs ORDER BY run_id LIMIT 1")
    assert killed["status"] == "running"  # nobody could record anything
    read_before = sum(p[4] for p in killed["checkpoint"]["partitions"])

    await emu.set_faults(endpoint_latency_ms={})
    code, summaries = await _finish(await _start("backfill", "--no-progress", env=env))
    assert code == 0, summaries
    rows = await db_pool.fetch("SELECT run_id, status, checkpoint, counts FROM square.sync_runs ORDER BY run_id")
    assert [r["status"] for r in rows] == ["interrupted", "succeeded"]
    assert rows[1]["checkpoint"]["resumed_from"] == killed["run_id"]
    # Resumed from each partition's checkpointed position: what was committed before the kill is not re-read.
    assert rows[1]["counts"]["listed"] <= 3000 - read_before + 2 * 100
    await assert_mirror_matches(db_pool, emu, "MSELLERONE")


async def test_sigterm_records_an_interrupted_run(emu: EmulatorHandle, db_dsn: str, db_pool: asyncpg.Pool) -> None:
    await emu.seed(customers=3000, merchant_id="MSELLERONE")
    await emu.set_faults(endpoint_latency_ms={"SearchCustomers": 150})
    env = {"DATABASE_URL": db_dsn, "SQUARE_BASE_URL": emu.base_url, "SQUARE_ACCESS_TOKEN": "token-one",
           "SQUARE_MERCHANT_ID": "MSELLERONE", "SQUARE_MAX_REQUESTS_PER_SECOND": "0", "BACKFILL_CONCURRENCY": "2"}
    proc = await _start("backfill", env=env)
    await _wait_for_checkpoint(db_pool, 1)
    proc.send_signal(signal.SIGTERM)
    code, _ = await _finish(proc)
    assert code != 0
    row = await db_pool.fetchrow("SELECT status, finished_at FROM square.sync_runs ORDER BY run_id DESC LIMIT 1")
    assert row["status"] == "interrupted" and row["finished_at"] is not None


async def test_a_token_square_refuses_is_a_clear_error(emu: EmulatorHandle, db_dsn: str) -> None:
    env = {"DATABASE_URL": db_dsn, "SQUARE_BASE_URL": emu.base_url, "SQUARE_ACCESS_TOKEN": "revoked-token",
           "SQUARE_MAX_REQUESTS_PER_SECOND": "0"}
    proc = await _start("backfill", env=env)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert "cannot find the merchant of SQUARE_ACCESS_TOKEN" in err.decode()
    assert "revoked-token" not in err.decode()
