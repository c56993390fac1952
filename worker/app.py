"""The worker process: arq's job list and cron list, the Worker it runs, its start-up and shut-down.

Start-up builds the one :class:`worker.context.WorkerContext` (:func:`worker.context.build_context`) and puts it
in arq's ctx, and serves ``/metrics`` and ``/healthz`` on WORKER_METRICS_PORT (each scrape samples the queue depth
and reads the lanes' staleness bounds, worker/freshness.py).

Why each setting (measured on arq 0.28):
- job ID = event ID (set by the receiver); ``keep_result=0`` so a finished job's ID can be enqueued again
  (arq refuses an ID while a result is kept) and ``keep_result_forever`` is never on (it crashes the worker
  once tries run out).
- Only ``Retry`` and cancellation are retried by arq; process_event turns every transient error into
  ``Retry(defer=backoff)`` itself, and finishes the last try as ``failed`` in the inbox.
- A short, uniform ``job_timeout``: a SIGKILLed job is re-run only after the longest function timeout + 10 s.
- ``max_jobs`` / ``poll_delay`` from settings (defaults 200 / 0.05 s; arq's own defaults run an order of magnitude
  fewer no-op jobs per second: docs/performance.md, Worker).
- ``job_completion_wait``: on SIGTERM stop picking jobs and let running ones finish before cancelling.

``FUNCTIONS`` and :func:`cron_jobs_for` list the event job and the backfill / reconcile jobs (worker/reconcile/jobs.py).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, Final

from aiohttp import web
from arq import cron
from arq.constants import abort_jobs_ss, in_progress_key_prefix, job_key_prefix, result_key_prefix, retry_key_prefix
from arq.utils import timestamp_ms, to_ms
from arq.worker import Function, Worker, func
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript

from square_mirror.constants import (
    CONNECT_SELLER_JOB,
    PROCESS_EVENT_JOB,
    QUEUE_NAME,
    QUEUES,
    REFRESH_TOKENS_CRON,
    WORKER_HEALTH_KEY,
)
from square_mirror.logs import get_logger
from square_mirror.queue import deserialize_job, redis_settings, serialize_job
from square_mirror.retry import redis_transient
from square_mirror.settings import Settings
from worker.context import CONTEXT_KEY, build_context
from worker.events.process import process_event
from worker.freshness import refresh_lane_budget_ratio, refresh_lane_staleness
from worker.metrics import QUEUE_DEPTH
from worker.oauth import connect_seller
from worker.reconcile.jobs import ARQ_FUNCTIONS, backfill_job, lane_cron_jobs, reconcile_lane_job
from worker.sellers import refresh_tokens

EVENT_FUNCTIONS: list[Function | Any] = [
    func(process_event, name=PROCESS_EVENT_JOB, keep_result=0),
    # the OAuth redirect's code, exchanged once (worker/oauth.py); its payload is sealed and kept no longer
    func(connect_seller, name=CONNECT_SELLER_JOB, keep_result=0),
]
FUNCTIONS: list[Function | Any] = [*EVENT_FUNCTIONS, *ARQ_FUNCTIONS]
# hourly, once across the fleet: tokens older than TOKEN_REFRESH_AGE_DAYS are refreshed (worker/sellers.py)
REFRESH_TOKENS: Final = cron(refresh_tokens, name=REFRESH_TOKENS_CRON, minute=7, second=50, unique=True)


def cron_jobs_for(settings: Settings) -> list[Any]:
    """Every cron entry for these settings: the lanes' (LANE_SCHEDULER) and the token refresh."""
    return [*lane_cron_jobs(settings), REFRESH_TOKENS]


def worker_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of ``arq.worker.Worker`` for these settings (also used by the benchmark's baseline)."""
    return {
        "queue_name": QUEUE_NAME,
        "redis_settings": redis_settings(settings.require_redis_url()),
        "job_serializer": serialize_job,
        "job_deserializer": deserialize_job,
        "max_jobs": settings.worker_max_jobs,
        "poll_delay": settings.worker_poll_delay,
        "job_timeout": settings.worker_job_timeout_seconds,
        "max_tries": settings.worker_max_tries,
        "keep_result": 0,
        "keep_result_forever": False,
        "job_completion_wait": settings.worker_shutdown_grace_seconds,
        "health_check_interval": 30,
        "health_check_key": WORKER_HEALTH_KEY,
        "log_results": False,
    }


_STARTUP_LOCK: Final = "square_mirror_startup_lock"  # ctx keys of the process's workers' shared start-up
_RUNNING: Final = "square_mirror_workers_running"

# finish_job's arguments after self: job_id, finish, result_data, result_timeout_s, keep_result_forever,
# incr_score, keep_in_progress.
_FinishArgs = tuple[str, bool, bytes | None, float | None, bool, int | None, float | None]
log = get_logger(__name__)
REDIS_TROUBLE = redis_transient()  # redis is loaded here (above): its connection errors and timeouts

# KEYS[1] the queue, KEYS[1 + i] the in-progress key of job ARGV[3 + i]; ARGV[1] now (ms), ARGV[2] the
# in-progress key's lifetime (ms), ARGV[3] how many jobs to claim at most. Returns id, score, id, score, ...
_CLAIM_JOBS_LUA = """
local claimed = {}
local now = tonumber(ARGV[1])
local room = tonumber(ARGV[3])
for i = 2, #KEYS do
  if room <= 0 then break end
  if redis.call('EXISTS', KEYS[i]) == 0 then
    local job_id = ARGV[i + 2]
    local score = redis.call('ZSCORE', KEYS[1], job_id)
    if score and tonumber(score) <= now then
      redis.call('PSETEX', KEYS[i], ARGV[2], '1')
      claimed[#claimed + 1] = job_id
      claimed[#claimed + 1] = score
      room = room - 1
    end
  end
end
return claimed
"""


class RedisTolerantWorker(Worker):
    """arq's Worker, claiming a poll's jobs in one Redis call, and outliving Redis going away for a moment.

    Claiming: arq claims each job with its own WATCH / EXISTS / ZSCORE / MULTI PSETEX EXEC conversation, four
    round trips through redis-py per job, which made up most of the worker's CPU per event. ``start_jobs``
    claims a whole poll's jobs with one Lua script instead, under the same rules (the in-progress key is
    absent and the job is still queued with a score not in the future; then the key is set for arq's
    in-progress timeout); the script runs atomically, so two workers never both claim a job. ``finish_job``
    likewise joins the jobs finishing together into one transaction.

    Both rely on arq internals (its key names, ``sem`` of ``max_jobs + 1``, ``job_counter``, ``tasks``,
    ``in_progress_timeout_s``, ``_release_sem_dec_counter_on_complete``, what ``finish_job`` writes), which
    are the same in 0.26.0, 0.27.0 and 0.28.0 (compared), hence the pin ``arq>=0.26,<0.29`` stays: check
    them again before allowing a newer arq.

    Redis trouble: arq lets a connection error out of its poll loop, which ended the worker process whenever
    Redis restarted (found by the chaos run). Here a claim that meets such an error gives back its slots and
    leaves the jobs queued, and a failed poll is tried again on the next one.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._claim_script: AsyncScript | None = None
        self._finishing: list[tuple[asyncio.Future[None], _FinishArgs]] = []
        self._finish_tasks: set[asyncio.Task[None]] = set()

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        # A job stays in the queue until it finishes, so every poll reads back the jobs this worker is running;
        # claiming them again would only find their in-progress keys.
        candidates = [job_id.decode() for job_id in job_ids]
        candidates = [job_id for job_id in candidates if job_id not in self.tasks or self.tasks[job_id].done()]
        taken = 0
        while taken < len(candidates):
            await self.sem.acquire()
            if self.job_counter >= self.max_jobs:
                self.sem.release()
                break
            self.job_counter += 1
            taken += 1
        if not taken:
            return
        try:
            claimed = await self._claim(candidates, taken)
        except BaseException as exc:
            self._give_back_slots(taken)
            if isinstance(exc, REDIS_TROUBLE):
                log.warning("redis_trouble_claiming_job", error=type(exc).__name__)  # the jobs stay queued
                return
            raise
        self._give_back_slots(taken - len(claimed) // 2)
        for job_id_b, score in zip(claimed[::2], claimed[1::2], strict=True):
            job_id = job_id_b.decode()
            task = self.loop.create_task(self.run_job(job_id, int(float(score))))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = task

    async def _claim(self, job_ids: list[str], room: int) -> list[bytes]:
        """Claims up to ``room`` of ``job_ids`` in one script call; the claimed ids and their scores, flat."""
        if self._claim_script is None:
            self._claim_script = self.pool.register_script(_CLAIM_JOBS_LUA)  # EVALSHA, loaded again on NOSCRIPT
        keys = [self.queue_name, *(in_progress_key_prefix + job_id for job_id in job_ids)]
        args: list[int | str] = [timestamp_ms(), int(self.in_progress_timeout_s * 1000), room, *job_ids]
        claimed: list[bytes] = await self._claim_script(keys, args, client=self.pool)
        return claimed

    def _give_back_slots(self, count: int) -> None:
        for _ in range(count):
            self.job_counter -= 1
            self.sem.release()

    async def finish_job(
        self,
        job_id: str,
        finish: bool,
        result_data: bytes | None,
        result_timeout_s: float | None,
        keep_result_forever: bool,
        incr_score: int | None,
        keep_in_progress: float | None,
    ) -> None:
        """arq's finish_job, except that the jobs finishing in one event-loop iteration share one transaction.

        A burst finishes jobs in groups (the inbox and the fetch coalescer answer many jobs at once), and one
        round trip through redis-py per job was a fifth of the worker's CPU per event. Each job keeps arq's
        effects, applied atomically, and its caller sees the error of its own commands, if any.
        """
        done: asyncio.Future[None] = self.loop.create_future()
        if not self._finishing:
            task = self.loop.create_task(self._finish_batch())
            self._finish_tasks.add(task)
            task.add_done_callback(self._finish_tasks.discard)
        self._finishing.append((done, (job_id, finish, result_data, result_timeout_s, keep_result_forever,
                                       incr_score, keep_in_progress)))
        await done

    async def _finish_batch(self) -> None:
        batch, self._finishing = self._finishing, []
        ends: list[int] = []
        try:
            async with self.pool.pipeline(transaction=True) as tr:
                for _done, args in batch:
                    self._queue_finish(tr, args)
                    ends.append(len(tr.command_stack))
                results = await tr.execute(raise_on_error=False)
        except Exception as exc:  # every caller gets it; nobody awaits this task
            for done, _args in batch:
                if not done.done():  # else its caller was cancelled
                    done.set_exception(exc)
            return
        except BaseException:
            for done, _args in batch:
                done.cancel()
            raise
        for (done, _args), start, end in zip(batch, [0, *ends], ends, strict=False):
            error = next((r for r in results[start:end] if isinstance(r, Exception)), None)
            if done.done():
                continue
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)

    def _queue_finish(self, tr: Pipeline, args: _FinishArgs) -> None:
        """The commands of arq 0.28's ``Worker.finish_job`` for one job."""
        job_id, finish, result_data, result_timeout_s, keep_result_forever, incr_score, keep_in_progress = args
        in_progress_key = in_progress_key_prefix + job_id
        delete_keys = []
        if keep_in_progress is None:
            delete_keys.append(in_progress_key)
        else:
            tr.pexpire(in_progress_key, to_ms(keep_in_progress))
        if finish:
            if result_data:
                expire = None if keep_result_forever else result_timeout_s
                tr.set(result_key_prefix + job_id, result_data, px=to_ms(expire))
            delete_keys += [retry_key_prefix + job_id, job_key_prefix + job_id]
            tr.zrem(abort_jobs_ss, job_id)
            tr.zrem(self.queue_name, job_id)
        elif incr_score:
            tr.zincrby(self.queue_name, incr_score, job_id)
        if delete_keys:
            tr.delete(*delete_keys)

    async def _poll_iteration(self) -> None:
        try:
            await super()._poll_iteration()
        except REDIS_TROUBLE as exc:
            log.warning("redis_trouble_polling", error=type(exc).__name__)
            await asyncio.sleep(1.0)


def build_worker(
    settings: Settings,
    *,
    burst: bool = False,
    handle_signals: bool = True,
    ctx: dict[str, Any] | None = None,
    functions: list[Function | Any] | None = None,
    cron_jobs: list[Any] | None = None,
    **overrides: Any,
) -> Worker:
    """A worker on the events queue with every job function and cron entry (tests, the benchmark's baseline);
    ``ctx`` may pre-seed keys (a test's pool, say). ``square-mirror worker`` runs :func:`build_workers`."""
    if settings.log_level != "DEBUG":
        logging.getLogger("arq.worker").setLevel(logging.WARNING)  # one INFO line per job start and end
    options = worker_options(settings)
    options.update(overrides)
    return RedisTolerantWorker(
        functions=list(FUNCTIONS if functions is None else functions),
        cron_jobs=list(cron_jobs_for(settings) if cron_jobs is None else cron_jobs) or None,
        on_startup=startup,
        on_shutdown=shutdown,
        burst=burst,
        handle_signals=handle_signals,
        ctx={"settings": settings, **(ctx or {})},
        **options,
    )


# What each queue's worker runs: events (the receiver's jobs, replayed events, OAuth connections), lanes (the lane
# jobs and every cron entry, which only fan out), backfill.
QUEUE_FUNCTIONS: dict[str, Callable[[], list[Function | Any]]] = {
    "events": lambda: list(EVENT_FUNCTIONS),
    "lanes": lambda: [reconcile_lane_job],
    "backfill": lambda: [backfill_job],
}


def build_workers(settings: Settings, queues: Sequence[str], *, burst: bool = False,
                  ctx: dict[str, Any] | None = None, cron: bool = True) -> list[Worker]:
    """One arq worker per queue, sharing one process context (pools, client, metrics server) through one ctx dict:
    ``square-mirror worker --queues``. Signals are handled by :func:`run_workers`, for all of them at once.
    ``cron=False``: the lanes worker schedules nothing (a test that must not meet a cron entry coming due)."""
    if settings.log_level != "DEBUG":
        logging.getLogger("arq.worker").setLevel(logging.WARNING)
    shared: dict[str, Any] = {"settings": settings, **(ctx or {})}  # ctx: keys a test pre-seeds (its pool, say)
    workers: list[Worker] = []
    for queue in queues:
        options = worker_options(settings)
        options["queue_name"] = QUEUES[queue]
        if queue != "events":  # the events worker keeps the health key status reads
            options["health_check_key"] = f"{WORKER_HEALTH_KEY}:{queue}"
        worker = RedisTolerantWorker(
            functions=QUEUE_FUNCTIONS[queue](),
            cron_jobs=cron_jobs_for(settings) if queue == "lanes" and cron else None,
            on_startup=startup, on_shutdown=shutdown, burst=burst, handle_signals=False, ctx=shared, **options)
        workers.append(worker)
    return workers


def run_workers(workers: Sequence[Worker]) -> None:
    """Run the workers of one process until a signal stops them all (each finishing its jobs as arq does)."""
    loop = workers[0].loop
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, partial(_stop_all, workers, sig))
    tasks = []
    for worker in workers:
        worker.main_task = loop.create_task(worker.main())
        tasks.append(worker.main_task)
    try:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    finally:
        for worker in workers:
            loop.run_until_complete(worker.close())


def _stop_all(workers: Sequence[Worker], sig: signal.Signals) -> None:
    for worker in workers:
        if worker._job_completion_wait:  # arq keeps it private; its own signal handler reads it the same way
            worker.handle_sig_wait_for_completion(sig)
        else:
            worker.handle_sig(sig)


async def startup(ctx: dict[str, Any]) -> None:
    """arq ``on_startup``: ctx arrives with ``settings`` and ``redis`` (and a test's ``pool``, if it seeds one).
    The workers of one process (one per queue) share ctx: the first one builds the context, the others count."""
    lock = ctx.setdefault(_STARTUP_LOCK, asyncio.Lock())
    async with lock:
        ctx[_RUNNING] = ctx.get(_RUNNING, 0) + 1
        if CONTEXT_KEY not in ctx:
            await _start_context(ctx)


async def _start_context(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx["settings"]
    redis = ctx["redis"]
    context = await build_context(settings, worker=True, pool=ctx.get("pool"), redis=redis, arq_redis=redis)
    ctx[CONTEXT_KEY] = context

    async def sample_queue_depth() -> None:
        QUEUE_DEPTH.set(await redis.zcard(QUEUE_NAME))

    async def before_scrape() -> None:  # each on its own: Redis away does not freeze the staleness bounds
        results = await asyncio.gather(sample_queue_depth(), refresh_lane_staleness(context.pool),
                                       refresh_lane_budget_ratio(context.pool),
                                       return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    try:
        runner = await start_metrics_server(settings.worker_metrics_port, before_scrape=before_scrape)
    except BaseException:
        await context.aclose()
        raise
    if runner is not None:
        context.exit_stack.push_async_callback(runner.cleanup)
    log.info("worker_started", max_jobs=settings.worker_max_jobs, poll_delay=settings.worker_poll_delay,
             job_timeout=settings.worker_job_timeout_seconds, max_tries=settings.worker_max_tries)


async def shutdown(ctx: dict[str, Any]) -> None:
    """arq ``on_shutdown``: the last worker of the process finishes batches in flight, then closes what start-up
    opened."""
    ctx[_RUNNING] = ctx.get(_RUNNING, 1) - 1
    if ctx[_RUNNING] > 0:
        return
    if CONTEXT_KEY in ctx:
        context = ctx.pop(CONTEXT_KEY)
        await context.aclose()
    log.info("worker_stopped")


async def start_metrics_server(
    port: int, *, host: str = "0.0.0.0", before_scrape: Callable[[], Awaitable[None]] | None = None
) -> web.AppRunner | None:
    """Serve ``/metrics`` (the process-wide registry) and ``/healthz`` on ``port`` (0 disables);
    ``before_scrape`` refreshes sampled gauges."""
    if port == 0:
        return None

    async def metrics(_request: web.Request) -> web.Response:
        if before_scrape is not None:
            try:
                await before_scrape()
            except Exception as exc:  # a scrape must not fail because Redis hiccuped
                log.warning("metrics_refresh_failed", error=type(exc).__name__)
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def health(_request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    log.info("worker_metrics_listening", port=port)
    return runner
