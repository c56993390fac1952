"""Rows of one seller in every table that holds sellers' rows (what a purge must remove)."""

from __future__ import annotations

import asyncpg

SEED_STATEMENTS = (
    "INSERT INTO square.merchants (merchant_id) VALUES ($1)",
    "INSERT INTO square.customers (merchant_id, id, version, given_name) VALUES ($1, 'C1', 1, 'Ada'), "
    "($1, 'C2', 1, 'Grace')",
    "INSERT INTO square.customer_groups (merchant_id, id, name) VALUES ($1, 'G1', 'VIP')",
    "INSERT INTO square.customer_segments (merchant_id, id, name) VALUES ($1, 'S1', 'Regulars')",
    "INSERT INTO square.customer_group_members (merchant_id, group_id, customer_id) VALUES ($1, 'G1', 'C1'), "
    "($1, 'G1', 'C2')",
    "INSERT INTO square.customer_segment_members (merchant_id, segment_id, customer_id) VALUES ($1, 'S1', 'C1')",
    "INSERT INTO square.customer_merges (merchant_id, from_customer_id, to_customer_id, source) "
    "VALUES ($1, 'C0', 'C1', 'webhook')",
    "INSERT INTO square.webhook_events (merchant_id, event_id, type, processed_at) "
    "VALUES ($1, $1 || '-e1', 'customer.updated', now())",
    "INSERT INTO square.sync_runs (merchant_id, kind, status, finished_at) VALUES ($1, 'backfill', 'succeeded', now())",
    "INSERT INTO square.sync_state (merchant_id, lane) VALUES ($1, 'incremental')",
    "INSERT INTO square.lane_budgets (merchant_id, planned_at, need_rps, affordable) VALUES ($1, now(), 0.5, true)",
    "INSERT INTO square.customer_custom_attribute_definitions (merchant_id, key, name) VALUES ($1, 'drink', 'Drink')",
    "INSERT INTO square.customer_custom_attributes (merchant_id, customer_id, key, value, version) "
    "VALUES ($1, 'C1', 'drink', '\"tea\"', 1)",
    "INSERT INTO square.customer_versions_closed (merchant_id, customer_id, version, valid_from, valid_to, "
    "observed_at, closed_reason) VALUES ($1, 'C1', 0, now() - interval '2 days', now() - interval '1 day', now(), "
    "'superseded')",
    "INSERT INTO square.customer_group_membership_closed (merchant_id, group_id, customer_id, joined_at, left_at) "
    "VALUES ($1, 'G0', 'C1', now() - interval '2 days', now() - interval '1 day')",
    "INSERT INTO square.customer_segment_membership_closed (merchant_id, segment_id, customer_id, joined_at, left_at) "
    "VALUES ($1, 'S0', 'C1', now() - interval '2 days', now() - interval '1 day')",
    "INSERT INTO square.customer_custom_attribute_versions_closed (merchant_id, customer_id, key, value, version, "
    "valid_from, valid_to, closed_reason) VALUES ($1, 'C1', 'drink', '\"coffee\"', 0, now() - interval '2 days', "
    "now() - interval '1 day', 'superseded')",
    "INSERT INTO square_private.seller_credentials (merchant_id, access_token) VALUES ($1, 'not-a-real-ciphertext')",
)


async def seed_seller(conn: asyncpg.Connection, merchant_id: str) -> None:
    for statement in SEED_STATEMENTS:
        await conn.execute(statement, merchant_id)


async def rows_per_table(conn: asyncpg.Connection, merchant_id: str, tables: list[str]) -> dict[str, int]:
    counts = {}
    for table in tables:
        schema, name = table.split(".")
        counts[table] = await conn.fetchval(
            f'SELECT count(*) FROM "{schema}"."{name}" WHERE merchant_id = $1', merchant_id)  # noqa: S608
    return counts
