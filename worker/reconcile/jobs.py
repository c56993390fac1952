"""The arq jobs of backfill and the reconcile lanes: ``ARQ_FUNCTIONS`` and ``ARQ_CRON_JOBS``.

The worker (worker/app.py) runs these next to ``process_event``. Jobs read the worker's context
(:func:`worker.context.worker_context`); its ``arq_redis`` is arq's own connection, through which the events
lane queues replayed events exactly as the receiver does. Job names and IDs are square_mirror/constants.py's,
retry delays square_mirror/retry.py's.

- Each cron job (``unique``: one instance across all workers per scheduled time) only fans out: it queues one
  ``reconcile_lane_job`` per merchant with the job ID ``reconcile:<lane>:<merchant>``, so a lane never runs twice
  at once for a seller (arq refuses a queued or running job ID; each lane also holds a per-(merchant, lane)
  Postgres lock), and one seller's failure (401, rate limit) never stops the others.
- No function here declares its own arq timeout: arq re-runs a killed job only after the longest function
  timeout, which must stay the event worker's short one. Instead a job works for a time slice just under
  ``WORKER_JOB_TIMEOUT_SECONDS``; a run cut short is recorded as ``interrupted`` with its checkpoint and a
  continuation job is queued at once. Backfill and sweep resume from their partition checkpoints, the
  incremental lane from its last committed page of the same window, the events lane from its watermark
  (moved page by page); the segments and groups lanes start over.
- A run that ends ``partial`` or ``failed`` raises :class:`arq.Retry` while tries remain.
- A seller whose OAuth access was revoked or removed (worker/oauth.py): a job queued for it returns ``withdrawn``
  without running, and a run it was in the middle of fails its next Square call as unauthorized (the token is gone
  from the TokenSource), ends ``failed`` and is not retried.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

from arq import Retry, cron

from square_mirror.constants import (
    BACKFILL_JOB,
    LANE_BUDGET_WINDOW_SECONDS,
    LANE_SCHEDULER_BUDGET,
    RECONCILE_LANE_JOB,
    SCHEDULE_LANES_CRON,
    backfill_job_id,
    continuation_job_id,
    cron_job_name,
    queue_for,
    reconcile_job_id,
)
from square_mirror.logs import get_logger
from square_mirror.ratelimit import read_usage
from square_mirror.retry import BACKFILL_RETRY_DELAY_SECONDS, BACKFILL_TRIES, LANE_TRIES, lane_retry_delay
from square_mirror.settings import Settings
from worker import runs
from worker.backfill.phases import BACKFILL, backfill, summarize
from worker.context import WorkerContext, job_id, job_try, worker_context
from worker.merchants import known_merchants
from worker.oauth import withdrawn
from worker.reconcile.lanes import LANES, run_lane
from worker.reconcile.scheduler import plan_sellers, seller_offset_seconds

log = get_logger(__name__)

SLICE_MARGIN_SECONDS: Final = 5.0
# A job for a seller whose OAuth access was revoked or removed: nothing ran (worker/oauth.py).
WITHDRAWN: Final = "withdrawn"


def time_slice(wc: WorkerContext) -> float:
    """Seconds one job may work: just under the worker's uniform job timeout."""
    return max(3.0, wc.settings.worker_job_timeout_seconds - SLICE_MARGIN_SECONDS)


async def _enqueue(wc: WorkerContext, function: str, *args: Any, job_id: str, defer: float = 0.0) -> bool:
    if wc.arq_redis is None:
        return False
    job = await wc.arq_redis.enqueue_job(function, *args, _job_id=job_id, _queue_name=queue_for(function),
                                         _defer_by=defer or None)
    return job is not None


async def _sliced(wc: WorkerContext, work: Callable[[], Awaitable[runs.Run]]) -> runs.Run | None:
    """Run ``work`` for one time slice; None when the slice ran out (the run is then recorded interrupted)."""
    try:
        async with asyncio.timeout(time_slice(wc)):
            return await work()
    except TimeoutError:
        return None


async def reconcile_lane_job(ctx: dict[str, Any], lane: str, merchant_id: str) -> dict[str, Any]:
    """One lane for one merchant, one time slice; continues itself in a new job when the slice runs out."""
    if lane not in LANES:
        raise ValueError(f"unknown lane {lane!r}")
    wc = worker_context(ctx)
    if withdrawn(wc, merchant_id):
        return {"merchant_id": merchant_id, "lane": lane, "status": WITHDRAWN}
    try:
        run = await _sliced(wc, lambda: run_lane(wc, merchant_id, lane))
    except runs.RunBusy:
        return {"merchant_id": merchant_id, "lane": lane, "status": runs.BUSY}
    if run is None:
        queued = await _enqueue(wc, RECONCILE_LANE_JOB, lane, merchant_id, defer=1,
                                job_id=continuation_job_id(reconcile_job_id(lane, merchant_id), job_id(ctx)))
        log.info("lane_continued", merchant_id=merchant_id, lane=lane, queued=queued)
        return {"merchant_id": merchant_id, "lane": lane, "status": runs.INTERRUPTED, "continued": queued}
    refused = run.counts.get("events_refused", 0)  # a token the Events API refuses: retrying changes nothing
    if run.status in (runs.PARTIAL, runs.FAILED) and not refused and job_try(ctx) < LANE_TRIES \
            and not withdrawn(wc, merchant_id):  # revoked while it ran: its next Square call failed, and all would
        raise Retry(defer=lane_retry_delay(job_try(ctx)))
    return dict(summarize(run))


async def backfill_job(ctx: dict[str, Any], merchant_id: str | None = None, full: bool = False) -> dict[str, Any]:
    """Enqueueable backfill: ``enqueue_job(BACKFILL_JOB, merchant_id, full)``; without a merchant, one job per
    known merchant is queued. Time-sliced like the lanes; a continuation resumes from the checkpoint."""
    wc = worker_context(ctx)
    if merchant_id is None:
        merchants = await known_merchants(wc)
        for mid in merchants:
            await _enqueue(wc, BACKFILL_JOB, mid, full, job_id=backfill_job_id(mid))
        return {"queued": merchants}
    if withdrawn(wc, merchant_id):
        return {"merchant_id": merchant_id, "status": WITHDRAWN}
    concurrency = wc.settings.backfill_concurrency
    try:
        run = await _sliced(wc, lambda: backfill(
            wc.sync, merchant_id, full=full, concurrency=concurrency, kind=BACKFILL,
            attribute_concurrency=wc.settings.backfill_custom_attribute_concurrency))
    except runs.RunBusy:
        return {"merchant_id": merchant_id, "status": runs.BUSY}
    if run is None:  # continue from the checkpoint (never with full=True again: that would start over)
        queued = await _enqueue(wc, BACKFILL_JOB, merchant_id, False, defer=1,
                                job_id=continuation_job_id(backfill_job_id(merchant_id), job_id(ctx)))
        return {"merchant_id": merchant_id, "status": runs.INTERRUPTED, "continued": queued}
    if run.status == runs.PARTIAL and job_try(ctx) < BACKFILL_TRIES and not withdrawn(wc, merchant_id):
        raise Retry(defer=BACKFILL_RETRY_DELAY_SECONDS)  # rate limit / outage: resume later from the checkpoint
    return dict(summarize(run))


async def _fan_out(ctx: Mapping[str, Any], lane: str) -> dict[str, Any]:
    wc = worker_context(ctx)
    queued = {}
    for mid in await known_merchants(wc):
        queued[mid] = await _enqueue(wc, RECONCILE_LANE_JOB, lane, mid, job_id=reconcile_job_id(lane, mid))
    return {"lane": lane, "queued": queued}


async def reconcile_incremental(ctx: dict[str, Any]) -> dict[str, Any]:
    return await _fan_out(ctx, "incremental")


async def reconcile_segments(ctx: dict[str, Any]) -> dict[str, Any]:
    return await _fan_out(ctx, "segments")


async def reconcile_groups(ctx: dict[str, Any]) -> dict[str, Any]:
    return await _fan_out(ctx, "groups")


async def reconcile_events(ctx: dict[str, Any]) -> dict[str, Any]:
    return await _fan_out(ctx, "events")


async def reconcile_custom_attributes(ctx: dict[str, Any]) -> dict[str, Any]:
    return await _fan_out(ctx, "custom_attributes")


async def reconcile_sweep(ctx: dict[str, Any]) -> dict[str, Any]:
    return await _fan_out(ctx, "sweep")


async def schedule_lanes(ctx: dict[str, Any]) -> dict[str, Any]:
    """LANE_SCHEDULER=budget: queue each seller's due lanes that fit its lane budget, at its offset in the minute
    (worker/reconcile/scheduler.py, which also records and reports each seller's affordability)."""
    wc = worker_context(ctx)
    merchants = await known_merchants(wc)
    usage = None
    if wc.redis is not None and wc.settings.square_max_requests_per_second > 0:
        usage = await read_usage(wc.redis, merchants, LANE_BUDGET_WINDOW_SECONDS // 60 - 1)
    plans = await plan_sellers(wc.pool, wc.settings, merchants, usage=usage)
    queued: dict[str, dict[str, bool]] = {}
    for mid, seller in plans.items():
        offset = seller_offset_seconds(mid)
        queued[mid] = {lane: await _enqueue(wc, RECONCILE_LANE_JOB, lane, mid, job_id=reconcile_job_id(lane, mid),
                                            defer=offset) for lane in seller.queued}
    return {"queued": queued, "deferred": {mid: p.deferred for mid, p in plans.items() if p.deferred},
            "unaffordable": sorted(mid for mid, p in plans.items() if not p.affordable)}


# arq names a job by its function: BACKFILL_JOB and RECONCILE_LANE_JOB (tests/test_architecture.py compares them).
ARQ_FUNCTIONS: Final = [backfill_job, reconcile_lane_job]

ARQ_CRON_JOBS: Final = [
    # every minute
    cron(reconcile_incremental, name=cron_job_name("incremental"), second=5, unique=True, max_tries=LANE_TRIES),
    # every 5 minutes, staggered
    cron(reconcile_segments, name=cron_job_name("segments"), minute=set(range(1, 60, 5)), second=15, unique=True,
         max_tries=LANE_TRIES),
    cron(reconcile_groups, name=cron_job_name("groups"), minute=set(range(2, 60, 5)), second=25, unique=True,
         max_tries=LANE_TRIES),
    cron(reconcile_events, name=cron_job_name("events"), minute=set(range(3, 60, 5)), second=35, unique=True,
         max_tries=LANE_TRIES),
    cron(reconcile_custom_attributes, name=cron_job_name("custom_attributes"), minute=set(range(4, 60, 5)),
         second=45, unique=True, max_tries=LANE_TRIES),
    # daily
    cron(reconcile_sweep, name=cron_job_name("sweep"), hour=3, minute=17, second=0, unique=True,
         max_tries=LANE_TRIES),
]

# LANE_SCHEDULER=budget: one entry every minute instead of the lanes' fixed ones.
BUDGET_CRON_JOBS: Final = [
    cron(schedule_lanes, name=SCHEDULE_LANES_CRON, second=0, unique=True, max_tries=LANE_TRIES),
]


def lane_cron_jobs(settings: Settings) -> list[Any]:
    """The lanes' cron entries under LANE_SCHEDULER: the fixed ones (cron, the default) or the budget scheduler's."""
    return list(BUDGET_CRON_JOBS if settings.lane_scheduler == LANE_SCHEDULER_BUDGET else ARQ_CRON_JOBS)
