from __future__ import annotations

import json
import os
import subprocess
import sys

import asyncpg

from worker.store import set_merchant_auth


def _status(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")} | env
    return subprocess.run([sys.executable, "-m", "square_mirror", "status", *args], capture_output=True, text=True,
                          env=full, timeout=60)


async def test_status_is_healthy_on_an_empty_mirror_and_reports_the_queue(db_dsn: str, redis_url: str) -> None:
    result = _status({"DATABASE_URL": db_dsn, "REDIS_URL": redis_url}, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["healthy"] is True
    assert report["queue"] == {"depth": 0, "oldest_age_seconds": 0.0}


async def test_unauthorized_merchant_and_failed_run_make_it_unhealthy(db_dsn: str, db_pool: asyncpg.Pool) -> None:
    await set_merchant_auth(db_pool, "M1", ok=False, error="RetrieveCustomer: 401 UNAUTHORIZED")
    await db_pool.execute(
        "INSERT INTO square.sync_runs (merchant_id, kind, status, finished_at)"
        " VALUES ('M2', 'backfill', 'failed', now())")
    await db_pool.execute(
        "INSERT INTO square.webhook_events (merchant_id, event_id, type, outcome, processed_at, created_at)"
        " VALUES ('M2', 'E1', 'customer.updated', 'failed', now(), now() - interval '2 seconds')")
    result = _status({"DATABASE_URL": db_dsn}, "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["merchants"]["M1"]["auth_status"] == "unauthorized"
    assert report["merchants"]["M2"]["runs"]["backfill"]["status"] == "failed"
    assert report["merchants"]["M2"]["failed_events"] == 1
    assert any("unauthorized" in p for p in report["problems"])
    text = _status({"DATABASE_URL": db_dsn})
    assert "UNHEALTHY" in text.stdout


async def test_failed_events_only_count_with_strict(db_dsn: str, db_pool: asyncpg.Pool) -> None:
    await db_pool.execute(
        "INSERT INTO square.webhook_events (merchant_id, event_id, type, outcome, processed_at)"
        " VALUES ('M3', 'E1', 'customer.updated', 'failed', now())")
    assert _status({"DATABASE_URL": db_dsn}).returncode == 0
    assert _status({"DATABASE_URL": db_dsn}, "--strict").returncode == 1


def test_unreachable_database_exits_2() -> None:
    from square_mirror.embedded import free_port

    result = _status({"DATABASE_URL": f"postgresql://x@127.0.0.1:{free_port()}/db"})
    assert result.returncode == 2


async def test_strict_fails_when_a_staleness_bound_is_over_its_limit(db_dsn: str, db_pool: asyncpg.Pool) -> None:
    # A seller known since 2020 whose lanes never completed: over the limit; status without --strict does not care.
    await db_pool.execute("INSERT INTO square.merchants (merchant_id, first_seen_at) VALUES ('OLD', '2020-01-01Z')")
    plain = _status({"DATABASE_URL": db_dsn}, "--json")
    assert plain.returncode == 0, plain.stdout + plain.stderr
    report = json.loads(plain.stdout)
    assert report["merchants"]["OLD"]["freshness"]["segments"] == {
        "complete_as_of": None, "staleness_seconds": None, "target_seconds": 300, "limit_seconds": 600.0,
        "exceeds_limit": True}
    strict = _status({"DATABASE_URL": db_dsn}, "--strict")
    assert strict.returncode == 1
    assert "OLD: lane segments never completed" in strict.stdout
    assert "staleness bounds: incremental never (over 120 s)" in strict.stdout
    # A succeeded sweep and an events pass (both began moments ago, well within every limit): healthy again.
    await db_pool.execute(
        "INSERT INTO square.sync_runs (merchant_id, kind, status, started_at, finished_at) VALUES"
        " ('OLD', 'sweep', 'succeeded', now(), now()), ('OLD', 'reconcile:events', 'succeeded', now(), now())")
    again = _status({"DATABASE_URL": db_dsn}, "--strict")
    assert again.returncode == 0, again.stdout
