"""The worker process's shared state: one ``startup`` / ``shutdown`` pair that fills arq's ctx.

Keys every job may use (backfill and reconcile jobs run in the same process):
``settings``, ``pool`` (asyncpg), ``client`` (SquareClient with the shared Redis rate limit and the
unauthorized hook), ``sync`` (worker.sync.SyncContext), ``redis`` (arq's own connection), plus
``coalescer`` (worker.events.coalescer.FetchCoalescer), ``inbox`` (worker.events.inbox.Inbox, batched inbox writes) and
``mark_unauthorized`` / ``mark_authorized``.
"""

from __future__ import annotations

from typing import Any, Final

import asyncpg
from redis.asyncio import Redis

from square_mirror.constants import QUEUE_NAME, UNAUTHORIZED_KEY
from square_mirror.db import create_pool, init_connection
from square_mirror.logs import get_logger
from square_mirror.ratelimit import RateLimiter
from square_mirror.settings import Settings
from square_mirror.square_api import SquareClient
from worker import store
from worker.events.coalescer import FetchCoalescer
from worker.events.inbox import Inbox
from worker.metrics import MERCHANT_UNAUTHORIZED, QUEUE_DEPTH, start_metrics_server
from worker.sync import SyncContext

log = get_logger(__name__)

UNAUTHORIZED_TTL_SECONDS: Final = 30 * 24 * 3600


async def startup(ctx: dict[str, Any]) -> None:
    """arq ``on_startup``: ctx arrives with ``settings`` and ``redis``; anything already in ctx is kept."""
    settings: Settings = ctx["settings"]
    redis: Redis = ctx["redis"]
    owned: list[str] = ctx.setdefault("_owned", [])
    if "pool" not in ctx:
        ctx["pool"] = await create_pool(settings.require_database_url(), min_size=2,
                                        max_size=settings.worker_db_pool_size)
        owned.append("pool")
    pool = ctx["pool"]

    async def mark_unauthorized(merchant_id: str, message: str) -> None:
        MERCHANT_UNAUTHORIZED.labels(merchant_id).set(1)
        first = not await redis.exists(UNAUTHORIZED_KEY + merchant_id)
        await redis.set(UNAUTHORIZED_KEY + merchant_id, message[:300], ex=UNAUTHORIZED_TTL_SECONDS)
        await store.set_merchant_auth(pool, merchant_id, ok=False, error=message[:300])
        if first:
            log.warning("merchant_unauthorized", merchant_id=merchant_id, error=message)

    async def mark_authorized(merchant_id: str) -> None:
        """After a successful call: clear an unauthorized mark (one Redis round trip per batch)."""
        if await redis.delete(UNAUTHORIZED_KEY + merchant_id):
            MERCHANT_UNAUTHORIZED.labels(merchant_id).set(0)
            await store.set_merchant_auth(pool, merchant_id, ok=True)
            log.info("merchant_authorized_again", merchant_id=merchant_id)

    ctx["mark_unauthorized"] = mark_unauthorized
    ctx["ensured_merchants"] = set()  # merchants whose square.merchants row this process has written
    ctx["mark_authorized"] = mark_authorized
    if "client" not in ctx:
        limiter = RateLimiter(redis, rate=settings.square_max_requests_per_second,
                              burst=settings.square_request_burst)
        ctx["client"] = SquareClient.from_settings(
            settings, rate_limiter=limiter, timeout=settings.square_timeout_seconds,
            on_unauthorized=mark_unauthorized, max_connections=max(20, settings.worker_max_jobs),
        )
        owned.append("client")
    ctx["sync"] = SyncContext(pool, ctx["client"])
    inbox_pool = pool
    if "pool" in owned:
        # The inbox's two statements touch no session state (no SET, LISTEN, advisory lock, cursor), so their
        # connections skip asyncpg's reset-on-release round trip: at hundreds of events/s that is measurable.
        inbox_pool = await asyncpg.create_pool(settings.require_database_url(), min_size=1, max_size=4,
                                               init=init_connection, reset=_no_reset)
        ctx["_inbox_pool"] = inbox_pool
    ctx["inbox"] = Inbox(inbox_pool)
    ctx["coalescer"] = FetchCoalescer(ctx["sync"], window=settings.worker_fetch_window_ms / 1000.0,
                                      on_success=mark_authorized)

    async def sample_queue_depth() -> None:
        QUEUE_DEPTH.set(await redis.zcard(QUEUE_NAME))

    ctx["metrics_runner"] = await start_metrics_server(settings.worker_metrics_port,
                                                       before_scrape=sample_queue_depth)
    log.info("worker_started", max_jobs=settings.worker_max_jobs, poll_delay=settings.worker_poll_delay,
             job_timeout=settings.worker_job_timeout_seconds, max_tries=settings.worker_max_tries)


async def _no_reset(_conn: asyncpg.Connection) -> None:
    return None


async def shutdown(ctx: dict[str, Any]) -> None:
    """arq ``on_shutdown``: finish batches in flight, then close what startup opened."""
    coalescer: FetchCoalescer | None = ctx.get("coalescer")
    if coalescer is not None:
        await coalescer.close()
    inbox: Inbox | None = ctx.get("inbox")
    if inbox is not None:
        await inbox.close()
    runner = ctx.get("metrics_runner")
    if runner is not None:
        await runner.cleanup()
    owned: list[str] = ctx.get("_owned", [])
    if "client" in owned:
        await ctx["client"].close()
    if "pool" in owned:
        await ctx["pool"].close()
    if ctx.get("_inbox_pool") is not None:
        await ctx["_inbox_pool"].close()
    log.info("worker_stopped")
