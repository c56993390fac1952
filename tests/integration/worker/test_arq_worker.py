"""The real arq Worker built by worker.app: jobs enqueued under their event IDs, run in burst mode."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
from arq.connections import ArqRedis, create_pool
from arq.constants import (
    abort_jobs_ss,
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)
from arq.worker import Worker, func
from redis import exceptions as redis_exceptions
from redis.asyncio import client as redis_asyncio_client

from emulator.testing import run_emulator
from square_mirror.constants import CONNECT_SELLER_JOB, PROCESS_EVENT_JOB, QUEUE_NAME
from square_mirror.jobs import build_event_job
from square_mirror.queue import deserialize_job, redis_settings, serialize_job
from square_mirror.settings import Secret, Settings
from tests.integration.worker.support import worker_settings
from worker.app import FUNCTIONS, build_worker, build_workers, worker_options


def test_worker_options_follow_the_issue() -> None:
    options = worker_options(Settings(redis_url=Secret("redis://127.0.0.1:6379/3")))
    assert options["keep_result"] == 0 and options["keep_result_forever"] is False
    assert options["queue_name"] == QUEUE_NAME
    assert options["job_serializer"] is serialize_job and options["job_deserializer"] is deserialize_job
    assert options["max_jobs"] == 200 and options["poll_delay"] == 0.05
    assert options["job_completion_wait"] > 0
    assert options["max_tries"] >= 20  # enough tries for long outages
    assert options["job_timeout"] <= 60  # short and uniform: a killed job is re-run after timeout + 10 s
    names = [getattr(f, "name", getattr(f, "__name__", None)) for f in FUNCTIONS]
    assert names == [PROCESS_EVENT_JOB, CONNECT_SELLER_JOB, "backfill_job", "reconcile_lane_job"]
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
            workers = build_workers(settings, ["events", "lanes"], burst=True, ctx={"pool": db_pool}, cron=False)
            for w in workers:  # in burst mode a worker stops at an empty queue: the events' worker queues the pass
                await w.main()
            for w in workers:
                await w.close()
            # Plus the events pass queued (on the lanes queue) for the seller whose events the mirror had never
            # enabled.
            assert [(w.jobs_failed, w.jobs_complete) for w in workers] == [(0, len(events)), (0, 1)]
            assert await db_pool.fetchval("SELECT events_searchable_since IS NOT NULL FROM square.merchants")
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


# -- claiming a poll's jobs in one script (RedisTolerantWorker.start_jobs) ------------------------------------

class HeldJobs:
    """A job function that records each run and holds it until released, so claimed jobs keep their slots."""

    def __init__(self) -> None:
        self.runs: list[str] = []
        self.release = asyncio.Event()

    async def run(self, ctx: dict[str, Any], _payload: dict[str, Any]) -> None:
        self.runs.append(ctx["job_id"])
        await self.release.wait()


async def arq_pool(redis_url: str) -> ArqRedis:
    return await create_pool(redis_settings(redis_url), job_serializer=serialize_job,
                             job_deserializer=deserialize_job, default_queue_name=QUEUE_NAME)


def held_worker(redis_url: str, redis: ArqRedis, held: HeldJobs, **overrides: Any) -> Worker:
    settings = Settings(redis_url=Secret(redis_url))
    worker = build_worker(settings, handle_signals=False, cron_jobs=[],
                          functions=[func(held.run, name=PROCESS_EVENT_JOB, keep_result=0)], **overrides)
    worker._pool = redis
    return worker


async def enqueue(redis: ArqRedis, job_ids: list[str], **options: Any) -> list[bytes]:
    for job_id in job_ids:
        assert await redis.enqueue_job(PROCESS_EVENT_JOB, {"v": 0}, _job_id=job_id, **options) is not None
    return [job_id.encode() for job_id in job_ids]


async def finish(held: HeldJobs, *workers: Worker) -> None:
    held.release.set()
    await asyncio.gather(*(t for w in workers for t in w.tasks.values()))
    await asyncio.sleep(0)  # the tasks' done callbacks give the slots back


async def test_two_workers_competing_for_the_same_jobs_claim_each_exactly_once(redis_url: str) -> None:
    redis_a, redis_b = await arq_pool(redis_url), await arq_pool(redis_url)
    held = HeldJobs()
    a, b = held_worker(redis_url, redis_a, held), held_worker(redis_url, redis_b, held)
    try:
        ids = await enqueue(redis_a, [f"job-{n}" for n in range(60)])
        await asyncio.gather(a.start_jobs(ids), b.start_jobs(ids[::-1]))
        assert not set(a.tasks) & set(b.tasks)
        assert set(a.tasks) | set(b.tasks) == {i.decode() for i in ids}
        assert a.job_counter + b.job_counter == len(ids)
        # A later poll of either finds every job in progress: nothing claimed again, no slot kept.
        late = held_worker(redis_url, redis_b, held)
        await late.start_jobs(ids)
        assert late.tasks == {} and late.job_counter == 0
        await finish(held, a, b)
        assert sorted(held.runs) == sorted(i.decode() for i in ids)  # each job ran once
        assert await redis_a.zcard(QUEUE_NAME) == 0
    finally:
        held.release.set()
        await redis_a.aclose()
        await redis_b.aclose()


async def test_two_workers_in_burst_mode_run_each_job_once(db_pool: asyncpg.Pool, redis_url: str) -> None:
    runs: list[str] = []
    # Jobs wait until both workers have started one: each holds at most max_jobs (20) of the 300, so the other
    # always finds work, and "both took part" holds on any machine (it assumed one could not finish all first).
    workers_seen: set[int] = set()
    both_started = asyncio.Event()

    async def job(ctx: dict[str, Any], _payload: dict[str, Any]) -> None:
        runs.append(ctx["job_id"])
        workers_seen.add(ctx["worker"])
        if len(workers_seen) == 2:
            both_started.set()
        await asyncio.wait_for(both_started.wait(), 60)

    redis = await arq_pool(redis_url)
    settings = worker_settings("http://127.0.0.1:9", "EAAAnotused", redis_url)  # no Square call is made
    try:
        ids = await enqueue(redis, [f"job-{n}" for n in range(300)])
        workers = [build_worker(settings, burst=True, handle_signals=False, cron_jobs=[], max_jobs=20,
                                ctx={"pool": db_pool, "worker": n},
                                functions=[func(job, name=PROCESS_EVENT_JOB, keep_result=0)]) for n in range(2)]
        await asyncio.gather(*(w.main() for w in workers))
        for w in workers:
            await w.close()
        assert sorted(runs) == sorted(i.decode() for i in ids)
        assert all(w.jobs_complete > 0 for w in workers)  # both took part
        assert await redis.zcard(QUEUE_NAME) == 0 and await redis.keys("arq:in-progress:*") == []
    finally:
        await redis.aclose()


async def test_deferred_in_progress_elsewhere_and_dequeued_jobs_are_not_claimed(redis_url: str) -> None:
    redis = await arq_pool(redis_url)
    held = HeldJobs()
    worker = held_worker(redis_url, redis, held)
    try:
        await enqueue(redis, ["deferred"], _defer_by=60)
        await enqueue(redis, ["elsewhere", "dequeued", "ready"])
        await redis.psetex(in_progress_key_prefix + "elsewhere", 30_000, b"other-worker")
        await redis.zrem(QUEUE_NAME, "dequeued")
        await worker.start_jobs([b"deferred", b"elsewhere", b"dequeued", b"never-enqueued", b"ready"])
        assert list(worker.tasks) == ["ready"]
        assert worker.job_counter == 1 and worker.sem._value == worker.max_jobs
        assert await redis.get(in_progress_key_prefix + "elsewhere") == b"other-worker"  # untouched
        assert sorted(await redis.keys(in_progress_key_prefix + "*")) == [
            (in_progress_key_prefix + k).encode() for k in ("elsewhere", "ready")]
        ttl_ms = await redis.pttl(in_progress_key_prefix + "ready")
        assert worker.in_progress_timeout_s * 1000 - 5_000 < ttl_ms <= worker.in_progress_timeout_s * 1000
        assert await redis.zscore(QUEUE_NAME, "deferred") is not None  # still waiting for its time
        await finish(held, worker)
        assert held.runs == ["ready"] and worker.job_counter == 0
    finally:
        held.release.set()
        await redis.aclose()


async def test_claims_stop_at_the_free_slots_and_the_slots_come_back_when_jobs_finish(redis_url: str) -> None:
    redis = await arq_pool(redis_url)
    held = HeldJobs()
    worker = held_worker(redis_url, redis, held, max_jobs=3)
    start_sem = worker.sem._value
    try:
        ids = await enqueue(redis, [f"job-{n}" for n in range(5)])
        await worker.start_jobs(ids)
        assert list(worker.tasks) == ["job-0", "job-1", "job-2"]  # the queue's order
        assert worker.job_counter == 3 and worker.sem._value == start_sem - 3
        await worker.start_jobs(ids)  # full: nothing more claimed, no slot leaked
        assert len(worker.tasks) == 3 and worker.job_counter == 3 and worker.sem._value == start_sem - 3
        assert not await redis.exists(in_progress_key_prefix + "job-3", in_progress_key_prefix + "job-4")
        await finish(held, worker)
        assert worker.job_counter == 0 and worker.sem._value == start_sem
        worker.tasks.clear()
        held.release = asyncio.Event()
        await worker.start_jobs(ids)  # the rest, now that slots are free
        assert sorted(worker.tasks) == ["job-3", "job-4"] and worker.job_counter == 2
        await finish(held, worker)
        assert sorted(held.runs) == [i.decode() for i in ids]
        assert worker.job_counter == 0 and worker.sem._value == start_sem
    finally:
        held.release.set()
        await redis.aclose()


async def test_the_claim_survives_redis_forgetting_the_script(redis_url: str) -> None:
    redis = await arq_pool(redis_url)
    held = HeldJobs()
    worker = held_worker(redis_url, redis, held)
    try:
        ids = await enqueue(redis, ["first", "second"])
        await worker.start_jobs(ids[:1])
        await redis.script_flush()  # what a Redis restarted empty looks like to EVALSHA
        await worker.start_jobs(ids)
        assert sorted(worker.tasks) == ["first", "second"]
        await finish(held, worker)
    finally:
        held.release.set()
        await redis.aclose()


@pytest.mark.parametrize("error", [redis_exceptions.ConnectionError, redis_exceptions.TimeoutError])
async def test_redis_trouble_while_claiming_gives_the_slots_back_and_leaves_the_jobs_queued(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, error: type[Exception]
) -> None:
    redis = await arq_pool(redis_url)
    held = HeldJobs()
    worker = held_worker(redis_url, redis, held, max_jobs=3)
    start_sem = worker.sem._value

    async def unreachable(*_args: Any, **_kwargs: Any) -> Any:
        raise error("Redis went away")

    try:
        ids = await enqueue(redis, [f"job-{n}" for n in range(5)])
        with monkeypatch.context() as patch:
            patch.setattr(redis, "evalsha", unreachable)
            await worker.start_jobs(ids)  # logged, not raised: the poll loop goes on
            await worker._poll_iteration()
        assert worker.tasks == {} and worker.job_counter == 0 and worker.sem._value == start_sem
        assert await redis.zcard(QUEUE_NAME) == 5 and await redis.keys(in_progress_key_prefix + "*") == []
        await worker.start_jobs(ids)  # Redis is back: the jobs are claimed as usual
        assert len(worker.tasks) == 3
        await finish(held, worker)
    finally:
        held.release.set()
        await redis.aclose()


async def test_any_other_error_while_claiming_gives_the_slots_back_and_is_raised(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    redis = await arq_pool(redis_url)
    worker = held_worker(redis_url, redis, HeldJobs(), max_jobs=3)
    start_sem = worker.sem._value

    async def refused(*_args: Any, **_kwargs: Any) -> Any:
        raise redis_exceptions.ResponseError("OOM command not allowed when used memory > 'maxmemory'")

    try:
        ids = await enqueue(redis, ["job-0"])
        monkeypatch.setattr(redis, "evalsha", refused)
        with pytest.raises(redis_exceptions.ResponseError, match="OOM"):
            await worker.start_jobs(ids)
        assert worker.job_counter == 0 and worker.sem._value == start_sem
    finally:
        await redis.aclose()


# -- finishing the jobs that end together in one transaction (RedisTolerantWorker.finish_job) ----------------

FINISH_CASES = [  # finish, result_data, result_timeout_s, keep_result_forever, incr_score, keep_in_progress
    (finish, result, timeout, forever, incr, keep)
    for finish in (True, False) for result in (None, b"result") for timeout in (None, 60.0)
    for forever in (False, True) for incr in (None, 5_000) for keep in (None, 60.0)
]


async def seed_job(redis: ArqRedis, job_id: str) -> None:
    await redis.psetex(job_key_prefix + job_id, 600_000, b"job")
    await redis.psetex(in_progress_key_prefix + job_id, 600_000, b"1")
    await redis.set(retry_key_prefix + job_id, 2, ex=600)
    await redis.zadd(QUEUE_NAME, {job_id: 1_000})
    await redis.zadd(abort_jobs_ss, {job_id: 1_000})


async def job_state(redis: ArqRedis, job_id: str) -> dict[str, Any]:
    """Everything finish_job may touch for one job, with lifetimes rounded to whether and roughly how long."""
    state: dict[str, Any] = {}
    for prefix in (job_key_prefix, in_progress_key_prefix, retry_key_prefix, result_key_prefix):
        ttl = await redis.pttl(prefix + job_id)
        state[prefix] = (await redis.get(prefix + job_id), ttl if ttl < 0 else round(ttl, -5))
    state["queue"] = await redis.zscore(QUEUE_NAME, job_id)
    state["abort"] = await redis.zscore(abort_jobs_ss, job_id)
    return state


async def test_jobs_finishing_together_have_arqs_effects_in_one_transaction(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    redis = await arq_pool(redis_url)
    worker = held_worker(redis_url, redis, HeldJobs())
    stock = Worker(functions=[func(HeldJobs().run, name=PROCESS_EVENT_JOB)], queue_name=QUEUE_NAME,
                   redis_pool=redis, handle_signals=False)
    pipelines = 0
    real_pipeline = redis.pipeline

    def counting_pipeline(*args: Any, **kwargs: Any) -> Any:
        nonlocal pipelines
        pipelines += 1
        return real_pipeline(*args, **kwargs)

    try:
        for n, case in enumerate(FINISH_CASES):
            await seed_job(redis, f"stock-{n}")
            await seed_job(redis, f"batched-{n}")
            await Worker.finish_job(stock, f"stock-{n}", *case)
        monkeypatch.setattr(redis, "pipeline", counting_pipeline)
        await asyncio.gather(*(asyncio.shield(worker.finish_job(f"batched-{n}", *case))
                               for n, case in enumerate(FINISH_CASES)))
        assert pipelines == 1
        for n, case in enumerate(FINISH_CASES):
            assert await job_state(redis, f"batched-{n}") == await job_state(redis, f"stock-{n}"), case
    finally:
        await redis.aclose()


async def test_a_failed_finish_transaction_raises_for_each_of_its_jobs(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    redis = await arq_pool(redis_url)
    worker = held_worker(redis_url, redis, HeldJobs())

    async def unreachable(*_args: Any, **_kwargs: Any) -> Any:
        raise redis_exceptions.ConnectionError("Redis went away")

    try:
        monkeypatch.setattr(redis_asyncio_client.Pipeline, "execute", unreachable)
        outcomes = await asyncio.gather(*(worker.finish_job(f"job-{n}", True, None, None, False, None, None)
                                          for n in range(3)), return_exceptions=True)
        assert [type(o) for o in outcomes] == [redis_exceptions.ConnectionError] * 3
        assert worker._finishing == [] and worker._finish_tasks == set()
    finally:
        await redis.aclose()


async def test_each_job_finishing_in_a_shared_transaction_sees_only_its_own_error(redis_url: str) -> None:
    redis = await arq_pool(redis_url)
    worker = held_worker(redis_url, redis, HeldJobs())
    try:
        await redis.set(QUEUE_NAME, b"not a sorted set")  # ZREM / ZINCRBY on the queue now fail; DEL does not
        await redis.set(in_progress_key_prefix + "no-queue-command", b"1")
        outcomes = await asyncio.gather(
            worker.finish_job("finished", True, None, None, False, None, None),
            worker.finish_job("no-queue-command", False, None, None, False, None, None),
            worker.finish_job("retried", False, None, None, False, 5_000, None),
            return_exceptions=True)
        assert isinstance(outcomes[0], redis_exceptions.ResponseError) and "WRONGTYPE" in str(outcomes[0])
        assert outcomes[1] is None
        assert isinstance(outcomes[2], redis_exceptions.ResponseError) and "WRONGTYPE" in str(outcomes[2])
        assert not await redis.exists(in_progress_key_prefix + "no-queue-command")
    finally:
        await redis.aclose()
