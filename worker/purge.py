"""Purging one seller: every row of it, from every table of schemas ``square`` and ``square_private``.

The tables come from the catalog (every table with a ``merchant_id`` column; square_mirror/sql/sellers.sql,
``seller_tables``), so a table added later is never forgotten. Rows go in batches, each its own short statement
and transaction (like ``square-mirror prune-history``), so no long lock blocks the sync of the other sellers.

Deleting memberships writes their closed history (a trigger), so passes over every table repeat until one finds
nothing left: the history a delete wrote is removed by the next pass.
"""

from __future__ import annotations

from typing import Final

import asyncpg

from worker.queries import queries

DEFAULT_BATCH_SIZE: Final = 5000
MAX_PASSES: Final = 10


async def seller_tables(conn: asyncpg.Connection) -> list[str]:
    """``schema.table`` of every table that holds sellers' rows."""
    return [f"{r['schema_name']}.{r['table_name']}" for r in await conn.fetch(queries.get("seller_tables"))]


async def purge_seller(conn: asyncpg.Connection, merchant_id: str, *,
                       batch_size: int = DEFAULT_BATCH_SIZE) -> dict[str, int]:
    """Delete every row of ``merchant_id``; returns the rows removed per ``schema.table`` (every table listed)."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    tables = await seller_tables(conn)
    removed = dict.fromkeys(tables, 0)
    for _ in range(MAX_PASSES):
        this_pass = 0
        for table in tables:
            schema, name = table.split(".", 1)
            while True:
                deleted = int(await conn.fetchval(queries.get("purge_seller_batch"), schema, name, merchant_id,
                                                  batch_size))
                removed[table] += deleted
                this_pass += deleted
                if deleted < batch_size:
                    break
        if this_pass == 0:
            break
    return removed
