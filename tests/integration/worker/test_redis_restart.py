"""A worker process outlives a Redis restart: found by the chaos run, where every worker exited with a
ConnectionError traceback when Redis went away for a second, leaving the queue unserved until a supervisor
restarted them (and forever in the chaos harness, which plays no supervisor)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
from arq import create_pool

from square_mirror.constants import PROCESS_EVENT_JOB, QUEUE_NAME
from square_mirror.embedded import free_port, tcp_reachable
from square_mirror.queue import deserialize_job, redis_settings, serialize_job
from tests.factories import event_job
from tests.integration.webhooks.support import PrivateRedis


async def test_worker_process_keeps_serving_the_queue_after_redis_restarts(db_dsn: str,
                                                                           db_pool: asyncpg.Pool) -> None:
    redis = PrivateRedis()
    redis.start()
    metrics_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SQUARE_", "WORKER_"))}
    env.update({"DATABASE_URL": db_dsn, "REDIS_URL": redis.url, "SQUARE_BASE_URL": "http://127.0.0.1:9",
                "SQUARE_ACCESS_TOKEN": "EAAAnotused", "SQUARE_MERCHANT_ID": "MLTEST",
                "WORKER_METRICS_PORT": str(metrics_port)})
    log = tempfile.NamedTemporaryFile(prefix="sqm-worker-", suffix=".log")  # noqa: SIM115
    worker = subprocess.Popen([sys.executable, "-m", "square_mirror", "worker"], env=env, stdout=log,
                              stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not tcp_reachable("127.0.0.1", metrics_port) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert tcp_reachable("127.0.0.1", metrics_port), "the worker never started"
        redis.close()  # SIGKILL and its files removed: gone, data and all, like a crashed Redis
        redis.dir.mkdir()
        await asyncio.sleep(2.0)
        redis.start()
        await asyncio.sleep(2.0)
        assert worker.poll() is None, (f"the worker exited with code {worker.returncode} when Redis restarted:\n"
                                       + Path(log.name).read_text()[-3000:])

        # And it still takes jobs: a non-customer event is recorded as `ignored` without any Square call.
        payload = event_job(event_type="team_member.created", event_id="evt-after-restart",
                            data={"type": "team_member", "id": "TM1"})
        arq = await create_pool(redis_settings(redis.url), job_serializer=serialize_job,
                                job_deserializer=deserialize_job)
        try:
            await arq.enqueue_job(PROCESS_EVENT_JOB, payload, _job_id=payload["event_id"], _queue_name=QUEUE_NAME)
        finally:
            await arq.aclose()
        deadline = time.monotonic() + 60  # generous: only a worker that stopped taking jobs misses it
        outcome = None
        while outcome is None and time.monotonic() < deadline:
            outcome = await db_pool.fetchval("SELECT outcome FROM square.webhook_events WHERE event_id = $1",
                                             "evt-after-restart")
            await asyncio.sleep(0.1)
        assert outcome == "ignored"
    finally:
        worker.terminate()
        try:
            worker.wait(15)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        redis.close()
        log.close()
