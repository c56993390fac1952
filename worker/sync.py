"""Bring customers, by ID, in line with Square: fetch, resolve merges, tombstone, upsert.

Webhook jobs (through the fetch coalescer), backfill deletion inference and the reconcile lanes all call
:func:`sync_customers`, so a profile is interpreted one way only:
- Square returns the same ID: a live snapshot, written if it wins the staleness rule.
- Square returns another ID: the requested one was merged into it (RetrieveCustomer redirects merged IDs).
- NOT_FOUND: deleted. Whether BulkRetrieveCustomers redirects merged IDs is unconfirmed, so a bulk NOT_FOUND
  is confirmed with RetrieveCustomer before anything is tombstoned.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import asyncpg

from square_mirror.logs import get_logger
from square_mirror.square_api import BULK_RETRIEVE_LIMIT, SquareClient
from worker import store

log = get_logger(__name__)


class Outcome(StrEnum):
    APPLIED = "applied"
    STALE = "stale"
    DELETED = "deleted"
    MERGED = "merged"


@dataclass
class SyncResult:
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    merged_into: dict[str, str] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)  # requested ID -> version of the profile Square returned
    definitions_fetched: int = 0
    api_calls: int = 0


@dataclass(frozen=True)
class SyncContext:
    pool: asyncpg.Pool
    client: SquareClient


def utcnow() -> datetime:
    return datetime.now(UTC)


async def fetch_profiles(
    client: SquareClient, merchant_id: str, customer_ids: Sequence[str]
) -> tuple[dict[str, dict[str, Any] | None], int]:
    """requested ID -> the profile Square answers with (None when deleted), and the number of API calls."""
    found: dict[str, dict[str, Any] | None] = {}
    calls = 0
    ids = list(dict.fromkeys(customer_ids))
    for start in range(0, len(ids), BULK_RETRIEVE_LIMIT):
        chunk = ids[start : start + BULK_RETRIEVE_LIMIT]
        if len(chunk) == 1:
            found[chunk[0]] = await client.retrieve_customer(merchant_id, chunk[0])
        else:
            found.update(await client.bulk_retrieve_customers(merchant_id, chunk))
        calls += 1
    missing = [cid for cid, profile in found.items() if profile is None]
    if missing and len(ids) > 1:
        confirmed = await asyncio.gather(*(client.retrieve_customer(merchant_id, cid) for cid in missing))
        calls += len(missing)
        found.update(zip(missing, confirmed, strict=True))
    return found, calls


async def apply_profiles(
    conn: store.Conn,
    merchant_id: str,
    profiles: Mapping[str, dict[str, Any] | None],
    observed_at: datetime,
) -> SyncResult:
    """Write what Square said about each requested ID, in the caller's transaction."""
    result = SyncResult()
    live: list[dict[str, Any]] = []
    deleted: list[str] = []
    for requested, profile in profiles.items():
        if profile is None:
            deleted.append(requested)
            continue
        live.append(profile)
        result.versions[requested] = int(profile.get("version") or 0)
        if profile["id"] != requested:
            result.merged_into[requested] = profile["id"]
    for source, target in sorted(result.merged_into.items()):
        await store.apply_merge(conn, merchant_id, [source], target, observed_at, source="retrieve")
        result.outcomes[source] = Outcome.MERGED
    if deleted:
        await store.tombstone_customers(conn, merchant_id, deleted, observed_at)
        for cid in deleted:
            result.outcomes[cid] = Outcome.DELETED
    written = await store.upsert_customers(conn, merchant_id, live, observed_at)
    for requested, profile in profiles.items():
        if profile is not None and requested not in result.merged_into:
            result.outcomes[requested] = Outcome.APPLIED if profile["id"] in written else Outcome.STALE
    return result


async def sync_customers(ctx: SyncContext, merchant_id: str, customer_ids: Iterable[str]) -> SyncResult:
    """Fetch these customers from Square and write whatever wins, with unknown group/segment definitions."""
    ids = list(dict.fromkeys(customer_ids))
    if not ids:
        return SyncResult()
    observed_at = utcnow()  # taken before the request: the state is at least this fresh
    profiles, calls = await fetch_profiles(ctx.client, merchant_id, ids)
    async with ctx.pool.acquire() as conn, conn.transaction():
        result = await apply_profiles(conn, merchant_id, profiles, observed_at)
    result.api_calls = calls
    result.definitions_fetched, extra_calls = await sync_missing_definitions(
        ctx, merchant_id, [p for p in profiles.values() if p is not None]
    )
    result.api_calls += extra_calls
    return result


async def sync_missing_definitions(
    ctx: SyncContext, merchant_id: str, profiles: Sequence[Mapping[str, Any]]
) -> tuple[int, int]:
    """Groups or segments named by profiles but unknown to the mirror: fetch and store their definitions."""
    wanted_groups = {g for p in profiles for g in (p.get("group_ids") or []) if isinstance(g, str)}
    wanted_segments = {s for p in profiles for s in (p.get("segment_ids") or []) if isinstance(s, str)}
    if not wanted_groups and not wanted_segments:
        return 0, 0
    async with ctx.pool.acquire() as conn:
        missing_groups = wanted_groups - await store.known_definition_ids(conn, merchant_id, "groups")
        missing_segments = wanted_segments - await store.known_definition_ids(conn, merchant_id, "segments")
    if not missing_groups and not missing_segments:
        return 0, 0
    groups = await asyncio.gather(*(ctx.client.retrieve_group(merchant_id, g) for g in sorted(missing_groups)))
    segments = await asyncio.gather(*(ctx.client.retrieve_segment(merchant_id, s) for s in sorted(missing_segments)))
    async with ctx.pool.acquire() as conn, conn.transaction():
        await store.upsert_definitions(conn, merchant_id, "groups", [g for g in groups if g])
        await store.upsert_definitions(conn, merchant_id, "segments", [s for s in segments if s])
    fetched = sum(1 for g in groups if g) + sum(1 for s in segments if s)
    log.info("definitions_fetched", merchant_id=merchant_id, groups=len(missing_groups),
             segments=len(missing_segments))
    return fetched, len(missing_groups) + len(missing_segments)
