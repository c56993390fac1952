"""History tables are maintained by triggers in schema.sql, whoever writes through worker.store."""

from __future__ import annotations

import itertools
from datetime import timedelta

import asyncpg

from tests.factories import at, customer
from worker.store import apply_merge, replace_segment_members, tombstone_customers, upsert_customers

M = "MERCHANT1"


async def _versions(pool: asyncpg.Pool, cid: str) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT version, valid_from, valid_to, given_name, closed_reason FROM square.customer_versions"
        " WHERE merchant_id=$1 AND customer_id=$2 ORDER BY history_id", M, cid)


async def test_each_distinct_state_is_one_row_in_version_order_without_gaps(db_pool: asyncpg.Pool) -> None:
    async with db_pool.acquire() as conn:
        for version in (0, 1, 1, 3, 2, 3):  # duplicates and a late, older snapshot
            await upsert_customers(conn, M, [customer("A", version=version)], at(version * 10))
    rows = await _versions(db_pool, "A")
    assert [r["version"] for r in rows] == [0, 1, 3]
    for earlier, later in itertools.pairwise(rows):
        assert earlier["valid_to"] == later["valid_from"]
        assert earlier["closed_reason"] == "superseded"
    assert rows[-1]["valid_to"] is None
    # valid_from is Square's updated_at for the version (tests.factories: BASE + version minutes)
    assert rows[1]["valid_from"] == rows[0]["valid_from"] + timedelta(minutes=1)


async def test_replays_and_unchanged_pages_add_no_rows(db_pool: asyncpg.Pool) -> None:
    snapshot = customer("A", version=2, group_ids=["G1"], segment_ids=["S1"])
    async with db_pool.acquire() as conn:
        await upsert_customers(conn, M, [snapshot], at(1))
        await upsert_customers(conn, M, [snapshot], at(2))  # same state observed later (backfill page)
        await upsert_customers(conn, M, [snapshot], at(3))
    assert len(await _versions(db_pool, "A")) == 1
    assert await db_pool.fetchval("SELECT count(*) FROM square.customer_group_membership_history") == 1
    assert await db_pool.fetchval("SELECT count(*) FROM square.customer_segment_membership_history") == 1


async def test_delete_and_merge_close_the_open_row(db_pool: asyncpg.Pool) -> None:
    async with db_pool.acquire() as conn:
        await upsert_customers(conn, M, [customer("A", version=1), customer("B", version=1)], at(1))
        await tombstone_customers(conn, M, ["A"], at(3600))
        await apply_merge(conn, M, ["B"], "C", at(7200), source="webhook")
        await upsert_customers(conn, M, [customer("C", version=5)], at(7200))  # Square time: 5 min
    a, b = (await _versions(db_pool, "A"))[-1], (await _versions(db_pool, "B"))[-1]
    assert (a["valid_to"], a["closed_reason"]) == (at(3600), "deleted")
    assert (b["valid_to"], b["closed_reason"]) == (at(7200), "merged")
    resolved = await db_pool.fetch(
        "SELECT customer_id, current_customer_id FROM square.customers_as_of($1, $2)", M, at(60))
    assert {(r["customer_id"], r["current_customer_id"]) for r in resolved} == {("A", None), ("B", "C")}


async def test_membership_history_and_as_of_queries(db_pool: asyncpg.Pool) -> None:
    async with db_pool.acquire() as conn:
        await upsert_customers(conn, M, [customer("A", version=1, group_ids=["G1"])], at(0))
        before_leave = await conn.fetchval("SELECT now()")
        await upsert_customers(conn, M, [customer("A", version=2)], at(10))
        await upsert_customers(conn, M, [customer("B", version=1)], at(0))
        await replace_segment_members(conn, M, "S1", ["B"], at(20))
    groups_then = await db_pool.fetch("SELECT customer_id FROM square.group_members_as_of($1, $2)", M, before_leave)
    groups_now = await db_pool.fetch("SELECT customer_id FROM square.group_members_as_of($1, now())", M)
    assert [r["customer_id"] for r in groups_then] == ["A"]
    assert groups_now == []
    segment_now = await db_pool.fetch("SELECT customer_id FROM square.segment_members_as_of($1, now())", M)
    assert [r["customer_id"] for r in segment_now] == ["B"]
    sizes = await db_pool.fetch("SELECT segment_id, members FROM square.segment_sizes_daily WHERE merchant_id=$1", M)
    assert [(r["segment_id"], r["members"]) for r in sizes][-1] == ("S1", 1)


async def test_history_can_be_turned_off_per_session(db_pool: asyncpg.Pool) -> None:
    async with db_pool.acquire() as conn:
        await conn.execute("SET square_mirror.history = 'off'")
        await upsert_customers(conn, M, [customer("A", version=1, group_ids=["G1"])], at(0))
        await upsert_customers(conn, M, [customer("A", version=2)], at(1))
        await conn.execute("RESET square_mirror.history")
    assert [r["version"] for r in await _versions(db_pool, "A")] == [2]  # only the current state
    assert await db_pool.fetchval("SELECT count(*) FROM square.customer_group_membership_history") == 0


async def test_a_first_write_stores_nothing_apart_from_the_current_state(db_pool: asyncpg.Pool) -> None:
    async with db_pool.acquire() as conn:
        await upsert_customers(conn, M, [customer("A", version=1, group_ids=["G1"], segment_ids=["S1"])], at(0))
    for table in ("customer_versions_closed", "customer_group_membership_closed",
                  "customer_segment_membership_closed"):
        assert await db_pool.fetchval(f"SELECT count(*) FROM square.{table}") == 0  # noqa: S608
    (row,) = await _versions(db_pool, "A")
    assert (row["version"], row["valid_to"], row["closed_reason"]) == (1, None, None)
