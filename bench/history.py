"""What history costs on the write path, and how fast as-of queries answer.

Writes N customers in pages of 100 through worker.store.upsert_customers (the path backfill and the worker
share), then a round of updates to every customer (a new version each, like live sync), with history on and
with history off (SET square_mirror.history = 'off') in the same run, each into a fresh database. Then times
customers_as_of / group_members_as_of over the N customers.

    .venv/bin/python bench/history.py [--customers 100000]

Uses DATABASE_URL's server if set, else PostgreSQL on 127.0.0.1:5432 (needs CREATEDB).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg

from square_mirror.db import create_pool, migrate
from tests.factories import at, customer
from worker.store import upsert_customers

PAGE = 100


def _with_db(dsn: str, name: str) -> str:
    return urlsplit(dsn)._replace(path="/" + name).geturl()


async def _write(pool: asyncpg.Pool, pages: list[list[dict[str, Any]]], history: bool, when: float) -> float:
    started = time.perf_counter()

    async def one(page: list[dict[str, Any]]) -> None:
        async with pool.acquire() as conn, conn.transaction():
            if not history:
                await conn.execute("SET LOCAL square_mirror.history = 'off'")
            await upsert_customers(conn, "BENCH", page, at(when))

    sem = asyncio.Semaphore(8)

    async def bounded(page: list[dict[str, Any]]) -> None:
        async with sem:
            await one(page)

    await asyncio.gather(*(bounded(p) for p in pages))
    return time.perf_counter() - started


async def run(n: int) -> None:
    admin = os.environ.get("DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/postgres"
    ids = [f"BENCH{i:021d}" for i in range(n)]
    groups = [f"G{i}" for i in range(20)]
    created = [[customer(c, version=1, group_ids=[groups[i % 20]]) for c in ids[s : s + PAGE]]
               for i, s in enumerate(range(0, n, PAGE))]
    updated = [[customer(c, version=2, group_ids=[groups[(i + 1) % 20]]) for c in ids[s : s + PAGE]]
               for i, s in enumerate(range(0, n, PAGE))]
    results: dict[bool, tuple[float, float]] = {}
    for history in (False, True):
        name = f"sqm_bench_{uuid.uuid4().hex[:8]}"
        conn = await asyncpg.connect(admin)
        await conn.execute(f'CREATE DATABASE "{name}"')
        await conn.close()
        dsn = _with_db(admin, name)
        try:
            await migrate(dsn)
            pool = await create_pool(dsn, min_size=8, max_size=8)
            insert_s = await _write(pool, created, history, 10)
            update_s = await _write(pool, updated, history, 20)
            results[history] = (n / insert_s, n / update_s)
            if history:
                rows = await pool.fetchval("SELECT count(*) FROM square.customer_versions")
                started = time.perf_counter()
                as_of = await pool.fetchval("SELECT count(*) FROM square.customers_as_of('BENCH', now())")
                customers_s = time.perf_counter() - started
                started = time.perf_counter()
                members = await pool.fetchval("SELECT count(*) FROM square.group_members_as_of('BENCH', now())")
                groups_s = time.perf_counter() - started
                print(f"history rows: {rows} customer_versions; as-of({n} customers): customers_as_of "
                      f"{customers_s * 1000:.0f} ms ({as_of} rows), group_members_as_of {groups_s * 1000:.0f} ms "
                      f"({members} rows)")
            await pool.close()
        finally:
            conn = await asyncpg.connect(admin)
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.close()
    off, on = results[False], results[True]
    print(f"customers: {n}, pages of {PAGE}, 8 concurrent writers")
    print(f"backfill-style inserts: history off {off[0]:,.0f}/s, on {on[0]:,.0f}/s, ratio {on[0] / off[0]:.2f}")
    print(f"sync-style updates:     history off {off[1]:,.0f}/s, on {on[1]:,.0f}/s, ratio {on[1] / off[1]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--customers", type=int, default=100_000)
    args = parser.parse_args()
    asyncio.run(run(args.customers))


if __name__ == "__main__":
    main()
