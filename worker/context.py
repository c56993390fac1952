"""The worker's context: what every job, lane and command works with, built by one function.

:func:`build_context` is used by the worker process (arq's ``on_startup``, worker/app.py) and by the
``backfill``, ``reconcile`` and ``redrive`` commands alike: a Postgres pool, the one Square client (rate-limited
per merchant through Redis when REDIS_URL is set), the SyncContext, the token hooks, the inbox and the fetch
coalescer. arq hands each job a dict: the context sits in it under :data:`CONTEXT_KEY`, and a job reads it
with :func:`worker_context` (and arq's own values with :func:`job_try` / :func:`job_id`). arq gives every job a
shallow copy of that dict, so per-process state (the ensured merchants, the batchers) lives in the context.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

import asyncpg

from square_mirror.constants import EVENT_FETCH_SHARE, QUEUE_NAME, UNAUTHORIZED_KEY
from square_mirror.db import create_pool, init_connection
from square_mirror.logs import get_logger
from square_mirror.ratelimit import RateLimiter
from square_mirror.settings import Settings
from square_mirror.square_api import SquareClient
from worker import store
from worker.events.attribute_writer import AttributeWriter
from worker.events.coalescer import FetchCoalescer
from worker.events.inbox import ERROR_MAX_CHARS, Inbox
from worker.metrics import MERCHANT_UNAUTHORIZED
from worker.runs import RunLocks
from worker.sellers import SellerCredentials
from worker.sync import SyncContext

if TYPE_CHECKING:
    from arq.connections import ArqRedis
    from redis.asyncio import Redis

log = get_logger(__name__)

CONTEXT_KEY: Final = "worker_context"
UNAUTHORIZED_TTL_SECONDS: Final = 30 * 24 * 3600


class AuthHooks:
    """A merchant's token rejected (401/403, or no token at all) or working again.

    Recorded in ``square.merchants.auth_status`` (what ``status`` and the metrics read) and, with Redis, as a
    mark that lets the worker notice cheaply when the merchant works again (one Redis round trip per batch).
    """

    def __init__(self, pool: asyncpg.Pool, redis: Redis | None) -> None:
        self.pool = pool
        self.redis = redis

    async def mark_unauthorized(self, merchant_id: str, message: str) -> None:
        MERCHANT_UNAUTHORIZED.labels(merchant_id).set(1)
        first = True
        if self.redis is not None:
            first = not await self.redis.exists(UNAUTHORIZED_KEY + merchant_id)
            await self.redis.set(UNAUTHORIZED_KEY + merchant_id, message[:ERROR_MAX_CHARS],
                                 ex=UNAUTHORIZED_TTL_SECONDS)
        await store.set_merchant_auth(self.pool, merchant_id, ok=False, error=message[:ERROR_MAX_CHARS])
        if first:
            log.warning("merchant_unauthorized", merchant_id=merchant_id, error=message)

    async def report_unauthorized(self, merchant_id: str, message: str) -> None:
        """The client's hook: recording it must never hide the 401 itself (Redis or Postgres may be down)."""
        try:
            await self.mark_unauthorized(merchant_id, message)
        except Exception as exc:
            log.warning("merchant_unauthorized_mark_failed", merchant_id=merchant_id, error=type(exc).__name__)

    async def mark_authorized(self, merchant_id: str) -> None:
        """After a successful call: clear an unauthorized mark."""
        if self.redis is not None and await self.redis.delete(UNAUTHORIZED_KEY + merchant_id):
            MERCHANT_UNAUTHORIZED.labels(merchant_id).set(0)
            await store.set_merchant_auth(self.pool, merchant_id, ok=True)
            log.info("merchant_authorized_again", merchant_id=merchant_id)


@dataclass(frozen=True)
class WorkerContext:
    settings: Settings
    pool: asyncpg.Pool
    client: SquareClient
    sync: SyncContext
    hooks: AuthHooks
    inbox: Inbox  # the event pipeline's batched inbox writes
    coalescer: FetchCoalescer  # the event pipeline's batched fetches
    attributes: AttributeWriter  # the event pipeline's batched custom-attribute writes
    sellers: SellerCredentials | None = None  # OAuth sellers' tokens (None without SQUARE_MIRROR_ENCRYPTION_KEYS)
    redis: Redis | None = None  # the rate limit and the unauthorized marks; None without REDIS_URL
    arq_redis: ArqRedis | None = None  # queues jobs (the events lane, continuations, redrive); None: cannot
    ensured_merchants: set[str] = field(default_factory=set)  # merchants whose row this process has written
    own_merchants: dict[str, str] = field(default_factory=dict)  # SQUARE_ACCESS_TOKEN -> its merchant (asked once)
    exit_stack: AsyncExitStack = field(default_factory=AsyncExitStack, repr=False)  # what aclose releases

    async def aclose(self) -> None:
        """Finish the batches in flight, then close what :func:`build_context` opened."""
        await self.exit_stack.aclose()


async def _no_reset(_conn: asyncpg.Connection) -> None:
    return None


async def build_context(
    settings: Settings,
    *,
    worker: bool = False,
    concurrency: int | None = None,
    pool: asyncpg.Pool | None = None,
    client: SquareClient | None = None,
    redis: Redis | None = None,
    arq_redis: ArqRedis | None = None,
    enqueue: bool = False,
) -> WorkerContext:
    """The context of the worker process (``worker``: sized by the WORKER_* settings, its inbox on a pool of its
    own) or of a command (sized by ``concurrency``, default BACKFILL_CONCURRENCY). ``pool``, ``client`` and
    ``redis`` / ``arq_redis`` are used when given (and left open); otherwise they are opened from the settings,
    and closed by :meth:`WorkerContext.aclose`. A command that queues jobs (``enqueue``) opens an arq pool when
    REDIS_URL is set."""
    stack = AsyncExitStack()
    try:
        conc = concurrency or settings.backfill_concurrency
        inbox_pool = pool
        if pool is None:
            if worker:
                pool = await create_pool(settings.require_database_url(), min_size=2,
                                         max_size=settings.worker_db_pool_size)
            else:
                pool = await create_pool(settings.require_database_url(), min_size=1, max_size=max(10, conc * 2 + 4))
            stack.push_async_callback(pool.close)
            inbox_pool = pool
            if worker:
                # The inbox's two statements touch no session state (no SET, LISTEN, advisory lock, cursor), so
                # their connections skip asyncpg's reset-on-release round trip: at hundreds of events/s that is
                # measurable.
                inbox_pool = await asyncpg.create_pool(settings.require_database_url(), min_size=1, max_size=4,
                                                       init=init_connection, reset=_no_reset)
                stack.push_async_callback(inbox_pool.close)
        assert inbox_pool is not None
        if redis is None and arq_redis is None and settings.redis_url is not None:
            if enqueue:
                from arq import create_pool as create_arq_pool

                from square_mirror.queue import deserialize_job, redis_settings, serialize_job

                arq_redis = await create_arq_pool(redis_settings(settings.redis_url.reveal()),
                                                  job_serializer=serialize_job, job_deserializer=deserialize_job,
                                                  default_queue_name=QUEUE_NAME)
                stack.push_async_callback(arq_redis.aclose)
            else:
                from redis.asyncio import Redis  # here: ~0.2 CPU s of start-up that a run without Redis skips

                redis = Redis.from_url(settings.redis_url.reveal())
                stack.push_async_callback(redis.aclose)
        redis = redis if redis is not None else arq_redis
        hooks = AuthHooks(pool, redis)
        limiter = RateLimiter(redis, rate=settings.square_max_requests_per_second, burst=settings.square_request_burst,
                              lane_share=settings.lane_budget_share)
        if client is None:
            client = SquareClient.from_settings(
                settings, rate_limiter=limiter if limiter.enabled else None, timeout=settings.square_timeout_seconds,
                on_unauthorized=hooks.report_unauthorized,
                # A command's backfill reads custom attributes beside its partitions (BACKFILL_CUSTOM_ATTRIBUTE_...).
                max_connections=max(20, settings.worker_max_jobs) if worker
                else max(100, conc * 4 + settings.backfill_custom_attribute_concurrency))
            stack.push_async_callback(client.close)
        locks = RunLocks(pool)  # the process's concurrent runs share one lock session (worker/runs.py)
        stack.push_async_callback(locks.close)  # before the pool closes (the stack unwinds in reverse)
        sync = SyncContext(pool, client, locks)
        inbox = Inbox(inbox_pool)
        stack.push_async_callback(inbox.close)
        rate = settings.square_max_requests_per_second
        coalescer = FetchCoalescer(sync, window=settings.worker_fetch_window_ms / 1000.0,
                                   min_interval=1.0 / (EVENT_FETCH_SHARE * rate) if rate > 0 else 0.0,
                                   on_success=hooks.mark_authorized)
        stack.push_async_callback(coalescer.close)
        attributes = AttributeWriter(pool, settings.square_application_id,
                                     window=settings.worker_fetch_window_ms / 1000.0)
        stack.push_async_callback(attributes.close)
        sellers = None
        if settings.encryption_keys:
            sellers = SellerCredentials(pool, client, settings)
            await sellers.start(catch_up=worker)
            stack.push_async_callback(sellers.close)
    except BaseException:
        await stack.aclose()
        raise
    return WorkerContext(settings=settings, pool=pool, client=client, sync=sync, hooks=hooks, inbox=inbox,
                         coalescer=coalescer, attributes=attributes, sellers=sellers, redis=redis,
                         arq_redis=arq_redis, exit_stack=stack)


@asynccontextmanager
async def open_context(settings: Settings, **options: Any) -> AsyncIterator[WorkerContext]:
    """:func:`build_context` for the length of a ``with`` block (the commands, the tests)."""
    context = await build_context(settings, **options)
    try:
        yield context
    finally:
        await context.aclose()


def worker_context(ctx: Mapping[str, Any]) -> WorkerContext:
    """The context arq's job dict carries (put there by the worker's start-up, worker/app.py)."""
    context = ctx.get(CONTEXT_KEY)
    if not isinstance(context, WorkerContext):
        raise TypeError(f"no WorkerContext under {CONTEXT_KEY!r} in this job's ctx")
    return context


def job_try(ctx: Mapping[str, Any]) -> int:
    """Which try of its job this is (arq counts from 1)."""
    return int(ctx.get("job_try") or 1)


def job_id(ctx: Mapping[str, Any]) -> str:
    return str(ctx.get("job_id") or "")


def enqueue_time(ctx: Mapping[str, Any]) -> datetime | None:
    enqueued = ctx.get("enqueue_time")
    return enqueued if isinstance(enqueued, datetime) else None
