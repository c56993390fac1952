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
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import asyncpg

from square_mirror.logs import get_logger
from square_mirror.pagination import Pages
from square_mirror.square_api import BULK_RETRIEVE_LIMIT, SquareClient
from square_mirror.timefmt import utcnow
from worker import store
from worker.outcome import Outcome

if TYPE_CHECKING:
    from worker.runs import Run, RunLocks

log = get_logger(__name__)
LIST_MAX_RESTARTS = 5  # the definition lists are small: an expired cursor starts them over, five times at most


@dataclass
class SyncResult:
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    merged_into: dict[str, str] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)  # requested ID -> version of the profile Square returned
    api_calls: int = 0


@dataclass(frozen=True)
class SyncContext:
    pool: asyncpg.Pool
    client: SquareClient
    locks: RunLocks | None = None  # the worker's run locks on one session (worker/runs.py); None: one per run


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
        await store.apply_merge(conn, merchant_id, [source], target, observed_at, source=store.MergeSource.RETRIEVE)
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
    live = [p for p in profiles.values() if p is not None]
    result.api_calls += await sync_missing_definitions(ctx, merchant_id, live)
    return result


async def sync_missing_definitions(
    ctx: SyncContext, merchant_id: str, profiles: Sequence[Mapping[str, Any]]
) -> int:
    """Groups or segments named by profiles but unknown to the mirror: fetch and store their definitions.

    Returns the number of API calls made."""
    wanted_groups = {g for p in profiles for g in (p.get("group_ids") or []) if isinstance(g, str)}
    wanted_segments = {s for p in profiles for s in (p.get("segment_ids") or []) if isinstance(s, str)}
    if not wanted_groups and not wanted_segments:
        return 0
    async with ctx.pool.acquire() as conn:
        missing_groups = wanted_groups - await store.known_definition_ids(conn, merchant_id, "groups")
        missing_segments = wanted_segments - await store.known_definition_ids(conn, merchant_id, "segments")
    if not missing_groups and not missing_segments:
        return 0
    groups = await asyncio.gather(*(ctx.client.retrieve_group(merchant_id, g) for g in sorted(missing_groups)))
    segments = await asyncio.gather(*(ctx.client.retrieve_segment(merchant_id, s) for s in sorted(missing_segments)))
    async with ctx.pool.acquire() as conn, conn.transaction():
        await store.upsert_definitions(conn, merchant_id, "groups", [g for g in groups if g])
        await store.upsert_definitions(conn, merchant_id, "segments", [s for s in segments if s])
    log.info("definitions_fetched", merchant_id=merchant_id, groups=len(missing_groups),
             segments=len(missing_segments))
    return len(missing_groups) + len(missing_segments)


async def list_all(fetch: Callable[..., Awaitable[dict[str, Any]]], merchant_id: str, key: str,
                   run: Run | None = None) -> list[dict[str, Any]]:
    """Every item of a cursor-paged list (groups, segments); an expired cursor starts the listing over."""
    pages = Pages(lambda cursor: fetch(merchant_id, cursor=cursor), max_restarts=LIST_MAX_RESTARTS)
    items: dict[str, dict[str, Any]] = {}
    while not pages.done:
        page = await pages.next()
        if page is None:
            continue
        if run is not None:
            run.add(pages=1)
        for item in page.get(key) or []:
            if isinstance(item, dict) and isinstance(item.get("id"), str):
                items[item["id"]] = item
    return list(items.values())


async def sync_definitions(ctx: SyncContext, merchant_id: str, run: Run | None = None) -> dict[str, list[str]]:
    """List groups and segments completely, upsert them, tombstone the ones no longer listed."""
    groups = await list_all(ctx.client.list_groups, merchant_id, "groups", run)
    segments = await list_all(ctx.client.list_segments, merchant_id, "segments", run)
    now = utcnow()
    async with ctx.pool.acquire() as conn, conn.transaction():
        gone: dict[str, set[str]] = {}
        listed: tuple[store.DefinitionKind, list[dict[str, Any]]]
        for listed in (("groups", groups), ("segments", segments)):
            kind, definitions = listed
            known = await store.known_definition_ids(conn, merchant_id, kind)
            await store.upsert_definitions(conn, merchant_id, kind, definitions)
            missing = sorted(known - {d["id"] for d in definitions})
            gone[kind] = await store.tombstone_definitions(conn, merchant_id, kind, missing, now)
    if run is not None:
        run.add(groups=len(groups), segments=len(segments), groups_tombstoned=len(gone["groups"]),
                segments_tombstoned=len(gone["segments"]))
    return {"groups": sorted(d["id"] for d in groups), "segments": sorted(d["id"] for d in segments)}
