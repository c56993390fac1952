"""The budget-aware lane scheduler (LANE_SCHEDULER=budget) on a seeded database: which lanes it queues, in which
order, what it reports, and where in the minute each seller starts. Runs have fixed times; plans are made as of a
fixed instant (the arq job itself reads the database's now, so its runs are seeded relative to that)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from arq import create_pool
from prometheus_client import REGISTRY

from square_mirror.commands.status import collect, render
from square_mirror.constants import LANE_SPREAD_SECONDS, LANE_TARGET_SECONDS, LANES_QUEUE, reconcile_job_id
from square_mirror.freshness import Bound
from square_mirror.queue import deserialize_job, redis_settings, serialize_job
from square_mirror.settings import Secret, Settings, SettingsError
from square_mirror.square_api import RetryPolicy, SquareClient
from square_mirror.tokens import TokenSource
from worker.app import cron_jobs_for
from worker.context import CONTEXT_KEY, build_context
from worker.freshness import refresh_lane_budget_ratio
from worker.reconcile.jobs import ARQ_CRON_JOBS, schedule_lanes
from worker.reconcile.lanes import lane_kind
from worker.reconcile.scheduler import due_lanes, plan_sellers, seller_offset_seconds

AT = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
LANES = tuple(LANE_TARGET_SECONDS)
BUDGET = replace(Settings(), lane_scheduler="budget", lane_budget_share=0.5, square_max_requests_per_second=10.0)
# 0.5 x 10 requests/s x 60 s: 300 requests a minute for each seller's lanes


async def seller(pool: asyncpg.Pool, merchant_id: str) -> None:
    await pool.execute("INSERT INTO square.merchants (merchant_id, first_seen_at) VALUES ($1, $2)",
                       merchant_id, AT - timedelta(days=1))


async def ran(pool: asyncpg.Pool, merchant_id: str, lane: str, ago: float, *, requests: int | None = None,
              seconds: float = 30.0, at: datetime | None = None) -> None:
    """A succeeded pass of ``lane`` that began ``ago`` seconds before ``at`` (default AT) and made ``requests``."""
    counts: dict[str, Any] = {"pages": 1} if requests is None else {"pages": 1, "requests": requests}
    started = (at or AT) - timedelta(seconds=ago)
    await pool.execute(
        "INSERT INTO square.sync_runs (merchant_id, kind, status, started_at, finished_at, heartbeat_at, counts)"
        " VALUES ($1, $2, 'succeeded', $3::timestamptz, $3::timestamptz + $4 * interval '1 second', $3, $5)",
        merchant_id, lane_kind(lane), started, seconds, counts)


async def fresh_except(pool: asyncpg.Pool, merchant_id: str, *stale: str, at: datetime | None = None) -> None:
    """Every lane fresh (cheap, a second ago; the sweep, which completes the others too, half a day ago) except
    ``stale``, which the test seeds itself."""
    for lane in LANES:
        if lane not in stale:
            await ran(pool, merchant_id, lane, LANE_TARGET_SECONDS[lane] / 2 if lane == "sweep" else 1, requests=1,
                      at=at)


def _deferred() -> dict[str, float]:
    return {s.labels["lane"]: s.value for family in REGISTRY.collect()
            if family.name == "square_mirror_lanes_deferred" for s in family.samples
            if s.name.endswith("_total")}


def spent(lanes: int = 0, other: int = 0) -> dict[str, dict[str, int]]:
    """The rate limiter's count of one seller's requests over the window, by class (``other``: events and backfill
    alike, half each)."""
    return {"M": {"lanes": lanes, "events": other // 2, "backfill": other - other // 2}}


async def test_a_due_lane_is_planned_and_a_fresh_one_is_not(db_pool: asyncpg.Pool) -> None:
    await seller(db_pool, "M")
    await fresh_except(db_pool, "M", "segments")
    await ran(db_pool, "M", "segments", 301, requests=50)  # just past its 300 s target
    plans = await plan_sellers(db_pool, BUDGET, ["M"], AT)
    assert plans["M"].queued == ["segments"] and plans["M"].deferred == []


async def test_a_seller_never_synced_gets_every_lane_and_unknown_costs_fit(db_pool: asyncpg.Pool) -> None:
    await seller(db_pool, "KNOWN")  # in square.merchants, nothing ran
    plans = await plan_sellers(db_pool, replace(BUDGET, square_max_requests_per_second=0.001), ["KNOWN", "CONFIG"],
                               AT)  # CONFIG: configured, not yet in square.merchants
    assert plans["KNOWN"].queued == list(LANES)
    assert plans["CONFIG"].queued == list(LANES)


async def test_the_most_stale_goes_first_when_the_window_s_credit_fits_only_one(db_pool: asyncpg.Pool) -> None:
    await seller(db_pool, "M")
    await fresh_except(db_pool, "M", "segments", "groups", "events")
    await ran(db_pool, "M", "segments", 400, requests=200)
    await ran(db_pool, "M", "groups", 900, requests=200)  # the most stale
    await ran(db_pool, "M", "events", 600, requests=200)
    before = _deferred()
    # 5 requests/s for the lanes over 900 s: 4,500, of which the lanes already spent 4,300
    plans = await plan_sellers(db_pool, BUDGET, ["M"], AT, usage=spent(lanes=4300))
    assert plans["M"].queued == ["groups"]
    assert plans["M"].deferred == ["events", "segments"]  # left for later, in staleness order
    after = _deferred()
    assert {lane: after.get(lane, 0) - before.get(lane, 0) for lane in ("events", "segments", "groups")} == \
        {"events": 1, "segments": 1, "groups": 0}
    assert plans["M"].affordable  # 3 x 200 / 300 s = 2 requests/s of a 5 requests/s share: only not this minute


async def test_a_lane_costlier_than_a_minute_s_share_runs_on_the_window_s_credit(db_pool: asyncpg.Pool) -> None:
    await seller(db_pool, "M")
    await fresh_except(db_pool, "M", "segments")
    await ran(db_pool, "M", "segments", 400, requests=1000)  # over 300 a minute, under 4,500 a window
    plans = await plan_sellers(db_pool, BUDGET, ["M"], AT, usage=spent(lanes=100))
    assert plans["M"].queued == ["segments"] and plans["M"].affordable


async def test_events_and_backfills_take_what_they_need_first(db_pool: asyncpg.Pool) -> None:
    await seller(db_pool, "M")
    await fresh_except(db_pool, "M", "segments")
    await ran(db_pool, "M", "segments", 400, requests=200)
    # the others used 8 of the seller's 10 requests/s: the lanes get 2 (not their 5), 1,800 a window
    plans = await plan_sellers(db_pool, BUDGET, ["M"], AT, usage=spent(lanes=1700, other=8 * 900))
    assert plans["M"].budget is not None and plans["M"].budget.available_rps == pytest.approx(2.0)
    assert plans["M"].deferred == ["segments"]
    roomier = await plan_sellers(db_pool, BUDGET, ["M"], AT, usage=spent(lanes=1500, other=8 * 900))
    assert roomier["M"].queued == ["segments"]
    backfilling = await plan_sellers(db_pool, BUDGET, ["M"], AT, usage=spent(other=10 * 900))
    assert backfilling["M"].deferred == ["segments"]  # a backfill using the whole rate: the lanes wait


async def test_a_pass_costlier_than_the_whole_window_runs_alone_and_the_seller_is_reported(
    db_pool: asyncpg.Pool, db_dsn: str,
) -> None:
    await seller(db_pool, "M")
    await fresh_except(db_pool, "M", "segments", "groups")
    await ran(db_pool, "M", "segments", 900, requests=5000)  # more than 4,500, the lanes' whole window
    await ran(db_pool, "M", "groups", 400, requests=10)
    busy = await plan_sellers(db_pool, BUDGET, ["M"], AT, usage=spent(lanes=10))
    assert busy["M"].queued == ["groups"] and busy["M"].deferred == ["segments"]  # cheap lanes fill the rest
    idle = await plan_sellers(db_pool, BUDGET, ["M"], AT, usage=spent())
    assert idle["M"].queued == ["segments"] and idle["M"].deferred == ["groups"]  # never skipped for good
    assert not idle["M"].affordable and idle["M"].need_rps > 5.0
    row = await db_pool.fetchrow("SELECT * FROM square.lane_budgets WHERE merchant_id = 'M'")
    assert not row["affordable"] and row["share_rps"] == 5.0 and row["deferred_lanes"] == ["groups"]
    assert row["lane_costs"]["segments"]["requests"] == 5000
    await refresh_lane_budget_ratio(db_pool)  # the gauge, as each scrape reads it
    ratio = {s.labels["merchant_id"]: s.value for family in REGISTRY.collect()
             if family.name == "square_mirror_lane_budget_ratio" for s in family.samples}
    assert ratio["M"] == pytest.approx(row["need_rps"] / 5.0) and ratio["M"] > 1
    report, _ = await collect(Settings(database_url=Secret(db_dsn)), 300.0, False)
    assert [s["merchant_id"] for s in report["lane_budgets"]["unaffordable"]] == ["M"]
    assert report["merchants"]["M"]["lane_budget"]["affordable"] is False
    assert "M: cannot afford its lanes" in render(report)


async def test_a_pass_longer_than_its_target_makes_the_seller_unable_to_afford_it(db_pool: asyncpg.Pool) -> None:
    await seller(db_pool, "M")
    await fresh_except(db_pool, "M", "incremental")
    await ran(db_pool, "M", "incremental", 120, requests=2, seconds=75.0)  # a 60 s target
    plans = await plan_sellers(db_pool, BUDGET, ["M"], AT)
    assert plans["M"].too_slow == ["incremental"] and not plans["M"].affordable


async def test_an_unlimited_rate_runs_everything_due(db_pool: asyncpg.Pool) -> None:
    await seller(db_pool, "M")
    await fresh_except(db_pool, "M", "segments", "groups")
    await ran(db_pool, "M", "segments", 900, requests=10**6)
    await ran(db_pool, "M", "groups", 400, requests=10**6)
    plans = await plan_sellers(db_pool, replace(BUDGET, square_max_requests_per_second=0.0), ["M"], AT,
                               usage=spent(lanes=10**6))
    assert plans["M"].queued == ["segments", "groups"] and plans["M"].deferred == [] and plans["M"].affordable


async def test_a_pass_without_a_requests_count_costs_its_pages(db_pool: asyncpg.Pool) -> None:
    await seller(db_pool, "M")
    await fresh_except(db_pool, "M", "segments")
    await db_pool.execute(
        "INSERT INTO square.sync_runs (merchant_id, kind, status, started_at, finished_at, heartbeat_at, counts)"
        " VALUES ('M', 'reconcile:segments', 'succeeded', $1, $1, $1, '{\"pages\": 301}')", AT - timedelta(hours=1))
    plans = await plan_sellers(db_pool, BUDGET, ["M"], AT, usage=spent(lanes=4300))
    assert plans["M"].deferred == ["segments"]


def test_a_lane_is_due_when_it_will_be_stale_at_its_job_s_start_within_the_slack() -> None:
    def bound(staleness: float | None) -> Bound:
        return Bound("M", "incremental", None, staleness, 60, 3600.0)

    assert [d.lane for d in due_lanes([bound(55.0)])] == ["incremental"]  # within the slack of its 60 s target
    assert due_lanes([bound(40.0)]) == []
    assert [d.lane for d in due_lanes([bound(40.0)], lead_seconds=15.0)] == ["incremental"]  # 55 s when it starts
    assert [d.lane for d in due_lanes([bound(None)])] == ["incremental"]  # never complete: always due


def test_offsets_differ_across_sellers_and_are_stable() -> None:
    sellers = [f"MERCHANT{n}" for n in range(200)]
    offsets = [seller_offset_seconds(m) for m in sellers]
    assert offsets == [seller_offset_seconds(m) for m in sellers]  # the same in every process and minute
    assert seller_offset_seconds("MLR6TFPHDB4WA") == seller_offset_seconds("MLR6TFPHDB4WA")
    assert all(0 <= o < LANE_SPREAD_SECONDS for o in offsets)
    assert len(set(offsets)) > 190  # spread, not all in the same second
    assert len({int(o) for o in offsets}) > 50


def test_the_setting_picks_the_cron_entries() -> None:
    assert Settings.from_env({}).lane_scheduler == "cron" and Settings.from_env({}).lane_budget_share == 0.3
    cron_names = {job.name for job in cron_jobs_for(Settings.from_env({}))}
    assert cron_names == {job.name for job in ARQ_CRON_JOBS} | {"refresh_tokens"}
    budget = Settings.from_env({"LANE_SCHEDULER": "budget", "LANE_BUDGET_SHARE": "0.25"})
    assert budget.lane_budget_share == 0.25
    jobs = cron_jobs_for(budget)
    assert {job.name for job in jobs} == {"schedule_lanes", "refresh_tokens"}
    scheduler = next(job for job in jobs if job.name == "schedule_lanes")
    assert scheduler.unique and scheduler.minute is None and scheduler.timeout_s is None
    for env in ({"LANE_SCHEDULER": "often"}, {"LANE_BUDGET_SHARE": "0"}, {"LANE_BUDGET_SHARE": "1.5"}):
        with pytest.raises(SettingsError):
            Settings.from_env(env)


@pytest.fixture
async def client() -> AsyncIterator[SquareClient]:
    """Never called: the sellers are in square.merchants."""
    square = SquareClient(base_url="http://127.0.0.1:9", version="2025-08-20", tokens=TokenSource(),
                          retry=RetryPolicy(attempts=1))
    yield square
    await square.close()


async def test_the_cron_entry_queues_due_lanes_at_each_sellers_offset(db_pool: asyncpg.Pool, redis_url: str,
                                                                      client: SquareClient) -> None:
    now: datetime = await db_pool.fetchval("SELECT now()")
    for mid in ("A", "B"):
        await seller(db_pool, mid)
        await fresh_except(db_pool, mid, "incremental", at=now)
        await ran(db_pool, mid, "incremental", 3600, requests=5, at=now)
    arq_redis = await create_pool(redis_settings(redis_url), job_serializer=serialize_job,
                                  job_deserializer=deserialize_job)
    settings = replace(BUDGET, square_access_token=None)
    wc = await build_context(settings, pool=db_pool, client=client, arq_redis=arq_redis)
    job_ctx = {CONTEXT_KEY: wc, "job_try": 1, "job_id": "schedule"}
    try:
        result = await schedule_lanes(job_ctx)
        assert result == {"queued": {"A": {"incremental": True}, "B": {"incremental": True}}, "deferred": {},
                          "unaffordable": []}
        jobs = {j.job_id: j for j in await arq_redis.queued_jobs(queue_name=LANES_QUEUE)}
        assert set(jobs) == {reconcile_job_id("incremental", "A"), reconcile_job_id("incremental", "B")}
        assert all(list(j.args) == ["incremental", j.job_id.rsplit(":", 1)[1]] for j in jobs.values())
        scores = {mid: await arq_redis.zscore(LANES_QUEUE, reconcile_job_id("incremental", mid)) for mid in "AB"}
        spread = (scores["A"] or 0) - (scores["B"] or 0)  # ms: each seller deferred by its own offset
        assert abs(spread - 1000 * (seller_offset_seconds("A") - seller_offset_seconds("B"))) < 1000
        again = await schedule_lanes(job_ctx)  # still queued: not twice
        assert again["queued"] == {"A": {"incremental": False}, "B": {"incremental": False}}
    finally:
        await arq_redis.aclose()
