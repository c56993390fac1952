"""The batched enqueue path writes jobs a real arq Worker runs, with arq's own dedup semantics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from arq.worker import Worker, func

from square_mirror.constants import PROCESS_EVENT_JOB, QUEUE_NAME
from square_mirror.jobs import read_event_job
from square_mirror.queue import deserialize_job, redis_settings, serialize_job
from tests.factories import event_job
from tests.integration.webhooks.support import arq_pool, queued_jobs
from webhooks.enqueue import BatchEnqueuer, redis_client
from webhooks.metrics import WebhookMetrics


def payload(n: int, event_type: str = "customer.updated") -> dict[str, Any]:
    return event_job(n, event_type=event_type, event_id=f"evt-{n}", customer_id=f"C{n}")


@pytest.fixture
async def enqueuer(redis_url: str) -> AsyncIterator[BatchEnqueuer]:
    redis = redis_client(redis_url, 2.0)
    batch = BatchEnqueuer(redis, metrics=WebhookMetrics())
    yield batch
    await batch.close()
    await redis.aclose()


async def run_worker_until_empty(redis_url: str, seen: list[dict[str, Any]]) -> None:
    async def process_event(_ctx: dict[str, Any], job_payload: dict[str, Any]) -> str:
        seen.append(job_payload)
        return read_event_job(job_payload).event_id

    worker = Worker(
        functions=[func(process_event, name=PROCESS_EVENT_JOB)],
        redis_settings=redis_settings(redis_url),
        queue_name=QUEUE_NAME,
        job_serializer=serialize_job,
        job_deserializer=deserialize_job,
        burst=True,
        poll_delay=0.05,
        handle_signals=False,
        keep_result=3600,
    )
    try:
        await asyncio.wait_for(worker.async_run(), 30)
    finally:
        await worker.close()
    assert worker.jobs_failed == 0


async def test_a_real_arq_worker_runs_the_jobs_this_path_wrote(enqueuer: BatchEnqueuer, redis_url: str) -> None:
    payloads = [payload(n) for n in range(20)]
    assert await asyncio.gather(*(enqueuer.enqueue(p["event_id"], p) for p in payloads)) == [True] * 20
    seen: list[dict[str, Any]] = []
    await run_worker_until_empty(redis_url, seen)
    assert sorted(seen, key=lambda p: p["event_id"]) == sorted(payloads, key=lambda p: p["event_id"])
    async with arq_pool(redis_url) as pool:
        results = await pool.all_job_results()
    assert sorted(r.job_id for r in results) == sorted(p["event_id"] for p in payloads)
    assert all(r.success and r.result == r.job_id for r in results)


async def test_a_duplicate_event_id_is_a_no_op_while_queued(enqueuer: BatchEnqueuer, redis_url: str) -> None:
    first = payload(1)
    changed = {**first, "version": 99}
    assert await enqueuer.enqueue("evt-1", first) is True
    assert await enqueuer.enqueue("evt-1", changed) is False
    # Duplicates inside one batch: exactly one wins.
    same_batch = await asyncio.gather(*(enqueuer.enqueue("evt-2", payload(2)) for _ in range(10)))
    assert sorted(same_batch) == [False] * 9 + [True]
    jobs = await queued_jobs(redis_url)
    assert sorted(j.job_id for j in jobs) == ["evt-1", "evt-2"]
    assert list(next(j for j in jobs if j.job_id == "evt-1").args) == [first]  # the first one stays


async def test_a_redelivery_after_the_job_ran_is_a_no_op_while_its_result_is_kept(
    enqueuer: BatchEnqueuer, redis_url: str
) -> None:
    assert await enqueuer.enqueue("evt-1", payload(1)) is True
    seen: list[dict[str, Any]] = []
    await run_worker_until_empty(redis_url, seen)
    assert len(seen) == 1
    assert await enqueuer.enqueue("evt-1", payload(1)) is False
    assert await queued_jobs(redis_url) == []


async def test_agrees_with_arqs_own_enqueue_job_both_ways(enqueuer: BatchEnqueuer, redis_url: str) -> None:
    async with arq_pool(redis_url) as pool:
        ours = payload(1)
        assert await enqueuer.enqueue("evt-1", ours) is True
        assert await pool.enqueue_job(PROCESS_EVENT_JOB, ours, _job_id="evt-1", _queue_name=QUEUE_NAME) is None
        theirs = payload(2)
        assert await pool.enqueue_job(PROCESS_EVENT_JOB, theirs, _job_id="evt-2", _queue_name=QUEUE_NAME)
        assert await enqueuer.enqueue("evt-2", theirs) is False
        jobs = {j.job_id: j for j in await pool.queued_jobs(queue_name=QUEUE_NAME)}
        # Same shape and the same expiry (arq's default: one day) whichever path wrote the job.
        for job_id, expected in (("evt-1", ours), ("evt-2", theirs)):
            job = jobs[job_id]
            assert (job.function, list(job.args), job.kwargs, job.job_try) == (PROCESS_EVENT_JOB, [expected], {}, None)
        ttl_ours = await pool.pttl("arq:job:evt-1")
        ttl_theirs = await pool.pttl("arq:job:evt-2")
        assert abs(ttl_ours - ttl_theirs) < 5_000
        assert 86_000_000 < ttl_ours <= 86_400_000


async def test_concurrent_enqueues_share_round_trips_and_land_exactly_once(redis_url: str) -> None:
    redis = redis_client(redis_url, 2.0)
    metrics = WebhookMetrics()
    enqueuer = BatchEnqueuer(redis, metrics=metrics, max_in_flight=1)
    try:
        ids = [n % 200 for n in range(600)]
        results = await asyncio.gather(*(enqueuer.enqueue(f"evt-{n}", payload(n)) for n in ids))
    finally:
        await enqueuer.close()
        await redis.aclose()
    assert sum(results) == 200
    jobs = await queued_jobs(redis_url)
    assert sorted(j.job_id for j in jobs) == sorted(f"evt-{n}" for n in range(200))
    round_trips = metrics.registry.get_sample_value("square_mirror_webhook_enqueue_batch_size_count")
    assert round_trips is not None and round_trips < 20


async def test_a_closed_enqueuer_refuses_new_jobs(redis_url: str) -> None:
    from webhooks.enqueue import QueueUnavailable

    redis = redis_client(redis_url, 2.0)
    enqueuer = BatchEnqueuer(redis)
    pending = asyncio.ensure_future(enqueuer.enqueue("evt-1", payload(1)))
    await asyncio.sleep(0)
    await enqueuer.close()
    assert await pending is True  # a job accepted before close still gets its acknowledgement
    with pytest.raises(QueueUnavailable):
        await enqueuer.enqueue("evt-2", payload(2))
    await redis.aclose()


async def test_answered_jobs_are_released_at_once_not_at_the_watchdogs_next_tick(enqueuer: BatchEnqueuer) -> None:
    import gc

    from webhooks.enqueue import _Pending

    assert all(await asyncio.gather(*(enqueuer.enqueue(f"evt-{n}", payload(n)) for n in range(50))))
    # Held until the tick, they outlived the cyclic collector's youngest generation (CPU per request).
    assert not [obj for obj in gc.get_objects() if type(obj) is _Pending]
