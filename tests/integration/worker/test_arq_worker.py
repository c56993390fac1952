"""The real arq Worker built by worker.arq_settings: jobs enqueued under their event IDs, run in burst mode."""

from __future__ import annotations

import asyncpg
from arq.connections import create_pool

from emulator.testing import run_emulator
from square_mirror.constants import PROCESS_EVENT_JOB, QUEUE_NAME
from square_mirror.jobs import build_event_job
from square_mirror.queue import deserialize_job, redis_settings, serialize_job
from tests.integration.worker.support import worker_settings
from worker.arq_settings import FUNCTIONS, build_worker, worker_options


def test_worker_options_follow_the_issue() -> None:
    from square_mirror.settings import Secret, Settings

    options = worker_options(Settings(redis_url=Secret("redis://127.0.0.1:6379/3")))
    assert options["keep_result"] == 0 and options["keep_result_forever"] is False
    assert options["queue_name"] == QUEUE_NAME
    assert options["job_serializer"] is serialize_job and options["job_deserializer"] is deserialize_job
    assert options["max_jobs"] == 200 and options["poll_delay"] == 0.05
    assert options["job_completion_wait"] > 0
    assert options["max_tries"] >= 20  # enough tries for long outages
    assert options["job_timeout"] <= 60  # short and uniform: a killed job is re-run after timeout + 10 s
    names = [getattr(f, "name", getattr(f, "__name__", None)) for f in FUNCTIONS]
    assert names == [PROCESS_EVENT_JOB, "backfill_job", "reconcile_lane_job"]
    assert FUNCTIONS[0].keep_result_s == 0
    assert all(not hasattr(f, "timeout_s") or f.timeout_s is None for f in FUNCTIONS)  # one uniform timeout


async def test_enqueued_events_become_rows_and_finished_ids_can_be_enqueued_again(
    db_pool: asyncpg.Pool, redis_url: str
) -> None:
    async with run_emulator() as emu:
        state = emu.emulator.merchants[emu.merchant_id]
        ids = []
        for n in range(5):
            rec, _ = state.create_customer({"given_name": f"C{n}"})
            state.update_customer(rec.id, {"family_name": "X"}, None, clear_null=True)
            ids.append(rec.id)
        events = [e for _ts, e in state.events.entries]
        settings = worker_settings(emu.base_url, emu.token, redis_url)
        redis = await create_pool(redis_settings(redis_url), job_serializer=serialize_job,
                                  job_deserializer=deserialize_job, default_queue_name=QUEUE_NAME)
        try:
            for event in events:
                job = await redis.enqueue_job(PROCESS_EVENT_JOB, build_event_job(event), _job_id=event["event_id"])
                assert job is not None
            worker = build_worker(settings, burst=True, handle_signals=False, ctx={"pool": db_pool}, cron_jobs=[])
            await worker.main()
            await worker.close()
            assert worker.jobs_failed == 0 and worker.jobs_complete == len(events)
            versions = {r["id"]: r["version"] for r in await db_pool.fetch("SELECT id, version FROM square.customers")}
            assert versions == {cid: 1 for cid in ids}
            assert await redis.keys("arq:result:*") == []  # keep_result=0
            # A duplicate delivery of a finished event gets enqueued again (not silently dropped by arq) ...
            again = await redis.enqueue_job(PROCESS_EVENT_JOB, build_event_job(events[0]),
                                            _job_id=events[0]["event_id"])
            assert again is not None
            worker = build_worker(settings, burst=True, handle_signals=False, ctx={"pool": db_pool}, cron_jobs=[])
            await worker.main()
            await worker.close()
            # ... and is recognised as a duplicate by the inbox.
            row = await db_pool.fetchrow("SELECT outcome, attempts FROM square.webhook_events WHERE event_id = $1",
                                         events[0]["event_id"])
            assert row is not None and row["attempts"] == 2 and row["outcome"] in ("applied", "stale")
        finally:
            await redis.aclose()


async def test_a_job_this_worker_is_running_is_skipped_by_the_poll_without_claiming_it(redis_url: str) -> None:
    import asyncio

    from square_mirror.settings import Secret, Settings

    settings = Settings(redis_url=Secret(redis_url))
    redis = await create_pool(redis_settings(redis_url), job_serializer=serialize_job,
                              job_deserializer=deserialize_job, default_queue_name=QUEUE_NAME)
    worker = build_worker(settings, handle_signals=False, cron_jobs=[])
    worker._pool = redis
    running = asyncio.get_running_loop().create_future()  # stands for the job's task, still running
    try:
        await redis.enqueue_job(PROCESS_EVENT_JOB, {"v": 0}, _job_id="running-here")
        worker.tasks["running-here"] = running  # type: ignore[assignment]
        await worker.start_jobs([b"running-here"])
        assert worker.job_counter == 0  # no slot taken
        assert not await redis.exists("arq:in-progress:running-here")
        assert await redis.zscore(QUEUE_NAME, "running-here") is not None  # still queued for whoever runs it
    finally:
        running.cancel()
        worker.tasks.clear()
        await redis.aclose()
