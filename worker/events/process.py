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
import time
from datetime import datetime
from typing import Any

import asyncpg
from arq.worker import Retry
from redis import exceptions as redis_exceptions

from square_mirror.constants import (
    CUSTOM_ATTRIBUTE_DEFINITION_EVENT_TYPES,
    CUSTOM_ATTRIBUTE_EVENT_TYPES,
    CUSTOMER_EVENT_TYPES,
    OAUTH_REVOKED_EVENT,
    RECONCILE_LANE_JOB,
    queue_for,
    reconcile_job_id,
)
from square_mirror.errors import SquareError, SquareRateLimited, SquareUnauthorized
from square_mirror.jobs import EventJob, InvalidEnvelope, inbox_payload, read_event_job
from square_mirror.logs import bound_context, get_logger
from square_mirror.retry import event_retry_delay, transient_reason, unauthorized_delay
from square_mirror.timefmt import parse_time, utcnow
from worker import attribute_sync, oauth, store
from worker.context import WorkerContext, enqueue_time, job_try, worker_context
from worker.events import attributes, inbox
from worker.events.rules import event_is_stale, target_is_synced
from worker.metrics import EVENT_LAG_SECONDS, EVENTS, JOB_SECONDS, JOBS_RUNNING, RETRIES
from worker.outcome import Outcome

log = get_logger(__name__)


class Transient(Exception):
    """Try again later: ``reason`` labels the retry metric."""

    def __init__(self, reason: str, error: str, retry_after: float | None = None) -> None:
        super().__init__(error)
        self.reason = reason
        self.error = error
        self.retry_after = retry_after


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
            return await _run(worker_context(ctx), job, payload, job_try(ctx), enqueue_time(ctx))
    finally:
        JOBS_RUNNING.dec()
        JOB_SECONDS.observe(time.monotonic() - started)


async def _run(wc: WorkerContext, job: EventJob, payload: dict[str, Any], attempt: int,
               enqueued: datetime | None) -> str:
    settings = wc.settings
    last_try = attempt >= settings.worker_max_tries
    deadline = max(1.0, settings.worker_job_timeout_seconds - 3.0)
    try:
        try:
            async with asyncio.timeout(deadline):
                outcome = await handle_event(wc, job, payload, enqueued)
        except SquareUnauthorized:
            raise
        except Exception as exc:
            transient = _transient(exc, deadline)
            if transient is None:
                raise
            raise transient from None
    except SquareUnauthorized as exc:
        if await oauth.withdrawn_now(wc, job.merchant_id):  # revoked while this job ran: see handle_event
            return await _finish(wc, job, Outcome.IGNORED, enqueued)
        try:
            await wc.hooks.mark_unauthorized(job.merchant_id, str(exc))
        except Exception as mark_exc:  # Redis or Postgres down: the deferral below still matters most
            log.warning("merchant_unauthorized_mark_failed", error=type(mark_exc).__name__)
        error = f"unauthorized: {exc}"
        if last_try:
            return await _fail(wc, job, error, attempt)
        await _note(wc.pool, job, Outcome.UNAUTHORIZED, error)
        EVENTS.labels(job.type, Outcome.UNAUTHORIZED).inc()
        RETRIES.labels("unauthorized").inc()
        defer = unauthorized_delay(settings.worker_unauthorized_retry_seconds)
        log.warning("event_deferred_unauthorized", defer=round(defer, 1), job_try=attempt)
        raise Retry(defer=defer) from None
    except Transient as exc:
        if last_try:
            return await _fail(wc, job, exc.error, attempt)
        await _note(wc.pool, job, None, exc.error)
        RETRIES.labels(exc.reason).inc()
        defer = event_retry_delay(attempt, settings.worker_retry_max_delay_seconds, exc.retry_after)
        log.info("event_retry", reason=exc.reason, error=exc.error, job_try=attempt, defer=round(defer, 2))
        raise Retry(defer=defer) from None
    except SquareError as exc:  # SquareInvalidRequest, and anything else Square refuses for good
        return await _fail(wc, job, str(exc), attempt)
    except Exception as exc:
        log.exception("event_failed_unexpectedly", error=type(exc).__name__)
        return await _fail(wc, job, f"internal error: {type(exc).__name__}", attempt)
    return outcome


def _transient(exc: Exception, deadline: float) -> Transient | None:
    """``exc`` as a :class:`Transient` (the reason and a short, PII-free error), or None when it is not one."""
    reason = transient_reason(exc)
    if reason is None:
        return None
    if isinstance(exc, TimeoutError):
        error = f"job deadline of {deadline:.0f}s passed"
    elif reason == "database":
        error = f"{type(exc).__name__}: {str(exc)[:120]}"
    else:
        error = str(exc)
    return Transient(reason, error, exc.retry_after if isinstance(exc, SquareRateLimited) else None)


async def _note(pool: asyncpg.Pool, job: EventJob, outcome: str | None, error: str) -> None:
    try:
        await inbox.note_pending(pool, job.merchant_id, job.event_id, outcome, error)
    except Exception as exc:  # the retry matters more than the note
        log.warning("inbox_note_failed", error=type(exc).__name__)


async def _fail(wc: WorkerContext, job: EventJob, error: str, attempt: int) -> str:
    log.error("event_failed", error=error, job_try=attempt)
    EVENTS.labels(job.type, Outcome.FAILED).inc()
    try:
        await inbox.finish(wc.pool, job.merchant_id, job.event_id, Outcome.FAILED, error)
    except Exception as exc:
        log.error("inbox_fail_mark_failed", error=type(exc).__name__)
    return Outcome.FAILED


async def handle_event(wc: WorkerContext, job: EventJob, payload: dict[str, Any],
                       enqueued: datetime | None = None) -> str:
    """Steps 1-5 above for one run; returns the outcome (already written to the inbox)."""
    pool = wc.pool
    sighting = await wc.inbox.record(job, inbox_payload(payload))
    if sighting.processed:
        EVENTS.labels(job.type, Outcome.DUPLICATE).inc()
        return Outcome.DUPLICATE
    if job.type == OAUTH_REVOKED_EVENT or oauth.withdrawn(wc, job.merchant_id):
        return await _finish(wc, job, await _seller_gone(wc, job), enqueued)
    await _ensure_merchant(wc, job.merchant_id)
    if job.type in CUSTOM_ATTRIBUTE_EVENT_TYPES or job.type in CUSTOM_ATTRIBUTE_DEFINITION_EVENT_TYPES:
        return _count(job, await attributes.apply(wc, job, sighting.stored), enqueued)
    if job.type not in CUSTOMER_EVENT_TYPES or not job.customer_id:
        return await _finish(wc, job, Outcome.IGNORED, enqueued)
    customer_id = job.customer_id
    merge = job.merge if job.type in ("customer.created", "customer.deleted") else None

    if merge is not None:
        event_time = parse_time(job.created_at) or utcnow()
        from_ids, to_id = merge
        deleted = (job.deleted or job.type == "customer.deleted") and customer_id != to_id
        async with pool.acquire() as conn, conn.transaction():
            merged = await store.apply_merge(conn, job.merchant_id, from_ids, to_id, event_time,
                                             source=store.MergeSource.WEBHOOK, event_id=job.event_id)
            if deleted:  # with the version Square gave it; an ID the merge context does not name is plainly deleted
                merged_away = customer_id in from_ids  # then apply_merge dated it by the merge
                await store.tombstone_customers(conn, job.merchant_id, [customer_id], event_time,
                                                merged_into=to_id if merged_away else None,
                                                version=job.version, stated=not merged_away)
        target_version = job.version if customer_id == to_id else None
        stored = (await store.stored_customers(pool, job.merchant_id, [to_id])).get(to_id)
        if not target_is_synced(stored, target_version):
            await wc.coalescer.fetch(job.merchant_id, to_id, target_version)
        if merged.recorded or customer_id == to_id:
            # What Square does with the sources' custom attributes is not documented: their values ended with
            # their tombstones, and the target's are read again (once per merge learned, and at its creation).
            await attribute_sync.sync_values(wc.sync, job.merchant_id, [to_id], concurrency=1)
        return await _finish(wc, job, Outcome.MERGED, enqueued)

    if event_is_stale(sighting.stored, job):
        return await _finish(wc, job, Outcome.STALE, enqueued)

    if job.type == "customer.deleted":
        async with pool.acquire() as conn, conn.transaction():
            stated_at = parse_time(job.created_at)  # Square's time of the delete
            new = await store.tombstone_customers(conn, job.merchant_id, [customer_id], stated_at or utcnow(),
                                                  version=job.version, stated=stated_at is not None)
            outcome = Outcome.DELETED if new else Outcome.STALE
            await inbox.finish(conn, job.merchant_id, job.event_id, outcome)
        return _count(job, outcome, enqueued)

    fetched = await wc.coalescer.fetch(job.merchant_id, customer_id, job.version)
    return await _finish(wc, job, fetched.outcome, enqueued)


async def _seller_gone(wc: WorkerContext, job: EventJob) -> Outcome:
    """A revocation is recorded (worker/oauth.py). Any other event of a seller whose OAuth access was revoked or
    removed ends ``ignored``: not ``unauthorized``, which defers the job for hours in the hope that a token comes
    back. No token will: the seller withdrew its consent, and if it connects again its backfill lists everything
    again, so nothing an ignored event described is lost, and nothing is read or kept meanwhile."""
    if job.type == OAUTH_REVOKED_EVENT:
        return await oauth.record_revocation(wc, job)
    return Outcome.IGNORED


async def _finish(wc: WorkerContext, job: EventJob, outcome: Outcome, enqueued: datetime | None) -> str:
    await wc.inbox.finish(job, outcome)
    return _count(job, outcome, enqueued)


def _count(job: EventJob, outcome: Outcome, enqueued: datetime | None) -> str:
    EVENTS.labels(job.type, outcome).inc()
    since = parse_time(job.received_at) or enqueued
    if since is not None:
        EVENT_LAG_SECONDS.observe(max(0.0, (utcnow() - since).total_seconds()))
    return outcome


async def _ensure_merchant(wc: WorkerContext, merchant_id: str) -> None:
    known = wc.ensured_merchants  # shared by every job of this process
    if merchant_id not in known:
        known.add(merchant_id)  # before the await: a burst's first jobs must not all insert the same row
        try:
            if not await store.ensure_merchant(wc.pool, merchant_id):
                # A seller whose events the mirror never enabled: its events pass enables them at once, outside
                # this job (square_mirror.searchable_events: events before that are never searchable).
                await _queue_events_pass(wc, merchant_id)
        except BaseException:
            known.discard(merchant_id)
            raise


async def _queue_events_pass(wc: WorkerContext, merchant_id: str) -> None:
    if wc.arq_redis is None:
        return
    try:
        await wc.arq_redis.enqueue_job(RECONCILE_LANE_JOB, "events", merchant_id,
                                       _job_id=reconcile_job_id("events", merchant_id),
                                       _queue_name=queue_for(RECONCILE_LANE_JOB))
    except (OSError, redis_exceptions.RedisError) as exc:  # the cron's next events pass enables them instead
        log.info("events_pass_not_queued", merchant_id=merchant_id, error_type=type(exc).__name__)
