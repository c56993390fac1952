"""The budget-aware lane scheduler (``LANE_SCHEDULER=budget``): one cron entry instead of the lanes' fixed ones.

Every minute, for every known seller (:func:`worker.merchants.known_merchants`), it reads each lane's staleness bound
(``square.sync_freshness``, the rule ``status`` and the gauge use) and the measured cost of the lane's last succeeded
pass (its ``requests`` count, else its ``pages``; and its seconds), and queues the lanes that are due (staleness at
least the lane's target interval, or never complete), most stale first, while the seller's lane budget for the
minute has room for their cost:

    budget = LANE_BUDGET_SHARE x SQUARE_MAX_REQUESTS_PER_SECOND x 60 requests

- A lane whose cost is unknown (it never succeeded) is assumed to fit and costs nothing from the budget.
- ``SQUARE_MAX_REQUESTS_PER_SECOND=0`` (unlimited): every due lane is queued.
- A due lane that does not fit is never silently skipped: it is logged (``lane_unaffordable``, with the seller,
  lane, cost and budget) and counted (``square_mirror_lanes_unaffordable_total{lane}``); it stays due and is
  considered again the next minute, more stale and so earlier in the order.
- A seller's jobs are deferred by a fixed offset within the minute derived from its merchant ID
  (:func:`seller_offset_seconds`), so a thousand sellers do not all start in the same second.

The job IDs are the cron lanes' (``reconcile:<lane>:<merchant>``): a lane still queued or running is not queued again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import asyncpg

from square_mirror.constants import LANE_SPREAD_SECONDS, LANE_TARGET_SECONDS
from square_mirror.freshness import Bound, read_bounds
from square_mirror.logs import get_logger
from square_mirror.settings import Settings
from worker.metrics import LANES_UNAFFORDABLE
from worker.queries import queries
from worker.reconcile.lanes import lane_kind

log = get_logger(__name__)

MINUTE_SECONDS: Final = 60.0


@dataclass(frozen=True, slots=True)
class Cost:
    """What a lane's last succeeded pass took: Square requests and seconds."""

    requests: int
    seconds: float


@dataclass(frozen=True, slots=True)
class Due:
    """A lane due for a seller: its staleness bound (None: never complete, the most stale of all)."""

    lane: str
    staleness_seconds: float | None

    def order(self) -> tuple[float, int]:
        """Most stale first; ties (and never-complete lanes) in the lanes' usual order."""
        stale = float("inf") if self.staleness_seconds is None else self.staleness_seconds
        return -stale, list(LANE_TARGET_SECONDS).index(self.lane)


@dataclass(slots=True)
class Plan:
    """One seller's minute: the lanes to queue (in order) and the due lanes its budget could not afford."""

    queued: list[str] = field(default_factory=list)
    unaffordable: list[str] = field(default_factory=list)


def lane_budget(settings: Settings) -> float | None:
    """Requests one seller's lanes may make in a minute; None: unlimited (SQUARE_MAX_REQUESTS_PER_SECOND=0)."""
    rate = settings.square_max_requests_per_second
    if rate <= 0:
        return None
    return settings.lane_budget_share * rate * MINUTE_SECONDS


def due_lanes(bounds: Iterable[Bound]) -> list[Due]:
    """The lanes due among one seller's bounds (a seller not yet in square.merchants: every lane)."""
    rows = list(bounds)
    if not rows:
        return [Due(lane, None) for lane in LANE_TARGET_SECONDS]
    due = [Due(b.lane, b.staleness_seconds) for b in rows
           if b.staleness_seconds is None or b.staleness_seconds >= b.target_seconds]
    return sorted(due, key=Due.order)


def plan(due: Sequence[Due], costs: Mapping[str, Cost], budget: float | None) -> Plan:
    """Queue the due lanes, most stale first, while their measured cost fits what is left of ``budget``."""
    result = Plan()
    left = budget
    for lane in sorted(due, key=Due.order):
        cost = costs.get(lane.lane)
        requests = 0 if cost is None else cost.requests
        if left is not None and requests > left:
            result.unaffordable.append(lane.lane)
            continue
        result.queued.append(lane.lane)
        if left is not None:
            left -= requests
    return result


def seller_offset_seconds(merchant_id: str) -> float:
    """A seller's fixed place in the minute: the same for the same merchant ID in every process, spread evenly."""
    digest = hashlib.sha256(merchant_id.encode()).digest()
    return (int.from_bytes(digest[:8], "big") % (LANE_SPREAD_SECONDS * 1000)) / 1000


def _cost(counts: Mapping[str, Any] | None, seconds: float | None) -> Cost:
    counts = counts or {}
    requests = counts.get("requests", counts.get("pages", 0))
    return Cost(int(requests or 0), float(seconds or 0.0))


async def lane_costs(pool: asyncpg.Pool) -> dict[str, dict[str, Cost]]:
    """Every known seller's measured lane costs: merchant -> lane -> cost of its last succeeded pass."""
    lanes = {lane_kind(lane): lane for lane in LANE_TARGET_SECONDS}
    costs: dict[str, dict[str, Cost]] = {}
    for row in await pool.fetch(queries.get("lane_costs"), list(lanes)):
        costs.setdefault(row["merchant_id"], {})[lanes[row["kind"]]] = _cost(row["counts"], row["seconds"])
    return costs


def report_unaffordable(merchant_id: str, lanes: Sequence[str], costs: Mapping[str, Cost],
                        budget: float | None) -> None:
    for lane in lanes:
        cost = costs[lane]
        LANES_UNAFFORDABLE.labels(lane).inc()
        log.warning("lane_unaffordable", merchant_id=merchant_id, lane=lane, requests=cost.requests,
                    seconds=round(cost.seconds, 1), budget_requests=budget)


async def plan_sellers(pool: asyncpg.Pool, settings: Settings, merchants: Sequence[str],
                       at: datetime | None = None) -> dict[str, Plan]:
    """Each seller's plan for the minute starting ``at`` (default: the database's now); unaffordable lanes reported."""
    bounds: dict[str, list[Bound]] = {}
    for bound in await read_bounds(pool, at):
        bounds.setdefault(bound.merchant_id, []).append(bound)
    costs = await lane_costs(pool)
    budget = lane_budget(settings)
    plans = {}
    for merchant_id in merchants:
        seller_costs = costs.get(merchant_id, {})
        plans[merchant_id] = plan(due_lanes(bounds.get(merchant_id, [])), seller_costs, budget)
        report_unaffordable(merchant_id, plans[merchant_id].unaffordable, seller_costs, budget)
    return plans
