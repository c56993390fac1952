"""arq configuration of ``square-mirror worker``: the job list, the cron list and the Worker builder.

Why each setting (measured on arq 0.28, see the worker issue):
- job ID = event ID (set by the receiver); ``keep_result=0`` so a finished job's ID can be enqueued again
  (arq refuses an ID while a result is kept) and ``keep_result_forever`` is never on (it crashes the worker
  once tries run out).
- Only ``Retry`` and cancellation are retried by arq; process_event turns every transient error into
  ``Retry(defer=backoff)`` itself, and finishes the last try as ``failed`` in the inbox.
- A short, uniform ``job_timeout``: a SIGKILLed job is re-run only after the longest function timeout + 10 s.
- ``max_jobs`` / ``poll_delay`` from settings (defaults 200 / 0.05 s: ~750 no-op jobs/s instead of ~20).
- ``job_completion_wait``: on SIGTERM stop picking jobs and let running ones finish before cancelling.

Other rooms add their jobs by extending ``FUNCTIONS`` / ``CRON_JOBS`` (e.g. ``worker.lanes.ARQ_FUNCTIONS``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from arq.worker import Function, Worker, func
from redis import exceptions as redis_exceptions

from square_mirror.constants import HEALTH_KEY, PROCESS_EVENT_JOB, QUEUE_NAME
from square_mirror.logs import get_logger
from square_mirror.queue import deserialize_job, redis_settings, serialize_job
from square_mirror.settings import Settings
from worker.lanes import ARQ_CRON_JOBS, ARQ_FUNCTIONS
from worker.process import process_event
from worker.runtime import shutdown, startup

FUNCTIONS: list[Function | Any] = [
    func(process_event, name=PROCESS_EVENT_JOB, keep_result=0),
    *ARQ_FUNCTIONS,
]
CRON_JOBS: list[Any] = [*ARQ_CRON_JOBS]


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
        "health_check_key": HEALTH_KEY + "worker",
        "log_results": False,
    }


_REDIS_TROUBLE = (redis_exceptions.ConnectionError, redis_exceptions.TimeoutError, redis_exceptions.WatchError)
log = get_logger(__name__)


class RedisTolerantWorker(Worker):
    """arq's Worker, except that Redis going away for a moment does not end the process.

    arq lets a connection error out of its poll loop, and redis-py refuses to retry a command inside a
    ``WATCH`` (it raises ``WatchError``), which arq does not expect while it claims a job; either ended the
    worker process whenever Redis restarted (found by the chaos run). Here a job whose claim met such an
    error gives back its slot and stays queued, and a failed poll is tried again on the next one.
    """

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        for job_id in job_ids:
            # A job stays in the queue until it finishes, so every poll reads back the jobs this worker is
            # running; arq would wait for a free slot and spend a WATCH/EXISTS/ZSCORE conversation on each
            # only to skip it. With hundreds of jobs in flight that doubled arq's Redis work per job.
            task = self.tasks.get(job_id.decode())
            if task is not None and not task.done():
                continue
            try:
                await super().start_jobs([job_id])
            except _REDIS_TROUBLE as exc:
                # The claim failed before the job's task was created: undo arq's slot and counter.
                self.job_counter -= 1
                self.sem.release()
                log.warning("redis_trouble_claiming_job", error=type(exc).__name__)  # the job stays queued
                return

    async def _poll_iteration(self) -> None:
        try:
            await super()._poll_iteration()
        except _REDIS_TROUBLE as exc:
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
    """The worker ``square-mirror worker`` runs; ``ctx`` may pre-seed keys (a test's pool, say)."""
    if settings.log_level != "DEBUG":
        logging.getLogger("arq.worker").setLevel(logging.WARNING)  # one INFO line per job start and end
    options = worker_options(settings)
    options.update(overrides)
    return RedisTolerantWorker(
        functions=list(FUNCTIONS if functions is None else functions),
        cron_jobs=list(CRON_JOBS if cron_jobs is None else cron_jobs) or None,
        on_startup=startup,
        on_shutdown=shutdown,
        burst=burst,
        handle_signals=handle_signals,
        ctx={"settings": settings, **(ctx or {})},
        **options,
    )
