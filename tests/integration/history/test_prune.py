from __future__ import annotations

import argparse
from datetime import timedelta

import asyncpg
import pytest

from square_mirror.commands.prune_history import parse_age, prune
from tests.factories import at, customer
from worker.store import upsert_customers

M = "MERCHANT1"


async def test_prune_removes_only_closed_rows_older_than_the_cutoff(db_dsn: str, db_pool: asyncpg.Pool) -> None:
    async with db_pool.acquire() as conn:
        for version in range(5):  # Square times in 2026-01-01, far in the past of "now"
            await upsert_customers(conn, M, [customer("A", version=version, group_ids=[f"G{version}"])], at(version))
    assert await db_pool.fetchval("SELECT count(*) FROM square.customer_versions") == 5
    removed = await prune(db_dsn, timedelta(days=1), batch_size=2)
    assert removed["customer_versions_closed"] == 4
    assert removed["customer_group_membership_closed"] == 0  # left_at is an observation time: today
    open_rows = await db_pool.fetch("SELECT version FROM square.customer_versions")
    assert [r["version"] for r in open_rows] == [4]
    assert (await prune(db_dsn, timedelta(0)))["customer_group_membership_closed"] == 4
    assert await db_pool.fetchval("SELECT count(*) FROM square.customer_group_membership_history") == 1


def test_age_parser() -> None:
    assert parse_age("365d") == timedelta(days=365)
    assert parse_age("2w") == timedelta(weeks=2)
    with pytest.raises(argparse.ArgumentTypeError):
        parse_age("a year")
