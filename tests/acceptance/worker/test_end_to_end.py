"""Square (emulator) -> signed webhooks (duplicated, reordered) -> receiver -> Redis -> worker -> Postgres.

The whole pipeline in one test: the mirror must end up equal to the emulator's truth.
"""

from __future__ import annotations

import asyncpg
from aiohttp import web

from emulator.testing import run_emulator
from square_mirror.embedded import free_port
from square_mirror.settings import Secret, Settings
from tests.integration.worker.support import worker_settings
from webhooks.app import create_app
from worker.app import build_worker

KEY = "end-to-end-signature-key"


async def test_webhooks_through_the_queue_make_the_mirror_equal_square(db_pool: asyncpg.Pool, redis_url: str) -> None:
    port = free_port()
    notification_url = f"http://127.0.0.1:{port}/square/webhooks"
    receiver_settings = Settings(redis_url=Secret(redis_url), webhook_signature_keys=(Secret(KEY),),
                                 webhook_notification_url=notification_url)
    runner = web.AppRunner(create_app(receiver_settings), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with run_emulator() as emu:
            await emu.subscribe(notification_url, KEY)
            await emu.set_faults(webhook_duplicate_rate=0.5, webhook_reorder_rate=0.5,
                                 webhook_reorder_max_delay_seconds=0.3)
            state = emu.emulator.merchants[emu.merchant_id]
            group = state.create_group("VIP", None)["id"]
            ids = [state.create_customer({"given_name": f"E{n}"})[0].id for n in range(6)]
            for cid in ids[:3]:
                state.update_customer(cid, {"family_name": "Updated"}, None, clear_null=True)
            state.set_group(ids[0], group, True)
            state.delete_customer(ids[4], None)
            merged = state.merge([ids[1], ids[2]]).id
            assert await emu.drain_webhooks()

            worker = build_worker(worker_settings(emu.base_url, emu.token, redis_url), burst=True,
                                  handle_signals=False, ctx={"pool": db_pool}, cron_jobs=[])
            await worker.main()
            await worker.close()
            assert worker.jobs_failed == 0
            truth = await emu.truth()

        live = {r["id"]: r["version"] for r in await db_pool.fetch("SELECT id, version FROM square.customers_current")}
        assert live == {cid: doc["version"] for cid, doc in truth["customers"].items()}
        tombs = {r["id"]: r["merged_into"] for r in await db_pool.fetch(
            "SELECT id, merged_into FROM square.customers WHERE deleted_at IS NOT NULL")}
        assert tombs == {ids[4]: None, ids[1]: merged, ids[2]: merged}
        assert await db_pool.fetchval("SELECT count(*) FROM square.customer_merges") == 2
        members = {(r["group_id"], r["customer_id"]) for r in await db_pool.fetch(
            "SELECT group_id, customer_id FROM square.customer_group_members")}
        assert members == {(g, c) for g, cs in truth["group_members"].items() for c in cs}
        outcomes = {r["outcome"] for r in await db_pool.fetch("SELECT outcome FROM square.webhook_events")}
        assert outcomes <= {"applied", "stale", "deleted", "merged"}
    finally:
        await runner.cleanup()
