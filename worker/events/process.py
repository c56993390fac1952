"""The ``process_event`` job: one webhook (or Events API) event in, committed rows out.

Order of business for every run of a job:
1. Record the event in the inbox; an event already processed is a duplicate and stops there.
2. Merge lineage from ``event_context.merge`` is recorded first (it is the only place Square states it),
   merged-away IDs are tombstoned with ``merged_into``, and the merge target becomes the customer to sync.
3. The event gate (:func:`worker.events.rules.event_is_stale`): the mirror already reflects the event -> ``stale``,
   no API call.
4. A plain ``customer.deleted`` tombstones the customer; anything else is fetched through the coalescer
   (BulkRetrieveCustomers batches) and written by the version-guarded upsert.
5. The outcome is written to the inbox.

Transient trouble (Square 429/5xx/timeouts, Postgres or Redis hiccups, our own deadline) becomes arq
``Retry`` with exponential backoff and jitter; the last try, or a request Square refuses as invalid, is
recorded as ``failed`` for ``square-mirror redrive``. A rejected token marks the merchant unauthorized and
defers the job for a long while instead of failing it.
"""

from __future__ import annotations

import asyncio
import random
import time
from datetime import UTC, datetime
from typing import Any, Final

import asyncpg
from arq.worker import Retry
from redis import exceptions as redis_exceptions

from square_mirror.constants import CUSTOMER_EVENT_TYPES, QUEUE_NAME, RECONCILE_LANE_JOB
from square_mirror.jobs import EventJob, InvalidEnvelope, read_event_job
from square_mirror.logs import bound_context, get_logger
from square_mirror.settings import Settings
from square_mirror.square_api import (
    SquareBadResponse,
    SquareError,
    SquareRateLimited,
    SquareUnauthorized,
    SquareUnavailable,
)
from worker import store
from worker.events import inbox
from worker.events.coalescer import FetchCoalescer
from worker.events.inbox import Outcome
from worker.events.rules import event_is_stale, target_is_synced
from worker.metrics import EVENT_LAG_SECONDS, EVENTS, JOB_SECONDS, JOBS_RUNNING, RETRIES

log = get_logger(__name__)

RETRY_BASE_SECONDS: Final = 1.0
_DATABASE_TRANSIENT: Final = (
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.LockNotAvailableError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.InterfaceError,
    # A connection terminated mid-statement can leave asyncpg's protocol in a state it reports as this
    # ("cannot switch to state 15; another operation is in progress"): a retry on another connection works.
    asyncpg.exceptions.InternalClientError,
    asyncpg.exceptions.QueryCanceledError,
    OSError,
)


class Transient(Exception):
    """Try again later: ``reason`` labels the retry metric."""

    def __init__(self, reason: str, error: str, retry_after: float | None = None) -> None:
        super().__init__(error)
        self.reason = reason
        self.error = error
        self.retry_after = retry_after


def utcnow() -> datetime:
    return datetime.now(UTC)


def retry_delay(job_try: int, settings: Settings, retry_after: float | None = None) -> float:
    """Exponential backoff with jitter (1 s, 2 s, 4 s ... up to the cap), never sooner than Retry-After."""
    cap = settings.worker_retry_max_delay_seconds
    delay: float = min(cap, RETRY_BASE_SECONDS * float(2 ** min(30, max(0, job_try - 1)))) * random.uniform(0.5, 1.0)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


async def process_event(ctx: dict[str, Any], payload: dict[str, Any]) -> str:
    """arq job ``constants.PROCESS_EVENT_JOB``: one event payload built by ``square_mirror.jobs``."""
    started = time.monotonic()
    JOBS_RUNNING.inc()
    try:
        try:
            job = read_event_job(payload)
        except InvalidEnvelope as exc:
            log.error("job_payload_invalid", error=str(exc))
            EVENTS.labels("unknown", Outcome.FAILED).inc()
            return Outcome.FAILED
        with bound_context(merchant_id=job.merchant_id, event_id=job.event_id, customer_id=job.customer_id):
            return await _run(ctx, job, payload)
    finally:
        JOBS_RUNNING.dec()
        JOB_SECONDS.observe(time.monotonic() - started)


async def _run(ctx: dict[str, Any], job: EventJob, payload: dict[str, Any]) -> str:
    settings: Settings = ctx["settings"]
    pool: asyncpg.Pool = ctx["pool"]
    job_try = int(ctx.get("job_try") or 1)
    last_try = job_try >= settings.worker_max_tries
    deadline = max(1.0, settings.worker_job_timeout_seconds - 3.0)
    try:
        try:
            async with asyncio.timeout(deadline):
                outcome = await handle_event(ctx, job, payload)
        except SquareUnauthorized:
            raise
        except SquareRateLimited as exc:
            raise Transient("rate_limited", str(exc), exc.retry_after) from None
        except SquareUnavailable as exc:
            raise Transient("unavailable", str(exc)) from None
        except SquareBadResponse as exc:
            raise Transient("bad_response", str(exc)) from None
        except TimeoutError:
            raise Transient("timeout", f"job deadline of {deadline:.0f}s passed") from None
        except (*_DATABASE_TRANSIENT, redis_exceptions.ConnectionError, redis_exceptions.TimeoutError) as exc:
            raise Transient("database", f"{type(exc).__name__}: {str(exc)[:120]}") from None
    except SquareUnauthorized as exc:
        try:
            await ctx["mark_unauthorized"](job.merchant_id, str(exc))
        except Exception as mark_exc:  # Redis or Postgres down: the deferral below still matters most
            log.warning("merchant_unauthorized_mark_failed", error=type(mark_exc).__name__)
        error = f"unauthorized: {exc}"
        if last_try:
            return await _fail(ctx, job, error)
        await _note(pool, job, Outcome.UNAUTHORIZED, error)
        EVENTS.labels(job.type, Outcome.UNAUTHORIZED).inc()
        RETRIES.labels("unauthorized").inc()
        defer = settings.worker_unauthorized_retry_seconds * random.uniform(0.8, 1.2)
        log.warning("event_deferred_unauthorized", defer=round(defer, 1), job_try=job_try)
        raise Retry(defer=defer) from None
    except Transient as exc:
        if last_try:
            return await _fail(ctx, job, exc.error)
        await _note(pool, job, None, exc.error)
        RETRIES.labels(exc.reason).inc()
        defer = retry_delay(job_try, settings, exc.retry_after)
        log.info("event_retry", reason=exc.reason, error=exc.error, job_try=job_try, defer=round(defer, 2))
        raise Retry(defer=defer) from None
    except SquareError as exc:  # SquareInvalidRequest, and anything else Square refuses for good
        return await _fail(ctx, job, str(exc))
    except Exception as exc:
        log.exception("event_failed_unexpectedly", error=type(exc).__name__)
        return await _fail(ctx, job, f"internal error: {type(exc).__name__}")
    return outcome


async def _note(pool: asyncpg.Pool, job: EventJob, outcome: str | None, error: str) -> None:
    try:
        await inbox.note_pending(pool, job.merchant_id, job.event_id, outcome, error)
    except Exception as exc:  # the retry matters more than the note
        log.warning("inbox_note_failed", error=type(exc).__name__)


async def _fail(ctx: dict[str, Any], job: EventJob, error: str) -> str:
    log.error("event_failed", error=error, job_try=ctx.get("job_try"))
    EVENTS.labels(job.type, Outcome.FAILED).inc()
    try:
        await inbox.finish(ctx["pool"], job.merchant_id, job.event_id, Outcome.FAILED, error)
    except Exception as exc:
        log.error("inbox_fail_mark_failed", error=type(exc).__name__)
    return Outcome.FAILED


async def handle_event(ctx: dict[str, Any], job: EventJob, payload: dict[str, Any]) -> str:
    """Steps 1-5 above for one run; returns the outcome (already written to the inbox)."""
    pool: asyncpg.Pool = ctx["pool"]
    sighting = await ctx["inbox"].record(job, payload)
    if sighting.processed:
        EVENTS.labels(job.type, Outcome.DUPLICATE).inc()
        return Outcome.DUPLICATE
    await _ensure_merchant(ctx, job.merchant_id)
    if job.type not in CUSTOMER_EVENT_TYPES or not job.customer_id:
        return await _finish(ctx, job, Outcome.IGNORED)
    customer_id = job.customer_id
    merge = job.merge if job.type in ("customer.created", "customer.deleted") else None

    if merge is not None:
        event_time = _event_time(job)
        from_ids, to_id = merge
        deleted = (job.deleted or job.type == "customer.deleted") and customer_id != to_id
        async with pool.acquire() as conn, conn.transaction():
            await store.apply_merge(conn, job.merchant_id, from_ids, to_id, event_time, source="webhook",
                                    event_id=job.event_id)
            if deleted:  # with the version Square gave it; an ID the merge context does not name is plainly deleted
                merged_away = customer_id in from_ids  # then apply_merge dated it by the merge
                await store.tombstone_customers(conn, job.merchant_id, [customer_id], event_time,
                                                merged_into=to_id if merged_away else None,
                                                version=job.version, stated=not merged_away)
        target_version = job.version if customer_id == to_id else None
        stored = (await store.stored_customers(pool, job.merchant_id, [to_id])).get(to_id)
        if not target_is_synced(stored, target_version):
            await ctx["coalescer"].fetch(job.merchant_id, to_id, target_version)
        return await _finish(ctx, job, Outcome.MERGED)

    if event_is_stale(sighting.stored, job):
        return await _finish(ctx, job, Outcome.STALE)

    if job.type == "customer.deleted":
        async with pool.acquire() as conn, conn.transaction():
            stated_at = inbox.parse_time(job.created_at)  # Square's time of the delete
            new = await store.tombstone_customers(conn, job.merchant_id, [customer_id], stated_at or utcnow(),
                                                  version=job.version, stated=stated_at is not None)
            outcome = Outcome.DELETED if new else Outcome.STALE
            await inbox.finish(conn, job.merchant_id, job.event_id, outcome)
        return _count(ctx, job, outcome)

    coalescer: FetchCoalescer = ctx["coalescer"]
    fetched = await coalescer.fetch(job.merchant_id, customer_id, job.version)
    # sync's outcomes (applied, stale, deleted, merged) are the inbox's words for the same things.
    return await _finish(ctx, job, str(fetched.outcome))


async def _finish(ctx: dict[str, Any], job: EventJob, outcome: str) -> str:
    await ctx["inbox"].finish(job, outcome)
    return _count(ctx, job, outcome)


def _count(ctx: dict[str, Any], job: EventJob, outcome: str) -> str:
    EVENTS.labels(job.type, outcome).inc()
    since = _received(ctx, job)
    if since is not None:
        EVENT_LAG_SECONDS.observe(max(0.0, (utcnow() - since).total_seconds()))
    return outcome


def _received(ctx: dict[str, Any], job: EventJob) -> datetime | None:
    received = inbox.parse_time(job.received_at)
    if received is not None:
        return received
    enqueued = ctx.get("enqueue_time")
    return enqueued if isinstance(enqueued, datetime) else None


def _event_time(job: EventJob) -> datetime:
    return inbox.parse_time(job.created_at) or utcnow()


async def _ensure_merchant(ctx: dict[str, Any], merchant_id: str) -> None:
    # arq gives every job a copy of the worker's ctx, so the set comes from startup (shared by the copies);
    # setdefault only creates one for callers that pass a ctx startup did not build.
    known: set[str] = ctx.setdefault("ensured_merchants", set())
    if merchant_id not in known:
        known.add(merchant_id)  # before the await: a burst's first jobs must not all insert the same row
        try:
            if not await store.ensure_merchant(ctx["pool"], merchant_id):
                # A seller whose events the mirror never enabled: its events pass enables them at once, outside
                # this job (square_mirror.searchable_events: events before that are never searchable).
                await _queue_events_pass(ctx, merchant_id)
        except BaseException:
            known.discard(merchant_id)
            raise


async def _queue_events_pass(ctx: dict[str, Any], merchant_id: str) -> None:
    redis = ctx.get("redis")
    if redis is None or not hasattr(redis, "enqueue_job"):
        return
    try:
        await redis.enqueue_job(RECONCILE_LANE_JOB, "events", merchant_id, _job_id=f"reconcile:events:{merchant_id}",
                                _queue_name=QUEUE_NAME)
    except (OSError, redis_exceptions.RedisError) as exc:  # the cron's next events pass enables them instead
        log.info("events_pass_not_queued", merchant_id=merchant_id, error_type=type(exc).__name__)
