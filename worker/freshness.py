"""The worker's staleness gauge, ``square_mirror_lane_staleness_seconds``, from ``square.sync_freshness``.

Why at scrape time (worker/app.py calls :func:`refresh_lane_staleness` before each ``/metrics`` answer) rather
than when a lane run finishes or on a timer of its own: the figure grows every second, and only Postgres knows
every run (each worker, the one-shot ``backfill`` and ``reconcile`` commands, runs of other processes). Reading
the view when Prometheus asks gives the bound at the moment it is scraped, from the same rule ``status`` and
analysts use, with no schedule to drift and nothing to miss; the cost is one indexed query per scrape (a few
index probes per seller and run kind). Every worker serves the same series; the dashboard takes the ``max``.

The lane budget gauge, ``square_mirror_lane_budget_ratio``, is read the same way from ``square.lane_budgets``
(what the budget scheduler wrote at its last minute), so every worker serves it, not only the one that planned.

A seller's lane never complete has no bound: its value is +Inf (as ``status`` says ``never``), so a panel or an
alert sees it rather than a missing series. Sellers no longer in ``square.merchants`` drop out at the next scrape.
"""

from __future__ import annotations

import math
from datetime import datetime

import asyncpg

from square_mirror.freshness import Bound, read_bounds
from worker.metrics import LANE_BUDGET_RATIO, LANE_STALENESS
from worker.queries import queries


async def refresh_lane_staleness(pool: asyncpg.Pool, at: datetime | None = None) -> list[Bound]:
    """Set the gauge from the view as of ``at`` (default: the database's now); the bounds it was set from."""
    bounds = await read_bounds(pool, at)
    LANE_STALENESS.clear()  # no await between clear and set: a scrape never sees it half set
    for bound in bounds:
        value = math.inf if bound.staleness_seconds is None else bound.staleness_seconds
        LANE_STALENESS.labels(bound.merchant_id, bound.lane).set(value)
    return bounds


async def refresh_lane_budget_ratio(pool: asyncpg.Pool) -> None:
    """Set each seller's need / share ratio from square.lane_budgets (sellers with an unlimited rate have none)."""
    rows = await pool.fetch(queries.get("lane_budget_ratios"))
    LANE_BUDGET_RATIO.clear()
    for row in rows:
        LANE_BUDGET_RATIO.labels(row["merchant_id"]).set(row["ratio"])
