"""The budget-aware lane scheduler (``LANE_SCHEDULER=budget``): one cron entry instead of the lanes' fixed ones.

Every minute, for every known seller (:func:`worker.merchants.known_merchants`), it reads each lane's staleness bound
(``square.sync_freshness``, the rule ``status`` and the gauge use), the measured cost of the lane's last succeeded
pass (its ``requests``, else its ``pages``; and its seconds) and what the seller's requests went to over the last
:data:`~square_mirror.constants.LANE_BUDGET_WINDOW_SECONDS` (counted by the rate limiter, square_mirror/ratelimit.py,
per class: ``events``, ``backfill`` and ``lanes``). Then:

- **Events and backfills first.** The lanes may use ``LANE_BUDGET_SHARE x SQUARE_MAX_REQUESTS_PER_SECOND``, but
  never more than what the others left of the seller's rate over the window (``available_rps``). The rate limiter
  enforces the same order from one request to the next: the lanes leave the events a reserve of the bucket.
- **Spread over the window, not the minute.** The lanes' credit is ``available_rps x window`` minus what the lanes
  already spent in it. Due lanes (staleness at least the target, or never complete) are queued most stale first
  while their cost fits the credit (due: as of when the seller's job will start, within a few seconds); the others
  are *deferred* (counted, ``square_mirror_lanes_deferred_total``)
  and come first once the credit allows. A pass costlier than the whole window's credit runs when the lanes spent
  nothing in the window, so it runs less often than its target rather than never.
- **Affordability, reported.** A seller *can afford* its lanes when the sum over its lanes of ``cost / target``
  fits its lane share, and no pass lasts longer than its lane's target; otherwise it is reported: the row in
  ``square.lane_budgets`` (which ``status`` reads), a ``lanes_unaffordable`` log line when it becomes so, and the
  gauge ``square_mirror_lane_budget_ratio`` (need / share, at each scrape). Its lanes still run, as often as the
  budget allows: never silently skipped.
- A lane whose cost is unknown (it never succeeded) is assumed to fit and costs nothing from the credit;
  ``SQUARE_MAX_REQUESTS_PER_SECOND=0`` (unlimited): every due lane is queued.
- A seller's jobs are deferred by a fixed offset within the minute derived from its merchant ID
  (:func:`seller_offset_seconds`), so a thousand sellers do not all start in the same second.

The job IDs are the cron lanes' (``reconcile:<lane>:<merchant>``): a lane still queued or running is not queued again.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import asyncpg

from square_mirror.constants import (
    LANE_BUDGET_WINDOW_SECONDS,
    LANE_DUE_SLACK_SECONDS,
    LANE_SPREAD_SECONDS,
    LANE_TARGET_SECONDS,
)
from square_mirror.freshness import Bound, read_bounds
from square_mirror.logs import get_logger
from square_mirror.ratelimit import BACKFILL_SPENDING, EVENT_SPENDING, LANE_SPENDING
from square_mirror.settings import Settings
from worker.metrics import LANES_DEFERRED
from worker.queries import queries
from worker.reconcile.lanes import lane_kind

log = get_logger(__name__)

Usage = Mapping[str, int]  # requests in the window by spending class (square_mirror.ratelimit.read_usage)


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


@dataclass(frozen=True, slots=True)
class Budget:
    """One seller's lane budget over the window: requests per second and what the lanes already spent."""

    share_rps: float  # LANE_BUDGET_SHARE x the seller's rate
    available_rps: float  # of it, what the events and backfills left over the window
    lanes_spent: int = 0  # the lanes' requests in the window
    window_seconds: float = LANE_BUDGET_WINDOW_SECONDS

    @property
    def whole(self) -> float:
        """The lanes' credit for a window in which they spent nothing."""
        return self.available_rps * self.window_seconds

    @property
    def credit(self) -> float:
        return self.whole - self.lanes_spent


@dataclass(slots=True)
class Plan:
    """One seller's minute: the lanes to queue (in order), the due ones left for later, and its affordability."""

    queued: list[str] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)
    need_rps: float = 0.0  # the lanes' measured cost per second at their targets
    budget: Budget | None = None  # None: unlimited
    too_slow: list[str] = field(default_factory=list)  # lanes whose pass lasts longer than their target

    @property
    def affordable(self) -> bool:
        return not self.too_slow and (self.budget is None or self.need_rps <= self.budget.share_rps)


def seller_budget(settings: Settings, usage: Usage | None = None,
                  window_seconds: float = LANE_BUDGET_WINDOW_SECONDS) -> Budget | None:
    """The lanes' budget given what the seller's requests went to in the window; None: unlimited."""
    rate = settings.square_max_requests_per_second
    if rate <= 0:
        return None
    usage = usage or {}
    share = settings.lane_budget_share * rate
    others = (usage.get(EVENT_SPENDING, 0) + usage.get(BACKFILL_SPENDING, 0)) / window_seconds
    return Budget(share, max(0.0, min(share, rate - others)), int(usage.get(LANE_SPENDING, 0)), window_seconds)


def due_lanes(bounds: Iterable[Bound], lead_seconds: float = 0.0) -> list[Due]:
    """The lanes due among one seller's bounds (a seller not yet in square.merchants: every lane).

    Judged at the time the job will start, ``lead_seconds`` from now (the seller's offset in the minute), less
    :data:`LANE_DUE_SLACK_SECONDS`: judged at the minute itself, a pass that started a second late would wait a
    whole extra minute, and a 60 s lane would run every two minutes."""
    rows = list(bounds)
    if not rows:
        return [Due(lane, None) for lane in LANE_TARGET_SECONDS]
    due = [Due(b.lane, b.staleness_seconds) for b in rows
           if b.staleness_seconds is None
           or b.staleness_seconds + lead_seconds >= b.target_seconds - LANE_DUE_SLACK_SECONDS]
    return sorted(due, key=Due.order)


def need_rps(costs: Mapping[str, Cost]) -> float:
    """Requests per second the lanes need to run at their targets, from their measured costs."""
    return sum(cost.requests / LANE_TARGET_SECONDS[lane] for lane, cost in costs.items())


def plan(due: Sequence[Due], costs: Mapping[str, Cost], budget: Budget | None) -> Plan:
    """Queue the due lanes, most stale first, while their measured cost fits the budget's credit."""
    result = Plan(need_rps=need_rps(costs), budget=budget,
                  too_slow=[lane for lane, cost in costs.items() if cost.seconds > LANE_TARGET_SECONDS[lane]])
    if budget is None:
        result.queued = [lane.lane for lane in sorted(due, key=Due.order)]
        return result
    left = budget.credit
    for lane in sorted(due, key=Due.order):
        cost = costs.get(lane.lane)
        requests = 0 if cost is None else cost.requests
        if requests <= left or (requests > budget.whole > 0 and left >= budget.whole and not result.queued):
            result.queued.append(lane.lane)  # the second case: a pass larger than a whole window, alone in one
            left -= requests
        else:
            result.deferred.append(lane.lane)
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


_ROUND: Final = 3


async def record_plans(pool: asyncpg.Pool, plans: Mapping[str, Plan], costs: Mapping[str, Mapping[str, Cost]]) -> None:
    """Keep each seller's minute in ``square.lane_budgets``; log the sellers that just became unable to afford
    their lanes (and those able again), once each, not every minute."""
    for lane, count in Counter(lane for seller in plans.values() for lane in seller.deferred).items():
        LANES_DEFERRED.labels(lane).inc(count)
    rows = [(mid, None if p.budget is None else round(p.budget.share_rps, _ROUND),
             None if p.budget is None else round(p.budget.available_rps, _ROUND), round(p.need_rps, _ROUND),
             p.affordable, json.dumps(p.too_slow), json.dumps(p.deferred),
             json.dumps({lane: {"requests": c.requests, "seconds": round(c.seconds, 1)}
                         for lane, c in costs.get(mid, {}).items()}))
            for mid, p in plans.items()]
    changed = await pool.fetch(queries.get("record_lane_budgets"), *map(list, zip(*rows, strict=True))) if rows else []
    for row in changed:
        seller = plans[row["merchant_id"]]
        if seller.affordable:
            log.info("lanes_affordable_again", merchant_id=row["merchant_id"], need_rps=round(seller.need_rps, 3))
            continue
        log.warning("lanes_unaffordable", merchant_id=row["merchant_id"], need_rps=round(seller.need_rps, 3),
                    share_rps=None if seller.budget is None else seller.budget.share_rps, too_slow=seller.too_slow)


async def plan_sellers(pool: asyncpg.Pool, settings: Settings, merchants: Sequence[str],
                       at: datetime | None = None, usage: Mapping[str, Usage] | None = None) -> dict[str, Plan]:
    """Each seller's plan for the minute starting ``at`` (default: the database's now), given each seller's
    requests in the window by class (``usage``, from the rate limiter; none: nothing spent)."""
    bounds: dict[str, list[Bound]] = {}
    for bound in await read_bounds(pool, at):
        bounds.setdefault(bound.merchant_id, []).append(bound)
    costs = await lane_costs(pool)
    plans = {}
    for merchant_id in merchants:
        budget = seller_budget(settings, (usage or {}).get(merchant_id))
        due = due_lanes(bounds.get(merchant_id, []), seller_offset_seconds(merchant_id))
        plans[merchant_id] = plan(due, costs.get(merchant_id, {}), budget)
    await record_plans(pool, plans, costs)
    return plans
