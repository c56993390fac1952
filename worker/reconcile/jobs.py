"""arq wiring for backfill and the reconcile lanes: ``ARQ_FUNCTIONS`` and ``ARQ_CRON_JOBS``.

The event worker's settings add these to its own ``FUNCTIONS`` / ``CRON_JOBS``. Jobs use the worker's ctx:
``ctx["pool"]``, ``ctx["client"]``, ``ctx["sync"]``, ``ctx["settings"]`` and ``ctx["redis"]`` (arq's ArqRedis,
through which the events lane queues replayed events exactly as the receiver does).

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
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

from arq import Retry, cron

from square_mirror.logs import get_logger
from worker import runs
from worker.backfill.phases import BACKFILL, backfill, summarize
from worker.reconcile.lanes import LANES, run_lane
from worker.sync import SyncContext

log = get_logger(__name__)

LANE_TRIES: Final = 3
BACKFILL_TRIES: Final = 5
SLICE_MARGIN_SECONDS: Final = 5.0
DEFAULT_SLICE_SECONDS: Final = 25.0


def _sync(ctx: Mapping[str, Any]) -> SyncContext:
    sync = ctx.get("sync")
    return sync if isinstance(sync, SyncContext) else SyncContext(ctx["pool"], ctx["client"])


def time_slice(ctx: Mapping[str, Any]) -> float:
    """Seconds one job may work: just under the worker's uniform job timeout."""
    timeout = getattr(ctx.get("settings"), "worker_job_timeout_seconds", None)
    if timeout is None:
        return DEFAULT_SLICE_SECONDS
    return max(3.0, float(timeout) - SLICE_MARGIN_SECONDS)


async def known_merchants(ctx: Mapping[str, Any]) -> list[str]:
    """Merchants in configuration (tokens file / SQUARE_MERCHANT_ID) plus those the mirror knows; with only
    SQUARE_ACCESS_TOKEN and none known, the token's own merchant."""
    sync = _sync(ctx)
    known = set(sync.client.tokens.merchants())
    known.update(r["merchant_id"] for r in await sync.pool.fetch("SELECT merchant_id FROM square.merchants"))
    token = getattr(ctx.get("settings"), "square_access_token", None)
    if not known and token is not None:
        known.add(await sync.client.retrieve_own_merchant_id(token.reveal()))
    return sorted(known)


async def _enqueue(ctx: Mapping[str, Any], function: str, *args: Any, job_id: str, defer: float = 0.0) -> bool:
    redis = ctx.get("redis")
    if redis is None or not hasattr(redis, "enqueue_job"):
        return False
    from square_mirror.constants import QUEUE_NAME

    job = await redis.enqueue_job(function, *args, _job_id=job_id, _queue_name=QUEUE_NAME,
                                  _defer_by=defer or None)
    return job is not None


async def _sliced(ctx: Mapping[str, Any], work: Callable[[], Awaitable[runs.Run]]) -> runs.Run | None:
    """Run ``work`` for one time slice; None when the slice ran out (the run is then recorded interrupted)."""
    try:
        async with asyncio.timeout(time_slice(ctx)):
            return await work()
    except TimeoutError:
        return None


async def reconcile_lane_job(ctx: dict[str, Any], lane: str, merchant_id: str) -> dict[str, Any]:
    """One lane for one merchant, one time slice; continues itself in a new job when the slice runs out."""
    if lane not in LANES:
        raise ValueError(f"unknown lane {lane!r}")
    try:
        run = await _sliced(ctx, lambda: run_lane(ctx, merchant_id, lane))
    except runs.RunBusy:
        return {"merchant_id": merchant_id, "lane": lane, "status": "busy"}
    if run is None:
        queued = await _enqueue(ctx, "reconcile_lane_job", lane, merchant_id,
                                job_id=f"reconcile:{lane}:{merchant_id}:continued:{ctx.get('job_id', '')}", defer=1)
        log.info("lane_continued", merchant_id=merchant_id, lane=lane, queued=queued)
        return {"merchant_id": merchant_id, "lane": lane, "status": runs.INTERRUPTED, "continued": queued}
    refused = run.counts.get("events_refused", 0)  # a token the Events API refuses: retrying changes nothing
    if run.status in (runs.PARTIAL, runs.FAILED) and not refused and int(ctx.get("job_try", 1)) < LANE_TRIES:
        raise Retry(defer=30 * int(ctx.get("job_try", 1)))
    return dict(summarize(run))


async def backfill_job(ctx: dict[str, Any], merchant_id: str | None = None, full: bool = False) -> dict[str, Any]:
    """Enqueueable backfill: ``enqueue_job("backfill_job", merchant_id, full)``; without a merchant, one job per
    known merchant is queued. Time-sliced like the lanes; a continuation resumes from the checkpoint."""
    if merchant_id is None:
        merchants = await known_merchants(ctx)
        for mid in merchants:
            await _enqueue(ctx, "backfill_job", mid, full, job_id=f"backfill:{mid}")
        return {"queued": merchants}
    settings = ctx.get("settings")
    concurrency = int(getattr(settings, "backfill_concurrency", 8))
    try:
        run = await _sliced(ctx, lambda: backfill(_sync(ctx), merchant_id, full=full, concurrency=concurrency,
                                                  kind=BACKFILL))
    except runs.RunBusy:
        return {"merchant_id": merchant_id, "status": "busy"}
    if run is None:  # continue from the checkpoint (never with full=True again: that would start over)
        queued = await _enqueue(ctx, "backfill_job", merchant_id, False,
                                job_id=f"backfill:{merchant_id}:continued:{ctx.get('job_id', '')}", defer=1)
        return {"merchant_id": merchant_id, "status": runs.INTERRUPTED, "continued": queued}
    if run.status == runs.PARTIAL and int(ctx.get("job_try", 1)) < BACKFILL_TRIES:
        raise Retry(defer=60)  # rate limit / outage: resume later from the checkpoint
    return dict(summarize(run))


async def _fan_out(ctx: dict[str, Any], lane: str) -> dict[str, Any]:
    merchants = await known_merchants(ctx)
    queued = {}
    for mid in merchants:
        queued[mid] = await _enqueue(ctx, "reconcile_lane_job", lane, mid, job_id=f"reconcile:{lane}:{mid}")
    return {"lane": lane, "queued": queued}


async def reconcile_incremental(ctx: dict[str, Any]) -> dict[str, Any]:
    return await _fan_out(ctx, "incremental")


async def reconcile_segments(ctx: dict[str, Any]) -> dict[str, Any]:
    return await _fan_out(ctx, "segments")


async def reconcile_groups(ctx: dict[str, Any]) -> dict[str, Any]:
    return await _fan_out(ctx, "groups")


async def reconcile_events(ctx: dict[str, Any]) -> dict[str, Any]:
    return await _fan_out(ctx, "events")


async def reconcile_sweep(ctx: dict[str, Any]) -> dict[str, Any]:
    return await _fan_out(ctx, "sweep")


ARQ_FUNCTIONS: Final = [backfill_job, reconcile_lane_job]

ARQ_CRON_JOBS: Final = [
    # every minute
    cron(reconcile_incremental, name="reconcile_incremental", second=5, unique=True, max_tries=LANE_TRIES),
    # every 5 minutes, staggered
    cron(reconcile_segments, name="reconcile_segments", minute=set(range(1, 60, 5)), second=15, unique=True,
         max_tries=LANE_TRIES),
    cron(reconcile_groups, name="reconcile_groups", minute=set(range(2, 60, 5)), second=25, unique=True,
         max_tries=LANE_TRIES),
    cron(reconcile_events, name="reconcile_events", minute=set(range(3, 60, 5)), second=35, unique=True,
         max_tries=LANE_TRIES),
    # daily
    cron(reconcile_sweep, name="reconcile_sweep", hour=3, minute=17, second=0, unique=True, max_tries=LANE_TRIES),
]
