"""`square-mirror prune-history`: drop closed history rows older than a retention period."""

from __future__ import annotations

import argparse
import re
from datetime import timedelta
from typing import Final

from square_mirror.db import connect
from square_mirror.settings import Settings
from square_mirror.timefmt import utcnow

HELP = (
    "Delete ended history (customer and custom attribute versions whose valid_to, and membership periods whose "
    "left_at, is older than --older-than) in small batches, so no long lock blocks the sync. Current state is "
    "never touched."
)
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_TABLES: Final = (
    ("customer_versions_closed", "valid_to"),
    ("customer_group_membership_closed", "left_at"),
    ("customer_segment_membership_closed", "left_at"),
    ("customer_custom_attribute_versions_closed", "valid_to"),
)


def parse_age(text: str) -> timedelta:
    match = re.fullmatch(r"\s*(\d+)\s*([smhdw])\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected a duration like 365d, 12w, 48h; got {text!r}")
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--older-than", type=parse_age, required=True, help="e.g. 365d, 52w, 48h")
    parser.add_argument("--batch-size", type=int, default=5000, help="rows per delete (default 5000)")
    parser.add_argument("--merchant", help="only this merchant (default: all)")


async def prune(
    dsn: str, older_than: timedelta, *, batch_size: int = 5000, merchant: str | None = None
) -> dict[str, int]:
    cutoff = utcnow() - older_than
    removed: dict[str, int] = {}
    conn = await connect(dsn)
    try:
        for table, column in _TABLES:
            total = 0
            while True:
                # Inline on purpose, not a named query: the table and column are identifiers from _TABLES.
                deleted = await conn.fetchval(
                    f"""
                    WITH doomed AS (
                        SELECT ctid FROM square.{table}
                        WHERE {column} < $1 AND ($2::text IS NULL OR merchant_id = $2)
                        LIMIT $3
                    ), gone AS (DELETE FROM square.{table} t USING doomed d WHERE t.ctid = d.ctid RETURNING 1)
                    SELECT count(*) FROM gone
                    """,  # noqa: S608 (table and column come from the fixed list above)
                    cutoff,
                    merchant,
                    batch_size,
                )
                total += int(deleted)
                if deleted < batch_size:
                    break
            removed[table] = total
    finally:
        await conn.close()
    return removed


async def run(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    removed = await prune(settings.require_database_url(), args.older_than, batch_size=args.batch_size,
                          merchant=args.merchant)
    for table, count in removed.items():
        print(f"square.{table}: {count} closed rows removed")
    return 0
