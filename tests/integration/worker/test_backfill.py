"""Backfill against the emulator and real Postgres: completeness, inference, races, resumption, failures."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from emulator import EmulatorConfig
from emulator.testing import EmulatorHandle, run_emulator
from square_mirror.settings import Secret
from square_mirror.square_api import RetryPolicy, SquareClient
from square_mirror.tokens import TokenSource
from tests.mirror_check import assert_mirror_matches, emulator_client, mirror_diff, square_call
from worker import runs
from worker.backfill import backfill
from worker.sync import SyncContext


@pytest.fixture
async def emu() -> AsyncIterator[EmulatorHandle]:
    async with run_emulator(EmulatorConfig(seed=11)) as handle:
        yield handle


def make_client(emu: EmulatorHandle, *, attempts: int = 4, deadline: float = 20.0) -> SquareClient:
    client: SquareClient = emulator_client(emu, attempts=attempts, deadline=deadline)
    return client


@pytest.fixture
async def ctx(emu: EmulatorHandle, db_pool: asyncpg.Pool) -> AsyncIterator[SyncContext]:
    client = make_client(emu)
    yield SyncContext(db_pool, client)
    await client.close()


async def test_full_backfill_equals_truth(emu: EmulatorHandle, ctx: SyncContext, db_pool: asyncpg.Pool) -> None:
    await emu.seed(customers=3000, groups=4, segments=3, instant_profiles=5)
    run = await backfill(ctx, emu.merchant_id, concurrency=4)
    assert run.status == runs.SUCCEEDED, run.error
    assert run.counts["listed"] >= 3000
    assert 3000 <= run.counts["upserted"] <= run.counts["listed"]
    assert run.counts["errors"] == 0
    await assert_mirror_matches(db_pool, emu)
    row = await runs.last_run(db_pool, emu.merchant_id, "backfill")
    assert row is not None and row["status"] == "succeeded" and row["finished_at"] is not None
    assert row["checkpoint"]["phase"] == "done"
    assert len(row["checkpoint"]["partitions"]) > 1  # partitioned


async def test_deletes_merges_and_instant_profiles_are_inferred(
    emu: EmulatorHandle, ctx: SyncContext, db_pool: asyncpg.Pool
) -> None:
    await emu.seed(customers=400, groups=2, segments=2)
    instant = (await emu.admin("POST", "instant-profiles", {}))["customer"]
    assert (await backfill(ctx, emu.merchant_id, concurrency=3)).status == runs.SUCCEEDED
    # The instant profile is unknown to listing; a webhook would have brought it in. Sync it by ID.
    from worker.sync import sync_customers

    await sync_customers(ctx, emu.merchant_id, [instant["id"]])
    ids = sorted((await emu.truth())["customers"])
    listed = [i for i in ids if i != instant["id"]]
    # While no webhook is delivered: one delete, one merge of two profiles, one deleted group.
    await square_call(emu, "DELETE", f"/v2/customers/{listed[0]}")
    merged = await emu.merge([listed[1], listed[2]])
    group_id = next(iter((await emu.truth())["groups"]))
    await square_call(emu, "DELETE", f"/v2/customers/groups/{group_id}")

    run = await backfill(ctx, emu.merchant_id, concurrency=3)
    assert run.status == runs.SUCCEEDED, run.error
    assert run.counts["tombstoned"] == 1
    assert run.counts["merges"] == 2
    assert run.counts["kept"] >= 1  # the instant profile, retrievable but never listed
    await assert_mirror_matches(db_pool, emu, require_invisible=True)
    row = await db_pool.fetchrow("SELECT deleted_at, merged_into FROM square.customers WHERE id = $1", listed[1])
    assert row["deleted_at"] is not None and row["merged_into"] == merged["customer"]["id"]
    assert await db_pool.fetchval("SELECT deleted_at IS NULL FROM square.customers WHERE id = $1", instant["id"])


async def test_resumes_from_checkpoint_without_redoing_finished_partitions(
    emu: EmulatorHandle, ctx: SyncContext, db_pool: asyncpg.Pool
) -> None:
    await emu.seed(customers=2500, groups=2, segments=2)
    pages = 0
    original = ctx.client.search_customers

    async def first_partition_checkpointed() -> None:
        """Poll the run's checkpoint until a finished partition is committed in it (the first one: it alone is
        listing while the others wait here)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while True:
            row = await runs.last_run(db_pool, emu.merchant_id, "backfill")
            if row is not None and any(p[3] for p in (row["checkpoint"] or {}).get("partitions", [])):
                return
            if loop.time() > deadline:
                raise AssertionError("the first partition never finished and was never checkpointed")
            await asyncio.sleep(0.02)

    async def dying_search(merchant_id: str, body: Any) -> dict[str, Any]:
        nonlocal pages
        pages += 1
        if pages == 24:
            raise asyncio.CancelledError  # the process is killed mid-listing
        if "start_at" in str(body):
            # Every partition but the first (open below: no start_at) waits until the first one has finished and
            # that is committed in the checkpoint. The first ~10 pages are its own, so the kill at page 24 always
            # finds one partition finished and the others not, however slow the machine (a 0.15 s head start
            # for the first partition raced this, and 0.03 s lost on a loaded machine).
            await first_partition_checkpointed()
        return await original(merchant_id, body)

    ctx.client.search_customers = dying_search  # type: ignore[method-assign]
    with pytest.raises(asyncio.CancelledError):
        await backfill(ctx, emu.merchant_id, concurrency=3)
    ctx.client.search_customers = original  # type: ignore[method-assign]
    first = await runs.last_run(db_pool, emu.merchant_id, "backfill")
    assert first is not None and first["status"] == "interrupted"
    checkpoint = first["checkpoint"]
    finished_before = [p for p in checkpoint["partitions"] if p[3]]
    assert finished_before and not all(p[3] for p in checkpoint["partitions"])

    requests_before = ctx.client.requests_made
    run = await backfill(ctx, emu.merchant_id, concurrency=3)
    assert run.status == runs.SUCCEEDED, run.error
    assert run.checkpoint["resumed_from"] == first["run_id"]
    # Finished partitions were not listed again: far fewer customers than the whole directory were read.
    assert run.counts["listed"] < 2500 - 100 * len(finished_before) + 200
    assert ctx.client.requests_made - requests_before < 40
    await assert_mirror_matches(db_pool, emu)


async def test_killed_process_leaves_a_running_row_that_becomes_interrupted(
    emu: EmulatorHandle, ctx: SyncContext, db_pool: asyncpg.Pool
) -> None:
    await emu.seed(customers=300)
    await db_pool.execute(
        "INSERT INTO square.sync_runs (merchant_id, kind, checkpoint) VALUES ($1, 'backfill', '{}')", emu.merchant_id)
    run = await backfill(ctx, emu.merchant_id)
    assert run.status == runs.SUCCEEDED
    statuses = [r["status"] for r in await db_pool.fetch(
        "SELECT status FROM square.sync_runs WHERE merchant_id = $1 ORDER BY run_id", emu.merchant_id)]
    assert statuses == ["interrupted", "succeeded"]


async def test_index_lag_and_cursor_expiry(emu: EmulatorHandle, ctx: SyncContext, db_pool: asyncpg.Pool) -> None:
    await emu.seed(customers=1500, groups=2, segments=2)
    await emu.set_faults(cursor_ttl_seconds=0.05, endpoint_latency_ms={"SearchCustomers": 30})
    run = await backfill(ctx, emu.merchant_id, concurrency=2)
    assert run.status == runs.SUCCEEDED, run.error
    assert run.counts.get("cursor_restarts", 0) > 0
    await emu.set_faults(cursor_ttl_seconds=0, endpoint_latency_ms={})
    await assert_mirror_matches(db_pool, emu)

    # Index lag: a customer created now is invisible to listing for a while; the backfill must not lose
    # rows the mirror already has, and a later run sees it.
    await emu.set_faults(index_lag_seconds=30)
    created = await square_call(emu, "POST", "/v2/customers", {"given_name": "Lagging", "idempotency_key": "k1"})
    from worker.sync import sync_customers

    await sync_customers(ctx, emu.merchant_id, [created["customer"]["id"]])  # as a webhook would
    # A delete the lagging index does not show yet: the listing still returns the profile, which must not
    # resurrect the tombstone the (webhook) delete wrote.
    gone = sorted((await emu.truth())["customers"])[7]
    await square_call(emu, "DELETE", f"/v2/customers/{gone}")
    await sync_customers(ctx, emu.merchant_id, [gone])
    run = await backfill(ctx, emu.merchant_id, concurrency=2, full=True)
    assert await db_pool.fetchval("SELECT deleted_at IS NOT NULL FROM square.customers WHERE id = $1", gone)
    assert run.counts["stale_skipped"] >= 1  # the lagging index did return it
    assert run.status == runs.SUCCEEDED
    assert run.counts["kept"] >= 1  # not listed yet, still retrievable: kept
    await assert_mirror_matches(db_pool, emu)


async def test_rate_limited_run_is_not_a_success(emu: EmulatorHandle, db_pool: asyncpg.Pool) -> None:
    await emu.seed(customers=2000)
    await emu.set_faults(rate_limit_rps=5, rate_limit_burst=5, retry_after=False)
    client = make_client(emu, attempts=2, deadline=1.0)
    try:
        run = await backfill(SyncContext(db_pool, client), emu.merchant_id, concurrency=4)
    finally:
        await client.close()
    assert run.status in (runs.PARTIAL, runs.FAILED)
    row = await runs.last_run(db_pool, emu.merchant_id, "backfill")
    assert row is not None and row["status"] == run.status and "RateLimited" in row["error"]
    assert row["counts"]["errors"] >= 1

    # Once the limit is lifted the next backfill resumes from the checkpoint and completes.
    await emu.set_faults(rate_limit_rps=0)
    client = make_client(emu)
    try:
        resumed = await backfill(SyncContext(db_pool, client), emu.merchant_id, concurrency=4)
    finally:
        await client.close()
    assert resumed.status == runs.SUCCEEDED and resumed.checkpoint["resumed_from"] == row["run_id"]
    await assert_mirror_matches(db_pool, emu)


async def test_unauthorized_merchant_fails_and_is_marked(emu: EmulatorHandle, db_pool: asyncpg.Pool) -> None:
    client = SquareClient(base_url=emu.base_url, version="2025-08-20", tokens=TokenSource(single=Secret("wrong")),
                          retry=RetryPolicy(attempts=1))
    try:
        run = await backfill(SyncContext(db_pool, client), emu.merchant_id)
    finally:
        await client.close()
    assert run.status == runs.FAILED
    assert await db_pool.fetchval("SELECT auth_status FROM square.merchants WHERE merchant_id = $1",
                                  emu.merchant_id) == "unauthorized"


async def test_backfill_racing_webhook_writes_converges(
    emu: EmulatorHandle, ctx: SyncContext, db_pool: asyncpg.Pool
) -> None:
    """Updates land (and are applied by ID, as the event worker does) while the backfill lists."""
    from worker.sync import sync_customers

    await emu.seed(customers=2000, groups=2, segments=2)
    await emu.set_faults(endpoint_latency_ms={"SearchCustomers": 5})
    ids = sorted((await emu.truth())["customers"])
    stop = asyncio.Event()

    async def webhook_stream() -> None:
        n = 0
        while not stop.is_set() and n < 60:
            cid = ids[(n * 37) % len(ids)]
            truth = (await emu.truth())["customers"].get(cid)
            if truth is not None:
                if n % 10 == 9:
                    await square_call(emu, "DELETE", f"/v2/customers/{cid}")
                else:
                    await square_call(emu, "PUT", f"/v2/customers/{cid}",
                                      {"note": f"update {n}", "version": truth["version"]})
                await sync_customers(ctx, emu.merchant_id, [cid])
            n += 1
            await asyncio.sleep(0.005)

    stream = asyncio.create_task(webhook_stream())
    run = await backfill(ctx, emu.merchant_id, concurrency=4)
    stop.set()
    await stream
    assert run.status == runs.SUCCEEDED, run.error
    diffs = await mirror_diff(db_pool, await emu.truth(), emu.merchant_id)
    assert not diffs, diffs[:10]
