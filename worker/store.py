"""Every write the worker, backfill and reconcile make to the mirror, each one idempotent and version-guarded.

The SQL lives in ``worker/sql/*.sql``, read by name through :mod:`worker.queries`. Webhook jobs, backfill pages
and reconcile lanes all write through these functions, so the staleness rule (``square.customer_snapshot_wins``
in schema.sql) and the merge rule (:func:`apply_merge`) hold whoever writes and whatever the interleaving of
workers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from square_mirror import searchable_events
from square_mirror.timefmt import utcnow
from worker.queries import queries

# A plain connection or one borrowed from a pool; every function runs in the caller's transaction.
Conn = asyncpg.Connection | PoolConnectionProxy
DefinitionKind = Literal["groups", "segments"]


def latest_per_id(customers: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """One snapshot per customer ID (the highest version): a statement may touch a row only once."""
    best: dict[str, Mapping[str, Any]] = {}
    for customer in customers:
        cid = customer.get("id")
        if not isinstance(cid, str) or not cid:
            continue
        held = best.get(cid)
        if held is None or int(customer.get("version") or 0) >= int(held.get("version") or 0):
            best[cid] = customer
    return [best[k] for k in sorted(best)]


async def upsert_customers(
    conn: Conn, merchant_id: str, customers: Sequence[Mapping[str, Any]], observed_at: datetime, *,
    listed: bool = False,
) -> set[str]:
    """Write full snapshots where they win the staleness rule; returns the IDs actually written.

    ``listed``: the snapshots come from a ListCustomers/SearchCustomers answer, which is what tells the absence
    rule (``square.customer_is_hidden``) that Square lists these profiles.
    """
    batch = latest_per_id(customers)
    if not batch:
        return set()
    async with transaction(conn):
        rows = await conn.fetch(queries.get("upsert_customers"), merchant_id, batch, observed_at, listed)
        if rows:
            await conn.execute(queries.get("replace_memberships"), merchant_id, *_membership_arguments(rows),
                               observed_at)
    return {r["id"] for r in rows}


def _membership_arguments(rows: Sequence[asyncpg.Record]) -> list[list[str]]:
    """replace_memberships.sql's $2..$10: the updated rows' IDs, then (customer, group) and (customer, segment)
    pairs of the updated and of the new rows, each pair list as two parallel arrays."""
    updated: list[str] = []
    groups: dict[bool, tuple[list[str], list[str]]] = {True: ([], []), False: ([], [])}
    segments: dict[bool, tuple[list[str], list[str]]] = {True: ([], []), False: ([], [])}
    for row in rows:
        cid, existed = row["id"], row["updated"]
        if existed:
            updated.append(cid)
        for pairs, ids in ((groups[existed], row["group_ids"]), (segments[existed], row["segment_ids"])):
            pairs[0].extend([cid] * len(ids))
            pairs[1].extend(ids)
    return [updated, *groups[True], *groups[False], *segments[True], *segments[False]]


def transaction(conn: Conn) -> contextlib.AbstractAsyncContextManager[Any]:
    """The caller's transaction, or a new one: some writes are two statements that must commit together."""
    return contextlib.nullcontext() if conn.is_in_transaction() else conn.transaction()


async def tombstone_customers(
    conn: Conn,
    merchant_id: str,
    customer_ids: Sequence[str],
    deleted_at: datetime,
    *,
    merged_into: str | None = None,
    version: int | None = None,
    stated: bool = False,
) -> set[str]:
    """Mark customers deleted (or merged away); returns the IDs whose tombstone is new or changed.

    ``stated``: ``deleted_at`` is the time Square gave this delete (a customer.deleted event's created_at), which
    replaces a time the mirror observed (a 404 or a redirect, ``stated=False``); ``version`` is the last version
    Square gave the profile, when known. So the tombstone ends the same whichever the mirror learned first
    (the rule is worker/sql/tombstone_customers.sql).
    """
    ids = sorted({c for c in customer_ids if c and c != merged_into})
    if not ids:
        return set()
    async with transaction(conn):
        rows = await conn.fetch(queries.get("tombstone_customers"), merchant_id, ids, deleted_at, merged_into, version,
                                stated)
        await conn.execute(queries.get("drop_memberships"), merchant_id, ids)
        # A gone customer's custom attribute values go with it (the sources of a merge too: what Square does with
        # them is not documented, so the merge target's are read again rather than guessed).
        await conn.fetch(queries.get("end_custom_attributes"), merchant_id, ids, [], [], deleted_at, utcnow())
    return {r["id"] for r in rows}


@dataclass(frozen=True, slots=True)
class MergeResult:
    recorded: set[str]
    tombstoned: set[str]


class MergeSource(StrEnum):
    """How the mirror learned a merge's lineage (``square.customer_merges.source``, whose CHECK constraint in
    schema.sql lists exactly these values; the SQL files' stated sources are compared by
    tests/test_architecture.py)."""

    WEBHOOK = "webhook"  # stated: event_context.merge of a delivered event (also one replayed through the worker)
    EVENTS_API = "events_api"  # stated: event_context.merge of an event replayed by ID, without the worker
    RETRIEVE = "retrieve"  # inferred: RetrieveCustomer answered with another ID

    @property
    def stated(self) -> bool:
        return self is not MergeSource.RETRIEVE


async def apply_merge(
    conn: Conn,
    merchant_id: str,
    from_customer_ids: Sequence[str],
    to_customer_id: str,
    merged_at: datetime,
    *,
    source: MergeSource | str,
    event_id: str | None = None,
) -> MergeResult:
    """The merge rule: record from -> to lineage and tombstone every merged-away ID with merged_into.

    Square states a merge's lineage on every one of its events (the target's customer.created and each
    source's customer.deleted, ``source='webhook'`` or ``'events_api'``), each with its own event ID and time;
    a RetrieveCustomer redirect (``'retrieve'``) only infers it, at a time the mirror observed, and names the
    end of a merge chain (A -> C -> E answers E for A). Whatever the order they arrive in, the lineage row and
    the tombstones end the same (worker/sql/record_merges.sql):
    - a stated lineage replaces an inferred one, tombstone link included;
    - between stated ones the earliest event wins (least ``merged_at``, then event ID), not the first to arrive;
    - an inferred lineage never replaces anything;
    - a source's tombstone is dated by its merge's ``merged_at`` (worker/sql/link_merged_tombstones.sql), and its
      version is raised to the one Square gave the deleted profile by the caller (from its customer.deleted).
    So replaying any merge event, or learning the same merge from a redirect, changes nothing once the
    earliest event has been applied. The target is never tombstoned here; syncing its profile is the caller's
    next step.
    """
    source = MergeSource(source)  # the one vocabulary: an unknown source is refused here, and by the CHECK
    sources = sorted({f for f in from_customer_ids if f and f != to_customer_id})
    if not sources:
        return MergeResult(set(), set())
    rows = await conn.fetch(
        queries.get("record_merges"), merchant_id, sources, to_customer_id, merged_at, source, event_id
    )
    recorded = {r["from_customer_id"] for r in rows}
    tombstoned = await tombstone_customers(conn, merchant_id, sources, merged_at, merged_into=to_customer_id)
    if source.stated:
        linked = await conn.fetch(queries.get("link_merged_tombstones"), merchant_id, sources)
        tombstoned |= {r["id"] for r in linked}
    return MergeResult(recorded, tombstoned)


async def upsert_definitions(
    conn: Conn, merchant_id: str, kind: DefinitionKind, definitions: Sequence[Mapping[str, Any]]
) -> set[str]:
    unique = {d["id"]: d for d in definitions if isinstance(d.get("id"), str)}
    if not unique:
        return set()
    rows = await conn.fetch(queries.get("upsert_definitions", kind), merchant_id, [unique[k] for k in sorted(unique)])
    return {r["id"] for r in rows}


async def tombstone_definitions(
    conn: Conn, merchant_id: str, kind: DefinitionKind, ids: Sequence[str], deleted_at: datetime
) -> set[str]:
    if not ids:
        return set()
    rows = await conn.fetch(queries.get("tombstone_definitions", kind), merchant_id, sorted(set(ids)), deleted_at)
    return {r["id"] for r in rows}


@dataclass(frozen=True, slots=True)
class SegmentDiff:
    removed: int
    added: int
    unknown: list[str]  # members the mirror has no customer row for yet: the caller syncs them


async def replace_segment_members(
    conn: Conn, merchant_id: str, segment_id: str, member_ids: Sequence[str], observed_at: datetime
) -> SegmentDiff:
    members = sorted(set(member_ids))
    async with transaction(conn):
        await conn.execute(queries.get("lock_segment_customers"), merchant_id, segment_id, members)
        await mark_listed(conn, merchant_id, members, observed_at)  # they were in a search answer
        row = await conn.fetchrow(queries.get("replace_segment_members"), merchant_id, segment_id, members, observed_at)
    assert row is not None
    return SegmentDiff(int(row["removed"]), int(row["added"]), list(row["unknown"]))


async def mark_listed(conn: Conn | asyncpg.Pool, merchant_id: str, customer_ids: Sequence[str],
                      listed_at: datetime) -> None:
    """Customers a search answer named (a segment's or group's members) are listed: the absence rule may apply."""
    if customer_ids:
        await conn.execute(queries.get("mark_listed"), merchant_id, sorted(set(customer_ids)), listed_at)


async def hidden_customers(conn: Conn | asyncpg.Pool, merchant_id: str, observed_before: datetime) -> list[str]:
    """Live customers the absence rule calls hidden, not observed since ``observed_before``: read them by ID."""
    rows = await conn.fetch(queries.get("hidden_customers"), merchant_id, observed_before)
    return [r["id"] for r in rows]


async def known_definition_ids(conn: Conn, merchant_id: str, kind: DefinitionKind) -> set[str]:
    rows = await conn.fetch(queries.get("definition_ids", kind), merchant_id)
    return {r["id"] for r in rows}


@dataclass(frozen=True, slots=True)
class StoredCustomer:
    version: int
    deleted: bool
    merged_into: str | None


async def stored_customers(
    conn: Conn | asyncpg.Pool, merchant_id: str, customer_ids: Sequence[str]
) -> dict[str, StoredCustomer]:
    rows = await conn.fetch(
        queries.get("stored_customers"),
        merchant_id,
        list(customer_ids),
    )
    return {r["id"]: StoredCustomer(r["version"], r["deleted"], r["merged_into"]) for r in rows}


async def set_merchant_auth(
    conn: Conn | asyncpg.Pool, merchant_id: str, *, ok: bool, error: str | None = None
) -> None:
    """Record whether the merchant's token works; status and metrics read it, a replaced token clears it."""
    status = "ok" if ok else "unauthorized"
    await conn.execute(
        queries.get("set_merchant_auth"),
        merchant_id,
        status,
        error,
    )


async def ensure_merchant(conn: Conn | asyncpg.Pool, merchant_id: str) -> bool:
    """Record the merchant; True when its events need no early pass (enabled, or refused: the events lane's own
    pass tries again; square_mirror.searchable_events)."""
    await conn.execute(queries.get("ensure_merchant"), merchant_id)
    return await searchable_events.enablement_settled(conn, merchant_id)
