"""`square-mirror migrate`: apply the analytics schema."""

from __future__ import annotations

import argparse
import asyncio
from typing import Final

from square_mirror.db import connect, describe_schema, migrate, publication_status
from square_mirror.embedded import EmbeddedPostgres
from square_mirror.searchable_events import ensure_enabled
from square_mirror.settings import Settings
from square_mirror.square_api import RetryPolicy, SquareClient, SquareError
from square_mirror.tokens import TokenSource

ENABLE_EVENTS_BUDGET_SECONDS: Final = 30.0  # the workers enable the rest (at a seller's first event, backfill or lane)

HELP = (
    "Apply schema.sql to DATABASE_URL. Safe to run any number of times, and concurrently. "
    "With --embedded, start a throw-away embedded Postgres instead (the quickstart)."
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--print", dest="print_schema", action="store_true", help="print the tables and views")
    parser.add_argument(
        "--embedded", action="store_true", help="migrate a temporary embedded Postgres (ignores DATABASE_URL)"
    )


async def _migrate_and_report(dsn: str, print_schema: bool, settings: Settings | None = None) -> int:
    version = await migrate(dsn)
    print(f"schema square is at version {version}")
    print((await publication_status(dsn)).describe())
    if settings is not None:
        await _enable_events(dsn, settings)
    if print_schema:
        for kind, name, columns in await describe_schema(dsn):
            print(f"{kind:5} square.{name}({', '.join(columns)})")
    return 0


async def run(args: argparse.Namespace) -> int:
    if args.embedded:
        with EmbeddedPostgres() as pg:
            dsn = pg.start()
            print("embedded Postgres started (removed on exit)")
            return await _migrate_and_report(dsn, args.print_schema)
    settings = Settings.from_env()
    return await _migrate_and_report(settings.require_database_url(), args.print_schema, settings)


async def _enable_events(dsn: str, settings: Settings) -> None:
    """Make every configured seller's events searchable as early as possible (square_mirror.searchable_events).

    Best effort: migrate never fails because Square cannot be reached; the workers enable them later.
    """
    tokens = TokenSource.from_settings(settings)
    merchants = tokens.merchants()
    if not merchants and not tokens.has_single_token:
        return
    conn = await connect(dsn)
    try:
        async with SquareClient.from_settings(settings, tokens=tokens, timeout=10.0,
                                              retry=RetryPolicy(attempts=2, deadline=20.0)) as client:
            if not merchants and settings.square_access_token is not None:
                try:
                    merchants = [await client.retrieve_own_merchant_id(settings.square_access_token.reveal())]
                except SquareError as exc:
                    print(f"events: not enabled yet (RetrieveMerchant: {type(exc).__name__}); the workers will")
                    return
            left = list(merchants)
            try:  # bounded: a deploy never waits long on an unreachable Square
                async with asyncio.timeout(ENABLE_EVENTS_BUDGET_SECONDS):
                    while left:
                        enabled = await ensure_enabled(conn, client, left[0])
                        print(f"events for {left.pop(0)}: "
                              f"{'searchable' if enabled else 'not enabled yet (see status)'}")
            except TimeoutError:
                print(f"events: {len(left)} sellers not enabled yet (Square slow or unreachable); the workers will")
    finally:
        await conn.close()
