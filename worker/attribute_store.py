"""Writes of customer custom attributes and their definitions, each one idempotent and version-guarded.

Webhook jobs apply the state their event carries, backfill and the reconcile lane apply what Square lists; all of
them write through these functions, so the staleness rule (``square.custom_attribute_state_wins`` in schema.sql)
holds whoever writes and in whatever order. SQL: ``worker/sql/custom_attributes.sql``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg

from square_mirror.timefmt import iso, parse_time, utcnow
from worker.queries import queries
from worker.store import Conn, transaction

Pair = tuple[str, str]  # (customer_id, key)
_VALUE_FIELDS = ("value", "version", "visibility", "created_at", "updated_at")
_DEFINITION_FIELDS = ("name", "description", "schema", "visibility", "version", "created_at", "updated_at")


def canonical_key(key: str, own_application_id: str | None) -> str:
    """The key as Square's REST API shows it to this application: event payloads may qualify even the keys this
    application owns (``{application_id}:{key}``), which its own reads show simple."""
    if own_application_id and key.startswith(own_application_id + ":"):
        return key[len(own_application_id) + 1:]
    return key


async def resolve_key(conn: Conn, merchant_id: str, key: str, own_application_id: str | None) -> str:
    """``canonical_key``, and without the application's ID: a qualified key the mirror holds no definition for,
    whose simple key it does hold (a definition only its owner sees simple), is that definition's."""
    if own_application_id or ":" not in key or key.startswith("square:"):
        return canonical_key(key, own_application_id)
    simple = key.rsplit(":", 1)[1]
    known = {r["key"] for r in await conn.fetch(queries.get("known_custom_attribute_keys"), merchant_id,
                                                [key, simple])}
    return simple if simple in known and key not in known else key


def value_row(customer_id: str, attribute: Mapping[str, Any], *, key: str | None = None,
              deleted_at: datetime | None = None) -> dict[str, Any]:
    """The write input for one value: a live state, or (``deleted_at`` set) the last state of a deleted one."""
    row: dict[str, Any] = {"customer_id": customer_id, "key": key or attribute["key"]}
    row.update({f: attribute.get(f) for f in _VALUE_FIELDS})
    row["deleted"] = deleted_at is not None
    row["deleted_at"] = iso(deleted_at) if deleted_at is not None else None
    return row


def definition_row(definition: Mapping[str, Any], *, key: str | None = None,
                   deleted_at: datetime | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {"key": key or definition["key"]}
    row.update({f: definition.get(f) for f in _DEFINITION_FIELDS})
    row["deleted"] = deleted_at is not None
    row["deleted_at"] = iso(deleted_at) if deleted_at is not None else None
    return row


_EARLIEST = datetime.min.replace(tzinfo=UTC)


def state_order(row: Mapping[str, Any]) -> tuple[datetime, int, bool]:
    """Which of two states of one value or definition is newer, as ``square.custom_attribute_state_wins`` decides
    between states with versions: the later generation (``created_at``), then the higher version, then a delete."""
    created = parse_time(row.get("created_at")) if isinstance(row.get("created_at"), str) else None
    return created or _EARLIEST, int(row.get("version") or 0), bool(row.get("deleted"))


def _one_per_pair(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One state per (customer, key), the newest (a statement may touch a row only once)."""
    best: dict[Pair, dict[str, Any]] = {}
    for row in rows:
        pair = (row["customer_id"], row["key"])
        held = best.get(pair)
        if held is None or state_order(row) >= state_order(held):
            best[pair] = row
    return [best[p] for p in sorted(best)]


async def upsert_values(conn: Conn | asyncpg.Pool, merchant_id: str, rows: Iterable[dict[str, Any]]) -> set[Pair]:
    """Write the states that win the staleness rule; returns the (customer, key) pairs written."""
    batch = _one_per_pair(rows)
    if not batch:
        return set()
    written = await conn.fetch(queries.get("upsert_custom_attributes"), merchant_id, batch)
    return {(r["customer_id"], r["key"]) for r in written}


async def replace_values(conn: Conn, merchant_id: str, listings: Mapping[str, Sequence[Mapping[str, Any]]],
                         observed_at: datetime) -> tuple[set[Pair], set[Pair]]:
    """Complete reads of these customers' values (requested at ``observed_at``): write what is listed and end
    what is no longer there. Returns (written, ended)."""
    if not listings:
        return set(), set()
    rows = [value_row(cid, a) for cid, attributes in listings.items() for a in attributes]
    async with transaction(conn):
        written = await upsert_values(conn, merchant_id, rows)
        ended = await end_values(conn, merchant_id, list(listings), observed_at,
                                 kept=[(r["customer_id"], r["key"]) for r in rows])
    return written, ended


async def end_values(conn: Conn, merchant_id: str, customer_ids: Sequence[str], deleted_at: datetime, *,
                     kept: Sequence[Pair] = (), observed_at: datetime | None = None) -> set[Pair]:
    """End these customers' live values except ``kept``: a read showed them gone, or the customer is gone."""
    if not customer_ids:
        return set()
    rows = await conn.fetch(queries.get("end_custom_attributes"), merchant_id, sorted(set(customer_ids)),
                            [p[0] for p in kept], [p[1] for p in kept], deleted_at, observed_at or deleted_at)
    return {(r["customer_id"], r["key"]) for r in rows}


async def upsert_definitions(conn: Conn, merchant_id: str, rows: Iterable[dict[str, Any]]) -> set[str]:
    """Write the definition states that win; a deleted definition's values end with it. Returns the keys written."""
    unique: dict[str, dict[str, Any]] = {}
    for row in rows:
        held = unique.get(row["key"])
        if held is None or state_order(row) >= state_order(held):
            unique[row["key"]] = row
    if not unique:
        return set()
    async with transaction(conn):
        written = await conn.fetch(queries.get("upsert_custom_attribute_definitions"), merchant_id,
                                   [unique[k] for k in sorted(unique)])
        deleted = [r["key"] for r in written if r["deleted"]]
        if deleted:
            await conn.fetchval(queries.get("end_custom_attributes_of_keys"), merchant_id, deleted, utcnow())
    return {r["key"] for r in written}


async def replace_definitions(conn: Conn, merchant_id: str, definitions: Sequence[Mapping[str, Any]],
                              observed_at: datetime) -> tuple[set[str], set[str]]:
    """A complete listing (begun at ``observed_at``): write it, end the definitions it no longer shows and their
    values. Returns (written, ended)."""
    async with transaction(conn):
        written = await upsert_definitions(conn, merchant_id, [definition_row(d) for d in definitions])
        ended = {r["key"] for r in await conn.fetch(queries.get("end_custom_attribute_definitions"), merchant_id,
                                                    sorted({d["key"] for d in definitions}), observed_at)}
        if ended:
            await conn.fetchval(queries.get("end_custom_attributes_of_keys"), merchant_id, sorted(ended),
                                observed_at)
    return written, ended


async def value_holders(conn: Conn | asyncpg.Pool, merchant_id: str) -> list[str]:
    """Every customer holding a live value in the mirror, whether or not the mirror has the customer (live or not)."""
    return [r["customer_id"] for r in await conn.fetch(queries.get("custom_attribute_holders"), merchant_id)]
