"""Staleness bounds: per seller and reconcile lane, how old the data that lane heals can be at most.

The rule lives in one place, the view ``square.sync_freshness`` (schema.sql): a lane's ``complete_as_of`` is when
its last complete pass began (a succeeded run of the lane, or of a backfill or sweep for the lanes a full listing
covers; a pass continued over several runs began with the first). The bound is ``at - complete_as_of``. This module
reads it for ``status`` and for the worker's gauge (worker/freshness.py), so the three always agree.

A lane is over its limit when its bound exceeds ``factor`` times its target interval
(:data:`square_mirror.constants.LANE_TARGET_SECONDS`, ``STALENESS_LIMIT_FACTOR``); a lane never complete is over it
once the seller has been known for longer than the limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from square_mirror.constants import LANE_TARGET_SECONDS
from square_mirror.queries import queries


@dataclass(frozen=True, slots=True)
class Bound:
    """One seller's lane: when its last complete pass began (None: never) and the bound at the time it was read."""

    merchant_id: str
    lane: str
    complete_as_of: datetime | None
    staleness_seconds: float | None  # None: never complete, no bound
    target_seconds: int
    known_for_seconds: float  # since the mirror first saw the seller (square.merchants.first_seen_at)

    def limit_seconds(self, factor: float) -> float:
        return factor * self.target_seconds

    def exceeds(self, factor: float) -> bool:
        """Over the limit: a bound above it, or never complete though the seller is known for longer than it."""
        limit = self.limit_seconds(factor)
        if self.staleness_seconds is None:
            return self.known_for_seconds > limit
        return self.staleness_seconds > limit


async def read_bounds(conn: Any, at: datetime | None = None) -> list[Bound]:
    """Every known seller's bounds as of ``at`` (default: the database's now), lanes in their usual order.

    ``conn`` is an asyncpg connection or pool.
    """
    order = {lane: position for position, lane in enumerate(LANE_TARGET_SECONDS)}
    rows = await conn.fetch(queries.get("lane_freshness"), at)
    bounds = [Bound(r["merchant_id"], r["lane"], r["complete_as_of"], r["staleness_seconds"], int(r["target_seconds"]),
                    float(r["known_for_seconds"])) for r in rows]
    return sorted(bounds, key=lambda b: (b.merchant_id, order.get(b.lane, len(order))))
