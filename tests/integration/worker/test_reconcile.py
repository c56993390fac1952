"""Reconcile lanes against the emulator and real Postgres/Redis: each heals what webhooks never told."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from emulator import EmulatorConfig
from emulator.config import Knobs
from emulator.testing import EmulatorHandle, run_emulator
from square_mirror.commands.status import collect, render
from square_mirror.constants import BACKFILL_QUEUE
from square_mirror.queue import deserialize_job, redis_settings, serialize_job
from square_mirror.settings import Secret, Settings
from square_mirror.square_api import SquareClient
from tests.mirror_check import assert_mirror_matches, emulator_client, square_call
from worker import runs
from worker.backfill import backfill
from worker.context import CONTEXT_KEY, WorkerContext, build_context
from worker.reconcile import run_lane
from worker.reconcile.jobs import ARQ_CRON_JOBS, ARQ_FUNCTIONS
from worker.sync import SyncContext, sync_customers


@pytest.fixture
async def emu() -> AsyncIterator[EmulatorHandle]:
    async with run_emulator(EmulatorConfig(seed=5)) as handle:
        yield handle


@pytest.fixture
async def ctx(emu: EmulatorHandle, db_pool: asyncpg.Pool) -> AsyncIterator[WorkerContext]:
    client: SquareClient = emulator_client(emu)
    yield await build_context(Settings(), pool=db_pool, client=client)
    await client.close()


async def _mirrored(emu: EmulatorHandle, ctx: WorkerContext, customers: int = 300) -> dict[str, Any]:
    await emu.seed(customers=customers, groups=3, segments=3)
    run = await backfill(ctx.sync, emu.merchant_id, concurrency=2)
    assert run.status == runs.SUCCEEDED, run.error
    truth: dict[str, Any] = await emu.truth()
    return truth


async def test_segments_lane_heals_membership_changes(emu: EmulatorHandle, ctx: WorkerContext,
                                                      db_pool: asyncpg.Pool) -> None:
    truth = await _mirrored(emu, ctx)
    segment_id = sorted(truth["segments"])[0]
    members = set(truth["segment_members"][segment_id])
    outsider = next(c for c in sorted(truth["customers"]) if c not in members)
    insider = sorted(members)[0]
    await emu.admin("PUT", f"segments/{segment_id}/members/{outsider}?merchant_id={emu.merchant_id}")
    await emu.admin("DELETE", f"segments/{segment_id}/members/{insider}?merchant_id={emu.merchant_id}")
    new_segment = (await emu.admin("POST", "segments", {"name": "Lunch regulars"}))["segment"]
    await emu.admin("PUT", f"segments/{new_segment['id']}/members/{insider}?merchant_id={emu.merchant_id}")

    run = await run_lane(ctx, emu.merchant_id, "segments")
    assert run.status == runs.SUCCEEDED, run.error
    # Applied by the diff, or (when another segment's diff touched the customer first) re-fetched by ID.
    assert run.counts["segment_members_added"] + run.counts["segment_members_removed"] + run.counts.get(
        "refetched", 0) >= 3
    await assert_mirror_matches(db_pool, emu)
    row = await runs.last_run(db_pool, emu.merchant_id, "reconcile:segments")
    assert row is not None and row["status"] == "succeeded"
    # the pass's measured cost, for the budget scheduler: at least its listing pages (more: memberships, refetches)
    assert row["counts"]["requests"] >= row["counts"]["pages"] > 0


async def test_groups_lane_heals_membership_and_deleted_groups(emu: EmulatorHandle, ctx: WorkerContext,
                                                               db_pool: asyncpg.Pool) -> None:
    truth = await _mirrored(emu, ctx)
    gids = sorted(truth["groups"])
    outsider = next(c for c in sorted(truth["customers"]) if c not in truth["group_members"][gids[0]])
    await square_call(emu, "PUT", f"/v2/customers/{outsider}/groups/{gids[0]}")  # webhook never delivered
    await square_call(emu, "DELETE", f"/v2/customers/groups/{gids[1]}")  # silent for its members
    run = await run_lane(ctx, emu.merchant_id, "groups")
    assert run.status == runs.SUCCEEDED, run.error
    assert run.counts["groups_tombstoned"] == 1
    await assert_mirror_matches(db_pool, emu)


async def _instant_profile(emu: EmulatorHandle, ctx: WorkerContext) -> str:
    """An instant profile the mirror learned of by ID (as from its customer.created webhook)."""
    cid: str = (await emu.admin("POST", "instant-profiles", {"merchant_id": emu.merchant_id}))["customer"]["id"]
    await sync_customers(ctx.sync, emu.merchant_id, [cid])
    return cid


async def test_segments_lane_keeps_and_heals_hidden_profiles_memberships(emu: EmulatorHandle, ctx: WorkerContext,
                                                                       db_pool: asyncpg.Pool) -> None:
    truth = await _mirrored(emu, ctx)
    stay, join, leave = sorted(truth["segments"])[:3]
    hidden = await _instant_profile(emu, ctx)
    for segment_id in (stay, leave):
        await emu.admin("PUT", f"segments/{segment_id}/members/{hidden}?merchant_id={emu.merchant_id}")
    await sync_customers(ctx.sync, emu.merchant_id, [hidden])
    # Segment changes send no webhook: only the lane can see these two.
    await emu.admin("PUT", f"segments/{join}/members/{hidden}?merchant_id={emu.merchant_id}")
    await emu.admin("DELETE", f"segments/{leave}/members/{hidden}?merchant_id={emu.merchant_id}")

    run = await run_lane(ctx, emu.merchant_id, "segments")
    assert run.status == runs.SUCCEEDED, run.error
    assert run.counts["hidden_refreshed"] == 1  # one BulkRetrieve/Retrieve for the one hidden profile
    assert set(await db_pool.fetchval("SELECT segment_ids FROM square.customers WHERE id = $1", hidden)) == {
        stay, join}
    await assert_mirror_matches(db_pool, emu)


async def test_groups_lane_reads_hidden_profiles_by_id_and_shares_a_recent_refresh(
        emu: EmulatorHandle, ctx: WorkerContext, db_pool: asyncpg.Pool) -> None:
    truth = await _mirrored(emu, ctx)
    group_id = sorted(truth["groups"])[0]
    hidden = await _instant_profile(emu, ctx)
    await square_call(emu, "PUT", f"/v2/customers/{hidden}/groups/{group_id}")  # its webhook never delivered
    run = await run_lane(ctx, emu.merchant_id, "groups")
    assert run.status == runs.SUCCEEDED, run.error
    assert run.counts["hidden_refreshed"] == 1
    await assert_mirror_matches(db_pool, emu)

    segments_run = await run_lane(ctx, emu.merchant_id, "segments")
    assert segments_run.counts["hidden_refreshed"] == 1  # segment changes are silent: always its own read
    shared = await run_lane(ctx, emu.merchant_id, "groups")
    assert shared.counts["hidden_refreshed"] == 0  # read by the segments lane a moment ago


async def test_a_profile_hidden_by_an_update_keeps_its_memberships_through_every_lane(
        emu: EmulatorHandle, ctx: WorkerContext, db_pool: asyncpg.Pool) -> None:
    truth = await _mirrored(emu, ctx)
    cid = next(c for c in sorted(truth["customers"]) if truth["customers"][c].get("segment_ids"))
    cleared = dict.fromkeys(("given_name", "family_name", "company_name", "email_address", "phone_number"))
    await emu.admin("PATCH", f"customers/{cid}", {"merchant_id": emu.merchant_id, **cleared})
    await sync_customers(ctx.sync, emu.merchant_id, [cid])  # its customer.updated webhook
    for lane in ("sweep", "incremental", "groups", "segments"):  # the sweep reads it by ID; the others must not undo it
        run = await run_lane(ctx, emu.merchant_id, lane)
        assert run.status == runs.SUCCEEDED, (lane, run.error)
    await assert_mirror_matches(db_pool, emu)


async def test_incremental_lane_with_expiring_cursors(emu: EmulatorHandle, ctx: WorkerContext,
                                                      db_pool: asyncpg.Pool) -> None:
    truth = await _mirrored(emu, ctx, customers=600)
    ids = sorted(truth["customers"])[:250]
    for cid in ids:
        await square_call(emu, "PUT", f"/v2/customers/{cid}", {"note": "changed while webhooks were down"})
    await square_call(emu, "POST", "/v2/customers", {"given_name": "Brand", "family_name": "New",
                                                     "idempotency_key": "new-1"})
    await emu.set_faults(cursor_ttl_seconds=0.02, endpoint_latency_ms={"SearchCustomers": 25})
    run = await run_lane(ctx, emu.merchant_id, "incremental")
    assert run.status == runs.SUCCEEDED, run.error
    assert run.counts["cursor_restarts"] >= 1
    assert run.counts["upserted"] >= 251
    await emu.set_faults(cursor_ttl_seconds=0, endpoint_latency_ms={})
    await assert_mirror_matches(db_pool, emu)
    first_watermark = await runs.get_watermark(db_pool, emu.merchant_id, "incremental")
    assert first_watermark is not None
    again = await run_lane(ctx, emu.merchant_id, "incremental")
    assert again.status == runs.SUCCEEDED
    assert again.counts.get("listed", 0) < 300  # only the overlap window is re-read
    assert await runs.get_watermark(db_pool, emu.merchant_id, "incremental") > first_watermark  # type: ignore[operator]


async def test_incremental_lane_does_not_advance_after_a_failed_window(emu: EmulatorHandle, ctx: WorkerContext,
                                                                       db_pool: asyncpg.Pool) -> None:
    await _mirrored(emu, ctx)
    await emu.set_faults(error_503_rate=1.0)
    client: SquareClient = emulator_client(emu, attempts=2, deadline=1.0)
    try:
        failing = replace(ctx, client=client, sync=SyncContext(db_pool, client))
        run = await run_lane(failing, emu.merchant_id, "incremental")
    finally:
        await client.close()
    assert run.status == runs.FAILED
    assert await runs.get_watermark(db_pool, emu.merchant_id, "incremental") is None


async def test_events_lane_replays_missed_deletes_and_merges(emu: EmulatorHandle, ctx: WorkerContext,
                                                             db_pool: asyncpg.Pool) -> None:
    truth = await _mirrored(emu, ctx)
    ids = sorted(truth["customers"])
    await square_call(emu, "DELETE", f"/v2/customers/{ids[0]}")
    await emu.merge([ids[1], ids[2]])
    await square_call(emu, "PUT", f"/v2/customers/{ids[3]}", {"nickname": "Replayed"})
    run = await run_lane(ctx, emu.merchant_id, "events")  # no Redis in ctx: applied by ID in-process
    assert run.status == runs.SUCCEEDED, run.error
    assert run.counts["events"] >= 5
    await assert_mirror_matches(db_pool, emu)
    merged = await db_pool.fetchval("SELECT count(*) FROM square.customer_merges WHERE merchant_id = $1",
                                    emu.merchant_id)
    assert merged == 2
    assert await runs.get_watermark(db_pool, emu.merchant_id, "events") is not None


@pytest.fixture
async def square_emu() -> AsyncIterator[EmulatorHandle]:
    """Events disabled until EnableEvents, as on Square."""
    async with run_emulator(EmulatorConfig(seed=6, knobs=Knobs(events_enabled_by_default=False))) as handle:
        yield handle


async def _searchable_since(db_pool: asyncpg.Pool, merchant_id: str) -> Any:
    return await db_pool.fetchval("SELECT events_searchable_since FROM square.merchants WHERE merchant_id = $1",
                                  merchant_id)


async def test_events_start_disabled_the_mirror_enables_them_and_replays_lost_webhooks(
        square_emu: EmulatorHandle, db_pool: asyncpg.Pool) -> None:
    emu = square_emu
    client = emulator_client(emu)
    ctx = await build_context(Settings(), pool=db_pool, client=client)
    try:
        truth = await _mirrored(emu, ctx, customers=40)  # the backfill enables events first
        since = await _searchable_since(db_pool, emu.merchant_id)
        assert since is not None
        ids = sorted(truth["customers"])
        await square_call(emu, "DELETE", f"/v2/customers/{ids[0]}")  # every webhook below is lost
        await emu.merge([ids[1], ids[2]])
        await square_call(emu, "PUT", f"/v2/customers/{ids[3]}", {"nickname": "Replayed"})
        run = await run_lane(ctx, emu.merchant_id, "events")
    finally:
        await client.close()
    assert run.status == runs.SUCCEEDED, run.error
    assert run.counts["events"] >= 5 and not run.counts.get("unsearchable_seconds")
    assert run.checkpoint["searchable_since"] is not None
    await assert_mirror_matches(db_pool, emu)
    assert await _searchable_since(db_pool, emu.merchant_id) == since  # enabling again keeps the period


async def test_events_lane_says_when_its_window_reaches_before_events_were_searchable(
        square_emu: EmulatorHandle, db_pool: asyncpg.Pool, db_dsn: str) -> None:
    emu = square_emu
    client = emulator_client(emu)
    ctx = await build_context(Settings(), pool=db_pool, client=client)
    try:
        await emu.seed(customers=5)
        cid = sorted((await emu.truth())["customers"])[0]
        await square_call(emu, "DELETE", f"/v2/customers/{cid}")  # before anyone enabled events
        run = await run_lane(ctx, emu.merchant_id, "events")  # no watermark, no backfill: 28 days back
    finally:
        await client.close()
    assert run.status == runs.SUCCEEDED, run.error
    assert run.counts["unsearchable_seconds"] > 27 * 24 * 3600
    report, _ = await collect(Settings(database_url=Secret(db_dsn)), 300.0, False)
    lines = render(report)
    assert "can never be replayed" in lines and "searchable since" in lines


async def test_events_lane_finds_events_disabled_enables_them_again_and_restarts_the_period(
        square_emu: EmulatorHandle, db_pool: asyncpg.Pool) -> None:
    emu = square_emu
    client = emulator_client(emu)
    ctx = await build_context(Settings(), pool=db_pool, client=client)
    try:
        await run_lane(ctx, emu.merchant_id, "events")
        first = datetime.now(UTC) - timedelta(minutes=10)  # as if enabled a while ago
        await db_pool.execute("UPDATE square.merchants SET events_searchable_since = $1", first)
        await square_call(emu, "PUT", "/v2/events/disable")  # another app, or the seller, switched them off
        await emu.seed(customers=3)
        cid = sorted((await emu.truth())["customers"])[0]
        await square_call(emu, "PUT", f"/v2/customers/{cid}", {"nickname": "unsearchable"})
        # Its webhook did arrive (the inbox has it), a minute before the lane looks.
        event_time = datetime.now(UTC) - timedelta(seconds=90)
        await db_pool.execute(
            "INSERT INTO square.webhook_events (merchant_id, event_id, type, customer_id, created_at, source)"
            " VALUES ($1, 'E-DELIVERED', 'customer.updated', $2, $3, 'webhook')", emu.merchant_id, cid, event_time)
        await db_pool.execute("UPDATE square.sync_state SET watermark = $2 WHERE merchant_id = $1 AND lane = 'events'",
                              emu.merchant_id, event_time - timedelta(minutes=5))
        run = await run_lane(ctx, emu.merchant_id, "events")
    finally:
        await client.close()
    assert run.status == runs.SUCCEEDED, run.error
    assert run.counts["events_missing_from_search"] == 1
    assert await _searchable_since(db_pool, emu.merchant_id) > first


def _enable_events_requests() -> float:
    """EnableEvents requests this process's Square clients made, whatever Square answered."""
    from prometheus_client import REGISTRY

    return sum(sample.value for metric in REGISTRY.collect() if metric.name == "square_mirror_square_requests"
               for sample in metric.samples
               if sample.name.endswith("_total") and sample.labels.get("endpoint") == "EnableEvents")


@pytest.mark.parametrize("application_token", [None, "EAAAApplicationPersonalToken"])
async def test_an_oauth_seller_replays_events_only_with_the_applications_token(
        db_pool: asyncpg.Pool, db_dsn: str, application_token: str | None) -> None:
    config = EmulatorConfig(seed=7, knobs=Knobs(events_enabled_by_default=False),
                            token_kinds={"MLEMULATOR001": "oauth"}, application_token="EAAAApplicationPersonalToken")
    async with run_emulator(config) as emu:
        client = emulator_client(emu, application_token=application_token)
        ctx = await build_context(Settings(), pool=db_pool, client=client)
        try:
            truth = await _mirrored(emu, ctx, customers=20)
            await square_call(emu, "DELETE", f"/v2/customers/{sorted(truth['customers'])[0]}")  # webhook lost
            run = await run_lane(ctx, emu.merchant_id, "events")
            again = await run_lane(ctx, emu.merchant_id, "events")
            if application_token is not None:
                await assert_mirror_matches(db_pool, emu)
            enable_calls = _enable_events_requests()
            await run_lane(ctx, emu.merchant_id, "incremental")  # the other lanes never ask again after a refusal
            assert _enable_events_requests() == enable_calls
        finally:
            await client.close()
        state = await emu.truth()
    report, code = await collect(Settings(database_url=Secret(db_dsn)), 300.0, False)
    merchant = await db_pool.fetchrow("SELECT auth_status, events_error FROM square.merchants")
    if application_token is None:  # the Events API refuses OAuth tokens: said clearly, the other lanes carry on
        assert run.status == runs.FAILED and run.counts["events_refused"] == 1
        assert "personal access token" in (merchant["events_error"] or "")
        assert merchant["auth_status"] == "ok" and state["events_api"]["enabled"] is False
        assert "events replay: off" in render(report) and code == 0
    else:
        assert run.status == runs.SUCCEEDED and again.status == runs.SUCCEEDED, run.error
        assert merchant["events_error"] is None and state["events_api"]["enabled"] is True
        assert "searchable since" in render(report) and code == 0


async def test_events_lane_queues_jobs_like_the_receiver(emu: EmulatorHandle, ctx: WorkerContext,
                                                         redis_url: str) -> None:
    from arq import create_pool

    truth = await _mirrored(emu, ctx, customers=50)
    for cid in sorted(truth["customers"])[:3]:
        await square_call(emu, "PUT", f"/v2/customers/{cid}", {"nickname": "x"})
    arq_redis = await create_pool(redis_settings(redis_url), job_serializer=serialize_job,
                                  job_deserializer=deserialize_job)
    try:
        ctx = replace(ctx, arq_redis=arq_redis)
        run = await run_lane(ctx, emu.merchant_id, "events")
        assert run.status == runs.SUCCEEDED and run.counts["events_queued"] == 3
        jobs = await arq_redis.queued_jobs(queue_name="square-mirror:queue")
        assert sorted(j.job_id for j in jobs) == sorted(j.args[0]["event_id"] for j in jobs)
        assert {j.function for j in jobs} == {"process_event"} and len(jobs) == 3
        assert all(j.args[0]["source"] == "events_api" for j in jobs)
        again = await run_lane(ctx, emu.merchant_id, "events")  # the overlap re-reads them: not queued twice
        assert again.counts.get("events_queued", 0) == 0
        assert len(await arq_redis.queued_jobs(queue_name="square-mirror:queue")) == 3
    finally:
        await arq_redis.aclose()


async def test_sweep_lane_infers_deletes(emu: EmulatorHandle, ctx: WorkerContext, db_pool: asyncpg.Pool) -> None:
    truth = await _mirrored(emu, ctx)
    await square_call(emu, "DELETE", f"/v2/customers/{sorted(truth['customers'])[5]}")
    run = await run_lane(ctx, emu.merchant_id, "sweep")
    assert run.status == runs.SUCCEEDED and run.kind == "sweep" and run.counts["tombstoned"] == 1
    await assert_mirror_matches(db_pool, emu)


async def test_arq_jobs_fan_out_and_continue_in_time_slices(emu: EmulatorHandle, ctx: WorkerContext,
                                                            db_pool: asyncpg.Pool, redis_url: str) -> None:
    from arq import create_pool

    from worker.reconcile.jobs import backfill_job, reconcile_incremental, reconcile_lane_job

    await emu.seed(customers=2000, groups=2, segments=2)
    await emu.set_faults(endpoint_latency_ms={"SearchCustomers": 400})
    arq_redis = await create_pool(redis_settings(redis_url), job_serializer=serialize_job,
                                  job_deserializer=deserialize_job)
    settings = replace(Settings(), worker_job_timeout_seconds=8.0, backfill_concurrency=2,
                       reconcile_overlap_seconds=120, square_access_token=None)
    job_ctx = {CONTEXT_KEY: replace(ctx, arq_redis=arq_redis, settings=settings), "job_try": 1, "job_id": "first"}
    try:
        first = await backfill_job(job_ctx, emu.merchant_id)  # 2000 customers at 400 ms a page: > a 3 s slice
        assert first["status"] == "interrupted" and first["continued"] is True
        queued = await arq_redis.queued_jobs(queue_name=BACKFILL_QUEUE)
        assert [(j.function, list(j.args)) for j in queued] == [("backfill_job", [emu.merchant_id, False])]
        await emu.set_faults(endpoint_latency_ms={})
        second = await backfill_job({**job_ctx, "job_id": "second"}, emu.merchant_id)
        assert second["status"] == "succeeded", second
        rows = await db_pool.fetch("SELECT run_id, status, checkpoint FROM square.sync_runs ORDER BY run_id")
        assert [r["status"] for r in rows] == ["interrupted", "succeeded"]
        assert rows[1]["checkpoint"]["resumed_from"] == rows[0]["run_id"]
        await assert_mirror_matches(db_pool, emu)

        fanned = await reconcile_incremental(job_ctx)
        assert fanned["queued"] == {emu.merchant_id: True}
        again = await reconcile_incremental(job_ctx)  # the first is still queued: not twice
        assert again["queued"] == {emu.merchant_id: False}
        lane = await reconcile_lane_job(job_ctx, "incremental", emu.merchant_id)
        assert lane["status"] == "succeeded"
    finally:
        await arq_redis.aclose()


def test_arq_wiring_is_unique_with_tries() -> None:
    names = {job.name for job in ARQ_CRON_JOBS}
    assert names == {"reconcile_incremental", "reconcile_segments", "reconcile_groups", "reconcile_events",
                     "reconcile_custom_attributes", "reconcile_sweep"}
    assert all(job.unique and (job.max_tries or 0) >= 2 and job.timeout_s is None for job in ARQ_CRON_JOBS)
    assert {f.__name__ for f in ARQ_FUNCTIONS} == {"backfill_job", "reconcile_lane_job"}


async def test_events_lane_refused_token_fails_without_marking_the_merchant(emu: EmulatorHandle,
                                                                           db_pool: asyncpg.Pool) -> None:
    marked: list[str] = []

    async def on_unauthorized(merchant_id: str, message: str) -> None:
        marked.append(merchant_id)

    client: SquareClient = emulator_client(emu, token="not-a-personal-access-token")
    client.on_unauthorized = on_unauthorized
    try:
        ctx = await build_context(Settings(), pool=db_pool, client=client)
        run = await run_lane(ctx, emu.merchant_id, "events")
    finally:
        await client.close()
    assert run.status == runs.FAILED and "personal access token" in (run.error or "")
    assert marked == []
    assert await db_pool.fetchval("SELECT auth_status FROM square.merchants WHERE merchant_id = $1",
                                  emu.merchant_id) == "ok"
