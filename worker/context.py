"""What the backfill and reconcile commands build for themselves outside an arq worker.

The same objects an arq worker puts in its ``ctx`` (``pool``, ``client``, ``sync``, ``settings``, ``redis``):
a Postgres pool, the one Square client (rate-limited through Redis when REDIS_URL is set), the SyncContext.
Also the one rule for which merchants ``--all`` means, and the signal handling that turns SIGTERM into a
cancellation, so an interrupted run is recorded as ``interrupted``.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg

from square_mirror.db import create_pool
from square_mirror.logs import configure_logging, get_logger
from square_mirror.ratelimit import RateLimiter
from square_mirror.settings import Settings, SettingsError
from square_mirror.square_api import SquareClient
from worker import store
from worker.sync import SyncContext

log = get_logger(__name__)
T = TypeVar("T")


@dataclass
class Runtime:
    settings: Settings
    pool: asyncpg.Pool
    client: SquareClient
    sync: SyncContext
    redis: Any  # redis.asyncio.Redis or None

    def as_ctx(self) -> dict[str, Any]:
        """The arq-style ctx the lane functions take."""
        return {"settings": self.settings, "pool": self.pool, "client": self.client, "sync": self.sync,
                "redis": self.redis}


@asynccontextmanager
async def open_runtime(settings: Settings, *, concurrency: int | None = None,
                       use_redis: bool = True) -> AsyncIterator[Runtime]:
    conc = concurrency or settings.backfill_concurrency
    pool = await create_pool(settings.require_database_url(), min_size=1, max_size=max(10, conc * 2 + 4))
    redis: Any = None
    if use_redis and settings.redis_url is not None:
        from redis.asyncio import Redis  # here, not at the top: ~0.2 CPU s of start-up a run without Redis skips

        redis = Redis.from_url(settings.redis_url.reveal())
    limiter = RateLimiter(redis, rate=settings.square_max_requests_per_second, burst=settings.square_request_burst)

    async def unauthorized(merchant_id: str, message: str) -> None:
        with suppress(Exception):
            await store.set_merchant_auth(pool, merchant_id, ok=False, error=message[:500])

    client = SquareClient.from_settings(settings, rate_limiter=limiter if limiter.enabled else None,
                                        timeout=settings.square_timeout_seconds, on_unauthorized=unauthorized,
                                        max_connections=max(100, conc * 4))
    try:
        yield Runtime(settings, pool, client, SyncContext(pool, client), redis)
    finally:
        await client.close()
        if redis is not None:
            await redis.aclose()
        await pool.close()


async def resolve_merchants(rt: Runtime, merchant: str | None) -> list[str]:
    """``--merchant ID``, else every merchant known: the tokens file / SQUARE_MERCHANT_ID, the mirror's
    ``square.merchants``, and, with only SQUARE_ACCESS_TOKEN, the token's own merchant (GET /v2/merchants/me)."""
    if merchant:
        return [merchant]
    known = set(rt.client.tokens.merchants())
    rows = await rt.pool.fetch("SELECT merchant_id FROM square.merchants")
    known.update(r["merchant_id"] for r in rows)
    settings = rt.settings
    if settings.square_access_token is not None and not settings.square_merchant_id:
        own = await rt.client.retrieve_own_merchant_id(settings.square_access_token.reveal())
        known.add(own)
    if not known:
        raise SettingsError("no merchant to sync: set SQUARE_ACCESS_TOKEN, SQUARE_TOKENS_FILE or pass --merchant")
    return sorted(known)


def setup_logging(settings: Settings) -> None:
    configure_logging(settings.log_level, secrets=settings.secrets())


async def cancellable(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` as a task that SIGTERM (and SIGINT) cancel, so runs end as ``interrupted``, not dead."""
    task = asyncio.ensure_future(coro)
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, task.cancel)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - not on the main thread / Windows
            pass
    try:
        return await task
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
