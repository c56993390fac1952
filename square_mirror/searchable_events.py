"""Searchable events: Square's Events API finds only events that occurred while events were enabled.

All events are disabled by default, and a disabled period stays unsearchable even after re-enabling (the spec's
EnableEvents/DisableEvents descriptions). So the mirror enables events for every seller as early as it can (at
``migrate``, when a seller is first seen, at a backfill's start) and again at every pass of the events lane, and
records in ``square.merchants`` since when each seller's events are searchable: the events replay can never
reach back before that time, and says so.

The Events API takes personal access tokens only (a single seller's own token, or the application's token with
``merchant_ids``); a refusal is recorded in ``merchants.events_error`` and logged once per process and seller,
and the other lanes carry on healing the mirror without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from square_mirror.logs import get_logger
from square_mirror.queries import queries
from square_mirror.square_api import SquareClient, SquareError, SquareUnauthorized
from square_mirror.timefmt import utcnow

log = get_logger(__name__)

_REFUSALS_SAID: set[str] = set()  # merchants whose refusal this process already logged at WARNING


class EventsRefused(SquareUnauthorized):
    """The Events API refused this seller's token: it takes personal access tokens only."""


@dataclass(frozen=True, slots=True)
class Searchable:
    since: datetime  # events that occurred before this cannot be found by SearchEvents


Executor = asyncpg.Pool | asyncpg.Connection | PoolConnectionProxy


async def enable(pool: Executor, client: SquareClient, merchant_id: str, *, restarted: bool = False) -> Searchable:
    """EnableEvents for this seller and record it; ``restarted`` when events were found to have been off, so the
    searchable period starts again now. Raises :class:`EventsRefused` when the token cannot use the Events API."""
    try:
        await client.enable_events(merchant_id)
    except SquareUnauthorized as exc:
        refused = EventsRefused(
            f"{exc} (the Events API takes personal access tokens only: set SQUARE_APPLICATION_ACCESS_TOKEN_FILE "
            "for sellers connected with OAuth; webhooks and the other reconcile lanes still heal the mirror)",
            merchant_id=merchant_id, status=exc.status, errors=exc.errors, endpoint=exc.endpoint)
        await pool.execute(queries.get("record_events_refusal"), merchant_id, str(refused)[:500])
        level = log.debug if merchant_id in _REFUSALS_SAID else log.warning
        _REFUSALS_SAID.add(merchant_id)
        level("events_api_refused", merchant_id=merchant_id, error=str(refused))
        raise refused from None
    _REFUSALS_SAID.discard(merchant_id)
    since: datetime = await pool.fetchval(queries.get("record_events_enabled"), merchant_id, utcnow(), restarted)
    return Searchable(since)


async def ensure_enabled(pool: Executor, client: SquareClient, merchant_id: str) -> bool:
    """Enable events for a seller the mirror has never enabled them for, nor been refused for (then only the
    events lane tries again, at its own pass); never fails its caller. True when nothing is left to try now."""
    if await enablement_settled(pool, merchant_id):
        return True
    try:
        await enable(pool, client, merchant_id)
    except SquareError as exc:  # the events lane tries again at its next pass
        log.info("events_enable_deferred", merchant_id=merchant_id, error_type=type(exc).__name__)
        return False
    return True


async def enablement_settled(pool: Executor, merchant_id: str) -> bool:
    """Whether the mirror enabled this seller's events, or was refused: either way no one but the events lane
    needs to call EnableEvents for it."""
    settled: bool | None = await pool.fetchval(queries.get("events_settled"), merchant_id)
    return bool(settled)


__all__ = ["EventsRefused", "Searchable", "enable", "enablement_settled", "ensure_enabled"]
