"""Helpers for worker tests: an emulator seller, the worker context built as the worker builds it, event payloads."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from emulator.config import EmulatorConfig
from emulator.state import MerchantState
from emulator.testing import EmulatorHandle, run_emulator
from square_mirror.jobs import build_event_job
from square_mirror.settings import Secret, Settings
from worker.context import CONTEXT_KEY, WorkerContext, open_context
from worker.events.process import process_event

_job_tries = itertools.count()


def job_ctx(context: WorkerContext, job_try: int = 1, **arq_values: Any) -> dict[str, Any]:
    """What arq hands one job: a fresh dict with the worker's context and the job's own values."""
    return {CONTEXT_KEY: context, "job_try": job_try, **arq_values}


@dataclass
class Harness:
    emu: EmulatorHandle
    context: WorkerContext
    pool: asyncpg.Pool

    @property
    def state(self) -> MerchantState:
        return self.emu.emulator.merchants[self.emu.merchant_id]

    @property
    def merchant_id(self) -> str:
        return self.emu.merchant_id

    @property
    def api_calls(self) -> int:
        return int(self.context.client.requests_made)

    def events(self) -> list[dict[str, Any]]:
        return [event for _ts, event in self.state.events.entries]

    def payloads(self) -> list[dict[str, Any]]:
        return [build_event_job(event) for event in self.events()]

    async def run(self, payload: dict[str, Any], *, job_try: int = 1) -> str:
        return await process_event(job_ctx(self.context, job_try), payload)

    async def outcome(self, event_id: str) -> asyncpg.Record | None:
        return await self.pool.fetchrow(
            "SELECT outcome, processed_at, error, attempts FROM square.webhook_events WHERE event_id = $1", event_id)

    async def customer(self, cid: str) -> asyncpg.Record | None:
        return await self.pool.fetchrow("SELECT * FROM square.customers WHERE id = $1", cid)


def worker_settings(base_url: str, token: str, redis_url: str, **overrides: Any) -> Settings:
    settings = Settings(
        redis_url=Secret(redis_url),
        square_base_url=base_url,
        square_access_token=Secret(token),
        square_max_requests_per_second=0,
        worker_metrics_port=0,
        worker_max_tries=5,
        worker_fetch_window_ms=2.0,
    )
    return replace(settings, **overrides)


@asynccontextmanager
async def worker_ctx(pool: asyncpg.Pool, redis_url: str, settings: Settings) -> AsyncIterator[WorkerContext]:
    """The worker's context on a test's pool, with a plain Redis connection (so no job is queued from it)."""
    redis = aioredis.Redis.from_url(redis_url)
    try:
        async with open_context(settings, worker=True, pool=pool, redis=redis) as context:
            yield context
    finally:
        await redis.aclose()


@asynccontextmanager
async def harness(pool: asyncpg.Pool, redis_url: str, config: EmulatorConfig | None = None,
                  **overrides: Any) -> AsyncIterator[Harness]:
    async with run_emulator(config) as emu:
        settings = worker_settings(emu.base_url, emu.token, redis_url, **overrides)
        async with worker_ctx(pool, redis_url, settings) as context:
            yield Harness(emu, context, pool)
