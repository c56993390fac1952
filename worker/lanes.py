"""arq wiring for backfill and the reconcile lanes: ``ARQ_FUNCTIONS`` and ``ARQ_CRON_JOBS``.

The event worker's settings add these to its own ``functions`` / ``cron_jobs``. Jobs use the worker's ctx:
``ctx["pool"]``, ``ctx["client"]``, ``ctx["sync"]``, ``ctx["settings"]`` and ``ctx["redis"]`` (arq's own
ArqRedis, through which the events lane queues replayed events exactly as the receiver does).

Cron jobs are ``unique`` (one instance across all workers, by arq's job ID per scheduled time) and each lane
also takes a per-(merchant, lane) Postgres lock, so two workers never run the same lane for the same seller.
One seller's failure (401, rate limit) is recorded in its run and does not stop the others. A lane that ended
``partial`` or ``failed`` for some seller raises :class:`arq.Retry` while tries remain.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from arq import Retry, cron

from square_mirror.logs import get_logger
from worker import runs
from worker.backfill import BACKFILL, backfill, summarize
from worker.reconcile import run_lane
from worker.sync import SyncContext

log = get_logger(__name__)

LANE_TRIES: Final = 3
BACKFILL_TRIES: Final = 5


def _sync(ctx: Mapping[str, Any]) -> SyncContext:
    sync = ctx.get("sync")
    return sync if isinstance(sync, SyncContext) else SyncContext(ctx["pool"], ctx["client"])


async def known_merchants(ctx: Mapping[str, Any]) -> list[str]:
    """Merchants in configuration (tokens file / SQUARE_MERCHANT_ID) plus those the mirror knows."""
    sync = _sync(ctx)
    known = set(sync.client.tokens.merchants())
    known.update(r["merchant_id"] for r in await sync.pool.fetch("SELECT merchant_id FROM square.merchants"))
    settings = ctx.get("settings")
    token = getattr(settings, "square_access_token", None)
    if not known and token is not None:
        known.add(await sync.client.retrieve_own_merchant_id(token.reveal()))
    return sorted(known)


async def _lane_for_all(ctx: dict[str, Any], lane: str) -> dict[str, Any]:
    results: dict[str, Any] = {}
    unfinished = 0
    for merchant_id in await known_merchants(ctx):
        try:
            run = await run_lane(ctx, merchant_id, lane)
        except runs.RunBusy:
            results[merchant_id] = "busy"
            continue
        results[merchant_id] = run.status
        if run.status != runs.SUCCEEDED:
            unfinished += 1
    if unfinished and int(ctx.get("job_try", 1)) < LANE_TRIES:
        raise Retry(defer=30)
    return results


async def reconcile_incremental(ctx: dict[str, Any]) -> dict[str, Any]:
    return await _lane_for_all(ctx, "incremental")


async def reconcile_segments(ctx: dict[str, Any]) -> dict[str, Any]:
    return await _lane_for_all(ctx, "segments")


async def reconcile_groups(ctx: dict[str, Any]) -> dict[str, Any]:
    return await _lane_for_all(ctx, "groups")


async def reconcile_events(ctx: dict[str, Any]) -> dict[str, Any]:
    return await _lane_for_all(ctx, "events")


async def reconcile_sweep(ctx: dict[str, Any]) -> dict[str, Any]:
    return await _lane_for_all(ctx, "sweep")


async def reconcile_lane_job(ctx: dict[str, Any], lane: str, merchant_id: str | None = None) -> dict[str, Any]:
    """Enqueueable: one lane for one merchant (or all)."""
    if merchant_id is None:
        return await _lane_for_all(ctx, lane)
    run = await run_lane(ctx, merchant_id, lane)
    return dict(summarize(run))


async def backfill_job(ctx: dict[str, Any], merchant_id: str | None = None, full: bool = False) -> dict[str, Any]:
    """Enqueueable backfill (``enqueue_job("backfill_job", merchant_id, full)``); retried while it is partial."""
    settings = ctx.get("settings")
    concurrency = int(getattr(settings, "backfill_concurrency", 8))
    merchants = [merchant_id] if merchant_id else await known_merchants(ctx)
    results: dict[str, Any] = {}
    retry = False
    for mid in merchants:
        try:
            run = await backfill(_sync(ctx), mid, full=full, concurrency=concurrency, kind=BACKFILL)
        except runs.RunBusy:
            results[mid] = {"status": "busy"}
            continue
        results[mid] = summarize(run)
        retry = retry or run.status == runs.PARTIAL  # rate limit / outage: resume later from the checkpoint
    if retry and int(ctx.get("job_try", 1)) < BACKFILL_TRIES:
        raise Retry(defer=60)
    return results


ARQ_FUNCTIONS: Final = [backfill_job, reconcile_lane_job]

ARQ_CRON_JOBS: Final = [
    cron(reconcile_incremental, name="reconcile_incremental", second=5, unique=True, max_tries=LANE_TRIES,
         timeout=600),
    cron(reconcile_segments, name="reconcile_segments", minute=set(range(1, 60, 5)), second=15, unique=True,
         max_tries=LANE_TRIES, timeout=1800),
    cron(reconcile_groups, name="reconcile_groups", minute=set(range(2, 60, 5)), second=25, unique=True,
         max_tries=LANE_TRIES, timeout=1800),
    cron(reconcile_events, name="reconcile_events", minute=set(range(3, 60, 5)), second=35, unique=True,
         max_tries=LANE_TRIES, timeout=900),
    cron(reconcile_sweep, name="reconcile_sweep", hour=3, minute=17, second=0, unique=True,
         max_tries=LANE_TRIES, timeout=6 * 3600),
]
