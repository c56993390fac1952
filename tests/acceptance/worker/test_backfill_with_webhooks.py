"""A backfill racing a live webhook stream (receiver -> Redis -> event worker) still converges to Square's truth."""

from __future__ import annotations

import asyncio
import contextlib
import random

import asyncpg
from aiohttp import web

from emulator import EmulatorConfig
from emulator.testing import run_emulator
from square_mirror.embedded import free_port
from square_mirror.settings import Secret, Settings
from tests.integration.worker.support import worker_settings
from tests.mirror_check import assert_mirror_matches, emulator_client
from webhooks.app import create_app
from worker import runs
from worker.app import build_worker
from worker.backfill import backfill
from worker.sync import SyncContext

KEY = "backfill-race-signature-key"


async def _queue_settled(redis_url: str, timeout: float = 30.0) -> None:
    """Wait until the worker has taken and finished every queued job (nothing queued, nothing in progress)."""
    import redis.asyncio as aioredis

    from square_mirror.constants import QUEUE_NAME

    client = aioredis.Redis.from_url(redis_url)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        quiet = 0
        while loop.time() < deadline and quiet < 3:
            busy = await client.zcard(QUEUE_NAME) or await client.keys("arq:in-progress:*")
            quiet = 0 if busy else quiet + 1
            await asyncio.sleep(0.1)
    finally:
        await client.aclose()


async def test_backfill_concurrent_with_webhooks_converges(db_pool: asyncpg.Pool, redis_url: str) -> None:
    port = free_port()
    notification_url = f"http://127.0.0.1:{port}/square/webhooks"
    receiver = web.AppRunner(create_app(Settings(redis_url=Secret(redis_url), webhook_signature_keys=(Secret(KEY),),
                                                 webhook_notification_url=notification_url)), access_log=None)
    await receiver.setup()
    await web.TCPSite(receiver, "127.0.0.1", port).start()
    try:
        async with run_emulator(EmulatorConfig(seed=9)) as emu:
            await emu.seed(customers=2000, groups=3, segments=2)
            await emu.subscribe(notification_url, KEY)
            await emu.set_faults(webhook_duplicate_rate=0.3, webhook_reorder_rate=0.3,
                                 webhook_reorder_max_delay_seconds=0.2, endpoint_latency_ms={"SearchCustomers": 10})
            settings = worker_settings(emu.base_url, emu.token, redis_url)
            worker = build_worker(settings, handle_signals=False, ctx={"pool": db_pool})
            worker_task = asyncio.create_task(worker.main())
            state = emu.emulator.merchants[emu.merchant_id]
            rng = random.Random(4)

            async def stream() -> None:
                group = next(iter(state.groups))
                for n in range(80):
                    ids = sorted(state.customers)
                    cid = rng.choice(ids)
                    action = n % 8
                    if action == 0:
                        state.delete_customer(cid, None)
                    elif action == 1:
                        state.merge(rng.sample(ids, 2))
                    elif action == 2:
                        state.create_customer({"given_name": f"Live{n}", "family_name": "Stream"})
                    elif action == 3:
                        state.set_group(cid, group, cid not in state.group_members[group])
                    else:
                        state.update_customer(cid, {"note": f"live update {n}"}, None, clear_null=True)
                    await asyncio.sleep(0.01)

            client = emulator_client(emu)
            try:
                run, _ = await asyncio.gather(backfill(SyncContext(db_pool, client), emu.merchant_id, concurrency=4),
                                              stream())
            finally:
                await client.close()
            assert run.status == runs.SUCCEEDED, run.error
            assert await emu.drain_webhooks(timeout=20)
            await _queue_settled(redis_url)
            worker_task.cancel()
            await asyncio.gather(worker_task, return_exceptions=True)
            with contextlib.suppress(asyncio.CancelledError):
                await worker.close()
            finisher = build_worker(settings, burst=True, handle_signals=False, ctx={"pool": db_pool})
            await finisher.main()
            await finisher.close()
            # Segment membership never arrives by webhook and the stream changed none: the mirror equals Square.
            await assert_mirror_matches(db_pool, emu)
    finally:
        await receiver.cleanup()
