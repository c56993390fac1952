"""`square-mirror migrate`: apply the analytics schema."""

from __future__ import annotations

import argparse

from square_mirror.db import describe_schema, migrate
from square_mirror.embedded import EmbeddedPostgres
from square_mirror.settings import Settings

HELP = (
    "Apply schema.sql to DATABASE_URL. Safe to run any number of times, and concurrently. "
    "With --embedded, start a throw-away embedded Postgres instead (the quickstart)."
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--print", dest="print_schema", action="store_true", help="print the tables and views")
    parser.add_argument(
        "--embedded", action="store_true", help="migrate a temporary embedded Postgres (ignores DATABASE_URL)"
    )


async def _migrate_and_report(dsn: str, print_schema: bool) -> int:
    version = await migrate(dsn)
    print(f"schema square is at version {version}")
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
    return await _migrate_and_report(settings.require_database_url(), args.print_schema)
