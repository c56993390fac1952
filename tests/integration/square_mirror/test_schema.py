from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from square_mirror.db import SCHEMA_VERSION, connect, migrate
from tests.factories import at, customer, stored_customer
from worker.store import upsert_customers

TABLES = {
    "schema_version", "merchants", "customers", "customer_groups", "customer_segments",
    "customer_group_members", "customer_segment_members", "customer_merges", "webhook_events", "sync_runs",
    "sync_state", "customer_custom_attribute_definitions", "customer_custom_attributes",
    "customer_custom_attribute_versions_closed",
}
VIEWS = {"customers_current", "customer_id_resolution", "customer_group_memberships", "customer_segment_memberships",
         "customer_custom_attributes_typed", "customer_custom_attribute_versions"}


async def test_schema_applies_twice_and_creates_every_table_view_and_the_reader_role(db_dsn: str) -> None:
    assert await migrate(db_dsn) == SCHEMA_VERSION
    assert await migrate(db_dsn) == SCHEMA_VERSION
    conn = await connect(db_dsn)
    try:
        tables = {r[0] for r in await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema='square' AND table_type='BASE TABLE'")}
        views = {r[0] for r in await conn.fetch(
            "SELECT table_name FROM information_schema.views WHERE table_schema='square'")}
        assert tables >= TABLES
        assert views >= VIEWS
        versions = await conn.fetchval("SELECT array_agg(version ORDER BY version) FROM square.schema_version")
        assert versions == list(range(1, SCHEMA_VERSION + 1))
        assert await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = 'square_mirror_reader'") == 1
        assert await conn.fetchval(
            "SELECT has_table_privilege('square_mirror_reader', 'square.customers', 'SELECT')")
        assert not await conn.fetchval(
            "SELECT has_table_privilege('square_mirror_reader', 'square.customers', 'INSERT')")
    finally:
        await conn.close()


async def test_every_primary_key_starts_with_merchant_id(db_pool: asyncpg.Pool) -> None:
    rows = await db_pool.fetch(
        """
        SELECT c.relname AS table_name, a.attname AS first_column
        FROM pg_index i
        JOIN pg_class c ON c.oid = i.indrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = i.indkey[0]
        WHERE i.indisprimary AND n.nspname = 'square' AND c.relname NOT IN ('schema_version')
        """
    )
    assert rows, "no primary keys found"
    assert {r["table_name"]: r["first_column"] for r in rows} == {r["table_name"]: "merchant_id" for r in rows}


async def test_id_resolution_follows_merge_chains_of_any_length(db_pool: asyncpg.Pool) -> None:
    # A+B -> C, C+D -> E, E -> F (three hops for A); G deleted plainly.
    for cid, into in (("A", "C"), ("B", "C"), ("C", "E"), ("D", "E"), ("E", "F")):
        await stored_customer(db_pool, cid, deleted=True, merged_into=into)
        await db_pool.execute(
            "INSERT INTO square.customer_merges (merchant_id, from_customer_id, to_customer_id) VALUES ('M', $1, $2)",
            cid, into,
        )
    await stored_customer(db_pool, "F")
    await stored_customer(db_pool, "G", deleted=True)
    rows = await db_pool.fetch(
        "SELECT customer_id, current_customer_id, merge_depth FROM square.customer_id_resolution WHERE merchant_id='M'")
    resolved = {r["customer_id"]: (r["current_customer_id"], r["merge_depth"]) for r in rows}
    assert resolved["A"] == ("F", 3)
    assert resolved["D"] == ("F", 2)
    assert resolved["F"] == ("F", 0)
    assert resolved["G"] == (None, 0)
    live = await db_pool.fetch("SELECT id FROM square.customers_current WHERE merchant_id='M'")
    assert [r["id"] for r in live] == ["F"]


async def test_membership_views_carry_names(db_pool: asyncpg.Pool) -> None:
    await db_pool.execute("INSERT INTO square.customer_groups (merchant_id, id, name) VALUES ('M','G1','VIP')")
    await db_pool.execute("INSERT INTO square.customer_segments (merchant_id, id, name) VALUES ('M','S1','Lunch')")
    await db_pool.execute(
        "INSERT INTO square.customer_group_members (merchant_id, group_id, customer_id) VALUES ('M','G1','C')")
    await db_pool.execute(
        "INSERT INTO square.customer_segment_members (merchant_id, segment_id, customer_id) VALUES ('M','S1','C')")
    assert await db_pool.fetchval("SELECT group_name FROM square.customer_group_memberships") == "VIP"
    assert await db_pool.fetchval("SELECT segment_name FROM square.customer_segment_memberships") == "Lunch"


async def test_outcome_column_rejects_unknown_values(db_pool: asyncpg.Pool) -> None:
    with pytest.raises(asyncpg.CheckViolationError):
        await db_pool.execute(
            "INSERT INTO square.webhook_events (merchant_id, event_id, type, outcome) VALUES ('M','E','t','great')")


async def test_upgrade_from_schema_1_keeps_every_history_row_and_keeps_recording(db_dsn: str) -> None:
    conn = await connect(db_dsn)
    try:
        await conn.execute("DROP SCHEMA square CASCADE")
        await conn.execute((Path(__file__).parents[2] / "data" / "schema_v1.sql").read_text())
        # Today's write path needs version 3's column; migrate's own ADD COLUMN then finds it there.
        await conn.execute("ALTER TABLE square.customers ADD COLUMN listed_at timestamptz")
        await upsert_customers(conn, "M", [customer("A", version=1, group_ids=["G1"])], at(0))
        await upsert_customers(conn, "M", [customer("A", version=2, group_ids=["G2"])], at(60))
        query_versions = ("SELECT version, valid_from, valid_to, closed_reason FROM square.customer_versions"
                          " ORDER BY version")
        query_groups = ("SELECT group_id, joined_at, left_at FROM square.customer_group_membership_history"
                        " ORDER BY group_id")
        before = (await conn.fetch(query_versions), await conn.fetch(query_groups))
        assert [r["version"] for r in before[0]] == [1, 2] and len(before[1]) == 2

        assert await migrate(db_dsn) == SCHEMA_VERSION
        assert (await conn.fetch(query_versions), await conn.fetch(query_groups)) == before
        # Rows written before version 3 with a public field count as listed, so the first segments pass does not
        # read the whole directory by ID.
        assert await conn.fetchval("SELECT listed_at IS NOT NULL FROM square.customers WHERE id = 'A'")
        assert await conn.fetchval("SELECT count(*) FROM square.customer_versions_closed") == 1  # open rows derived
        await upsert_customers(conn, "M", [customer("A", version=3)], at(120))
        assert [r["version"] for r in await conn.fetch(query_versions)] == [1, 2, 3]
        assert await conn.fetchval("SELECT count(*) FROM square.customer_group_membership_closed") == 2
        assert await migrate(db_dsn) == SCHEMA_VERSION  # and the upgraded schema re-applies cleanly
    finally:
        await conn.close()


async def test_an_upgrade_that_fails_leaves_the_old_database_untouched(db_dsn: str) -> None:
    conn = await connect(db_dsn)
    try:
        await conn.execute("DROP SCHEMA square CASCADE")
        await conn.execute((Path(__file__).parents[2] / "data" / "schema_v1.sql").read_text())
        # A v1 database holding a function schema.sql cannot replace: the upgrade fails after its steps ran.
        await conn.execute("CREATE FUNCTION square.customer_is_hidden(text, text, text, text, text, timestamptz)"
                           " RETURNS integer LANGUAGE sql AS 'SELECT 1'")
        tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'square' ORDER BY 1")
        with pytest.raises(asyncpg.PostgresError):
            await migrate(db_dsn)
        assert await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'square' ORDER BY 1") == tables
        assert await conn.fetchval("SELECT max(version) FROM square.schema_version") == 1
        assert not await conn.fetchval("SELECT count(*) FROM information_schema.columns WHERE table_schema = 'square'"
                                       " AND column_name = 'listed_at'")
    finally:
        await conn.close()


async def test_upgrade_to_4_checks_merge_sources_and_keeps_older_rows_that_name_another(db_dsn: str) -> None:
    await migrate(db_dsn)
    conn = await connect(db_dsn)
    try:  # a version-3 database holding a lineage row from a source the vocabulary no longer has
        await conn.execute("ALTER TABLE square.customer_merges DROP CONSTRAINT customer_merges_source_check")
        await conn.execute("DELETE FROM square.schema_version WHERE version >= 4")
        await conn.execute("INSERT INTO square.customer_merges (merchant_id, from_customer_id, to_customer_id, source)"
                           " VALUES ('M', 'A', 'B', 'backfill')")
        assert await migrate(db_dsn) == SCHEMA_VERSION
        valid = await conn.fetchval(
            "SELECT convalidated FROM pg_constraint WHERE conname = 'customer_merges_source_check'")
        assert valid is False and await conn.fetchval("SELECT count(*) FROM square.customer_merges") == 1
        with pytest.raises(asyncpg.CheckViolationError):  # new rows are checked all the same
            await conn.execute("INSERT INTO square.customer_merges (merchant_id, from_customer_id, to_customer_id,"
                               " source) VALUES ('M', 'C', 'B', 'backfill')")
    finally:
        await conn.close()
