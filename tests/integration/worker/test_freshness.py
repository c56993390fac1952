"""Staleness bounds: the rule of square.sync_freshness, and the view, the worker's gauge, `status --json` and the
Grafana dashboard agreeing on a seeded database. Every run has a fixed time; bounds are read as of a fixed instant."""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY

from square_mirror.commands.status import collect
from square_mirror.constants import FULL_PASS_LANES, LANE_TARGET_SECONDS
from square_mirror.settings import Secret, Settings
from square_mirror.timefmt import iso
from worker.freshness import refresh_lane_staleness
from worker.reconcile.lanes import lane_kind

ROOT = Path(__file__).resolve().parents[3]
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
AT = T0 + timedelta(hours=1)  # the instant the bounds are read as of
LANES = tuple(LANE_TARGET_SECONDS)


def t(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


async def seller(pool: asyncpg.Pool, merchant_id: str, first_seen: datetime = T0 - timedelta(days=1)) -> None:
    await pool.execute("INSERT INTO square.merchants (merchant_id, first_seen_at) VALUES ($1, $2)",
                       merchant_id, first_seen)


async def run(pool: asyncpg.Pool, merchant_id: str, kind: str, status: str, started: datetime,
              resumed_from: int | None = None) -> int:
    checkpoint: dict[str, Any] = {} if resumed_from is None else {"resumed_from": resumed_from}
    run_id: int = await pool.fetchval(
        "INSERT INTO square.sync_runs (merchant_id, kind, status, started_at, finished_at, heartbeat_at, checkpoint)"
        " VALUES ($1, $2, $3, $4::timestamptz, $4::timestamptz + interval '30 seconds', $4, $5) RETURNING run_id",
        merchant_id, kind, status, started, checkpoint)
    return run_id


async def view(pool: asyncpg.Pool, merchant_id: str | None = None) -> dict[tuple[str, str], datetime | None]:
    rows = await pool.fetch("SELECT merchant_id, lane, complete_as_of FROM square.sync_freshness"
                            " WHERE $1::text IS NULL OR merchant_id = $1", merchant_id)
    return {(r["merchant_id"], r["lane"]): r["complete_as_of"] for r in rows}


async def bounds_of(pool: asyncpg.Pool, merchant_id: str) -> dict[str, datetime | None]:
    return {lane: at for (_, lane), at in (await view(pool, merchant_id)).items()}


# -- the rule -------------------------------------------------------------------------------------------------

async def test_a_lane_is_as_fresh_as_the_start_of_its_last_succeeded_run(db_pool: asyncpg.Pool) -> None:
    await seller(db_pool, "M")
    await run(db_pool, "M", "reconcile:segments", "succeeded", t(0))
    await run(db_pool, "M", "reconcile:segments", "succeeded", t(5))
    for status in ("failed", "partial", "interrupted", "running"):  # none of these completes anything
        await run(db_pool, "M", "reconcile:segments", status, t(10))
    await run(db_pool, "M", "reconcile:groups", "failed", t(1))
    bounds = await bounds_of(db_pool, "M")
    assert bounds["segments"] == t(5)
    assert bounds["groups"] is None
    assert set(bounds) == set(LANES)


async def test_a_pass_continued_over_several_runs_began_with_the_first(db_pool: asyncpg.Pool) -> None:
    await seller(db_pool, "M")
    await run(db_pool, "M", "reconcile:incremental", "succeeded", t(0))
    first = await run(db_pool, "M", "reconcile:incremental", "interrupted", t(1))
    second = await run(db_pool, "M", "reconcile:incremental", "partial", t(2), resumed_from=first)
    await run(db_pool, "M", "reconcile:incremental", "succeeded", t(3), resumed_from=second)
    # a fresh pass (nothing resumed) after a failed one starts at its own start
    await run(db_pool, "M", "reconcile:groups", "failed", t(1))
    await run(db_pool, "M", "reconcile:groups", "succeeded", t(4))
    bounds = await bounds_of(db_pool, "M")
    assert bounds["incremental"] == t(1)
    assert bounds["groups"] == t(4)


@pytest.mark.parametrize("kind", ["backfill", "sweep"])
async def test_a_succeeded_backfill_or_sweep_completes_every_lane_a_full_listing_covers(
        db_pool: asyncpg.Pool, kind: str) -> None:
    await seller(db_pool, "M")
    await run(db_pool, "M", "reconcile:segments", "succeeded", t(0))
    await run(db_pool, "M", "reconcile:custom_attributes", "succeeded", t(30))  # newer than the full pass
    listing = await run(db_pool, "M", kind, "interrupted", t(10))
    await run(db_pool, "M", kind, "succeeded", t(20), resumed_from=listing)
    bounds = await bounds_of(db_pool, "M")
    expected = {lane: t(10) for lane in FULL_PASS_LANES} | {"events": None, "custom_attributes": t(30)}
    assert bounds == expected
    assert set(FULL_PASS_LANES) == set(LANES) - {"events"}


async def test_a_failed_backfill_completes_nothing_and_sellers_do_not_mix(db_pool: asyncpg.Pool) -> None:
    await seller(db_pool, "M")
    await seller(db_pool, "N")
    await run(db_pool, "M", "backfill", "failed", t(0))
    await run(db_pool, "M", "sweep", "partial", t(0))
    await run(db_pool, "N", "reconcile:events", "succeeded", t(7))
    await run(db_pool, "X", "reconcile:events", "succeeded", t(7))  # not a known seller: no rows
    rows = await view(db_pool)
    assert {m for m, _ in rows} == {"M", "N"}
    assert all(at is None for (m, _), at in rows.items() if m == "M")
    assert rows[("N", "events")] == t(7)


async def test_the_view_states_each_lanes_target_and_its_columns_come_first(db_pool: asyncpg.Pool) -> None:
    await seller(db_pool, "M")
    rows = await db_pool.fetch("SELECT * FROM square.sync_freshness")
    assert list(rows[0].keys())[:3] == ["merchant_id", "lane", "complete_as_of"]
    assert {r["lane"]: r["target_seconds"] for r in rows} == LANE_TARGET_SECONDS
    assert all(r["staleness_seconds"] is None for r in rows)


# -- they agree -----------------------------------------------------------------------------------------------

async def _seed_deployment(pool: asyncpg.Pool) -> None:
    """Three sellers: one fresh, one behind with never-complete lanes, one new with nothing yet."""
    await seller(pool, "FRESH")
    for lane in LANES:
        await run(pool, "FRESH", lane_kind(lane), "succeeded", AT - timedelta(seconds=LANE_TARGET_SECONDS[lane] / 2))
    await seller(pool, "BEHIND")
    await run(pool, "BEHIND", "backfill", "succeeded", t(-120))
    await run(pool, "BEHIND", "reconcile:incremental", "succeeded", t(50))
    await run(pool, "BEHIND", "reconcile:incremental", "failed", t(59))
    await seller(pool, "NEW", first_seen=AT - timedelta(seconds=30))


def _gauge() -> dict[tuple[str, str], float]:
    return {(s.labels["merchant_id"], s.labels["lane"]): s.value for family in REGISTRY.collect()
            if family.name == "square_mirror_lane_staleness_seconds" for s in family.samples}


async def test_the_view_the_gauge_status_and_the_dashboard_agree(db_pool: asyncpg.Pool, db_dsn: str) -> None:
    await _seed_deployment(db_pool)
    complete = await view(db_pool)
    assert len(complete) == 3 * len(LANES)
    expected = {key: math.inf if at is None else (AT - at).total_seconds() for key, at in complete.items()}
    assert expected[("BEHIND", "incremental")] == 600.0
    assert expected[("BEHIND", "groups")] == 3 * 3600.0
    assert expected[("BEHIND", "events")] == math.inf

    await refresh_lane_staleness(db_pool, AT)  # what the worker runs before each scrape
    assert _gauge() == expected

    report, _ = await collect(Settings(database_url=Secret(db_dsn)), 300.0, False, at=AT)
    assert report["problems"] == ["BEHIND: last reconcile:incremental run failed"]  # bounds: only with --strict
    shown = {(merchant_id, lane): bound for merchant_id, entry in report["merchants"].items()
             for lane, bound in entry["freshness"].items()}
    assert set(shown) == set(complete)
    for key, bound in shown.items():
        at = complete[key]
        assert bound["complete_as_of"] == (None if at is None else iso(at)), key
        assert (math.inf if bound["staleness_seconds"] is None else bound["staleness_seconds"]) == expected[key]
        assert bound["target_seconds"] == LANE_TARGET_SECONDS[key[1]]

    # the dashboard's staleness panels read this gauge by its labels
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "square-mirror.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]
             if "square_mirror_lane_staleness_seconds" in target["expr"]]
    assert len(exprs) >= 2
    grouped = {frozenset(label.strip() for label in by.split(","))
               for expr in exprs for by in re.findall(r"by \(([^)]*)\)", expr)}
    assert {frozenset({"lane"}), frozenset({"merchant_id", "lane"})} <= grouped
    assert all(labels <= {"merchant_id", "lane"} for labels in grouped)


async def test_strict_fails_over_the_limit_and_passes_within_it(db_pool: asyncpg.Pool, db_dsn: str) -> None:
    await _seed_deployment(db_pool)
    settings = Settings(database_url=Secret(db_dsn))
    report, code = await collect(settings, 300.0, True, at=AT)
    assert code == 1
    over = {p.split(":")[0] + ":" + p.split(": lane ")[1].split()[0] for p in report["problems"] if ": lane " in p}
    # BEHIND: incremental 600 s > 120 s, groups/segments/custom attributes 3 h > 600 s, events never (known 1 day);
    # its sweep (3 h < 2 days) is within. FRESH is within everywhere; NEW (known 30 s) is not over yet.
    assert over == {"BEHIND:incremental", "BEHIND:segments", "BEHIND:groups", "BEHIND:custom_attributes",
                    "BEHIND:events"}
    assert report["merchants"]["BEHIND"]["freshness"]["sweep"]["exceeds_limit"] is False
    assert report["merchants"]["NEW"]["freshness"]["incremental"]["exceeds_limit"] is False
    # 40 x the targets: only the never-complete events lane (known 25 h > 40 x 300 s) is over
    loose, code = await collect(Settings(database_url=Secret(db_dsn), staleness_limit_factor=40.0), 300.0, True,
                                at=AT)
    assert code == 1
    assert [p for p in loose["problems"] if "lane" in p] == [
        "BEHIND: lane events never completed in the 90000 s the seller is known (limit 12000 s)"]
    # once NEW has been known longer than its incremental lane's limit, never completing is over it
    later, _ = await collect(settings, 300.0, True, at=AT + timedelta(seconds=91))
    assert later["merchants"]["NEW"]["freshness"]["incremental"]["exceeds_limit"] is True
    assert later["merchants"]["NEW"]["freshness"]["sweep"]["exceeds_limit"] is False


async def test_the_events_lane_of_a_seller_the_events_api_refuses_is_exempt_from_strict(
        db_pool: asyncpg.Pool, db_dsn: str) -> None:
    await seller(db_pool, "OAUTH")
    for lane in LANES:
        if lane != "events":
            await run(db_pool, "OAUTH", lane_kind(lane), "succeeded", AT - timedelta(seconds=10))
    await db_pool.execute("INSERT INTO square.sync_runs (merchant_id, kind, status, started_at, finished_at, counts)"
                          " VALUES ('OAUTH', 'reconcile:events', 'failed', $1, $1, '{\"events_refused\": 1}')",
                          AT - timedelta(seconds=10))
    report, code = await collect(Settings(database_url=Secret(db_dsn)), 300.0, True, at=AT)
    assert report["merchants"]["OAUTH"]["freshness"]["events"]["exceeds_limit"] is True
    assert report["problems"] == [] and code == 0
