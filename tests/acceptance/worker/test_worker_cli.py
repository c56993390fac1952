"""`square-mirror worker` and `square-mirror redrive` as real processes."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import aiohttp
import asyncpg
from arq.connections import create_pool

from emulator.testing import run_emulator
from square_mirror.constants import PROCESS_EVENT_JOB, QUEUE_NAME
from square_mirror.jobs import build_event_job
from square_mirror.queue import deserialize_job, redis_settings, serialize_job
from tests.services import free_port_for_tests


def _env(db_dsn: str, redis_url: str, base_url: str, token: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update({"DATABASE_URL": db_dsn, "REDIS_URL": redis_url, "SQUARE_BASE_URL": base_url,
                "SQUARE_ACCESS_TOKEN": token, "WORKER_METRICS_PORT": "0", "SQUARE_MAX_REQUESTS_PER_SECOND": "0",
                "PYTHONPATH": os.getcwd()})
    env.update(extra)
    return env


async def _square_mirror(*args: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(sys.executable, "-m", "square_mirror", *args, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def test_worker_burst_drains_the_queue_into_postgres(db_dsn: str, redis_url: str) -> None:
    async with run_emulator() as emu:
        state = emu.emulator.merchants[emu.merchant_id]
        for n in range(3):
            state.create_customer({"given_name": f"C{n}"})
        redis = await create_pool(redis_settings(redis_url), job_serializer=serialize_job,
                                  job_deserializer=deserialize_job, default_queue_name=QUEUE_NAME)
        try:
            for _ts, event in state.events.entries:
                await redis.enqueue_job(PROCESS_EVENT_JOB, build_event_job(event), _job_id=event["event_id"])
        finally:
            await redis.aclose()
        proc = await _square_mirror("worker", "--burst", env=_env(db_dsn, redis_url, emu.base_url, emu.token))
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()[-2000:]
    conn = await asyncpg.connect(db_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM square.customers_current") == 3
        assert await conn.fetchval("SELECT count(*) FROM square.webhook_events WHERE outcome = 'applied'") == 3
    finally:
        await conn.close()
    assert b"Bearer" not in out and emu.token.encode() not in out  # no secrets in the logs


async def test_worker_serves_metrics_and_stops_on_sigterm(db_dsn: str, redis_url: str) -> None:
    port = free_port_for_tests()
    async with run_emulator() as emu:
        env = _env(db_dsn, redis_url, emu.base_url, emu.token, WORKER_METRICS_PORT=str(port),
                   WORKER_SHUTDOWN_GRACE_SECONDS="2")
        proc = await _square_mirror("worker", env=env)
        try:
            body = ""
            async with aiohttp.ClientSession() as session:
                for _ in range(100):
                    try:
                        async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
                            body = await resp.text()
                            break
                    except aiohttp.ClientError:
                        await asyncio.sleep(0.1)
            assert "square_mirror_worker_queue_depth 0.0" in body
            assert "square_mirror_worker_job_seconds" in body
            assert "square_mirror_square_requests_total" in body
            assert "# TYPE square_mirror_lane_staleness_seconds gauge" in body  # read from Postgres at the scrape
        finally:
            proc.send_signal(signal.SIGTERM)
            out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()[-2000:]
        assert b"metrics_refresh_failed" not in out + err


async def test_redrive_requires_a_selection(db_dsn: str, redis_url: str) -> None:
    proc = await _square_mirror("redrive", env=_env(db_dsn, redis_url, "http://127.0.0.1:1", "t"))
    out, _err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2 and b"--all-failed" in out
    proc = await _square_mirror("redrive", "--all-failed", env=_env(db_dsn, redis_url, "http://127.0.0.1:1", "t"))
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    assert b"re-enqueued 0 event(s)" in out


async def test_sigterm_lets_the_running_job_finish(db_dsn: str, redis_url: str) -> None:
    async with run_emulator() as emu:
        await emu.set_faults(latency_ms=1500)  # the job is mid-fetch when SIGTERM arrives
        faults = emu.emulator.faults
        answer_after_latency = faults.before
        fetching = asyncio.Event()

        async def before(merchant_id: str, operation: str) -> None:
            if operation in ("RetrieveCustomer", "BulkRetrieveCustomers"):
                fetching.set()  # the job's fetch reached Square and waits out its latency
            await answer_after_latency(merchant_id, operation)

        faults.before = before  # type: ignore[method-assign]
        state = emu.emulator.merchants[emu.merchant_id]
        state.create_customer({"given_name": "Slow"})
        [(_ts, event)] = state.events.entries
        redis = await create_pool(redis_settings(redis_url), job_serializer=serialize_job,
                                  job_deserializer=deserialize_job, default_queue_name=QUEUE_NAME)
        try:
            await redis.enqueue_job(PROCESS_EVENT_JOB, build_event_job(event), _job_id=event["event_id"])
            proc = await _square_mirror("worker", env=_env(db_dsn, redis_url, emu.base_url, emu.token,
                                                           WORKER_SHUTDOWN_GRACE_SECONDS="10"))
            # SIGTERM while the fetch is in flight (0.3 s after the job was claimed hoped it was).
            await asyncio.wait_for(fetching.wait(), 60)
            proc.send_signal(signal.SIGTERM)
            _out, err = await asyncio.wait_for(proc.communicate(), 30)
            assert proc.returncode == 0, err.decode()[-2000:]
        finally:
            await redis.aclose()
    conn = await asyncpg.connect(db_dsn)
    try:
        outcome = await conn.fetchval("SELECT outcome FROM square.webhook_events")
        assert outcome == "applied"  # drained, not cancelled
    finally:
        await conn.close()
