"""Postgres access shared by every process: pool creation, JSON codecs and the migration."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final

import asyncpg
import orjson

from square_mirror.queries import queries

SCHEMA_VERSION: Final = 8
# Arbitrary constant: serialises concurrent `migrate` runs against one database.
_MIGRATE_LOCK_KEY: Final = 0x5371_4D69
# Re-plan every execution: a generic plan cached while the tables were small keeps scanning whole tables
# once they have grown (the membership deletes of the upsert, the history triggers' probes). Planning the
# upsert costs a fraction of a millisecond; a stale whole-table scan costs tens.
SERVER_SETTINGS: Final = {"plan_cache_mode": "force_custom_plan"}


class DatabaseUnavailable(RuntimeError):
    """DATABASE_URL is set but the server cannot be reached; never silently replaced by a fallback."""


def _sql_file(name: str) -> str:
    """A file of the schema's SQL (schema.sql, migrations/NNNN_*.sql) from the installed wheel, or from the source
    tree in a development checkout."""
    packaged = resources.files("square_mirror").joinpath(f"sql/{name}")
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    return (Path(__file__).resolve().parent.parent / name).read_text(encoding="utf-8")


def schema_sql() -> str:
    """The current schema: idempotent for a new database or one at the current version."""
    return _sql_file("schema.sql")


def migrations() -> list[tuple[int, str]]:
    """(version, SQL) of every upgrade step, oldest first: what a database below that version needs before
    schema.sql applies (renames, new columns, data moves)."""
    packaged = resources.files("square_mirror").joinpath("sql/migrations")
    folder = packaged if packaged.is_dir() else Path(__file__).resolve().parent.parent / "migrations"
    names = sorted(entry.name for entry in folder.iterdir() if entry.name.endswith(".sql"))
    return [(int(name.split("_", 1)[0]), _sql_file(f"migrations/{name}")) for name in names]


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


async def init_connection(conn: asyncpg.Connection) -> None:
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(type_name, encoder=_dumps, decoder=orjson.loads, schema="pg_catalog")


async def connect(dsn: str, *, timeout: float = 10.0) -> asyncpg.Connection:
    try:
        conn = await asyncpg.connect(dsn, timeout=timeout, server_settings=SERVER_SETTINGS)
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        raise DatabaseUnavailable(f"DATABASE_URL is set but Postgres cannot be reached: {exc}") from None
    await init_connection(conn)
    return conn


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10, timeout: float = 10.0) -> asyncpg.Pool:
    try:
        pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
            init=init_connection,
            server_settings=SERVER_SETTINGS,
            # Prepared statements are kept, and runs and migrate hold session-level advisory locks across
            # transactions: behind pgbouncer, use session pooling (docs/how-to/pgbouncer.md).
            statement_cache_size=100,
            max_inactive_connection_lifetime=300.0,
        )
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        raise DatabaseUnavailable(f"DATABASE_URL is set but Postgres cannot be reached: {exc}") from None
    assert pool is not None
    return pool


async def migrate(dsn: str) -> int:
    """Bring the database to the current schema under an advisory lock, in one transaction: the upgrade steps
    of migrations/ it has not had, then schema.sql (idempotent). Returns the schema version now in place."""
    conn = await connect(dsn)
    try:
        await conn.execute(queries.get("migrate_lock"), _MIGRATE_LOCK_KEY)
        try:
            async with conn.transaction():  # an upgrade lands whole or not at all
                current = await _applied_version(conn)
                for step_version, step in migrations():
                    if 0 < current < step_version:
                        await conn.execute(step)
                await conn.execute(schema_sql())
        finally:
            await conn.execute(queries.get("migrate_unlock"), _MIGRATE_LOCK_KEY)
        version: int = await conn.fetchval(queries.get("schema_version"))
        return version
    finally:
        await conn.close()


async def _applied_version(conn: asyncpg.Connection) -> int:
    """The version a database is at; 0 for one without the schema (schema.sql creates it whole)."""
    exists = await conn.fetchval(queries.get("schema_exists"))
    if not exists:
        return 0
    version: int | None = await conn.fetchval(queries.get("schema_version"))
    return version or 0


async def describe_schema(dsn: str) -> list[tuple[str, str, list[str]]]:
    """(kind, name, columns) of every table and view in schema square, for `migrate --print`."""
    conn = await connect(dsn)
    try:
        rows = await conn.fetch(queries.get("describe_schema"))
        return [(r["kind"], r["relname"], list(r["columns"])) for r in rows]
    finally:
        await conn.close()


@dataclass(frozen=True, slots=True)
class PublicationStatus:
    """The logical-replication publication square_mirror that migrate keeps (docs/how-to/stream-changes.md)."""

    present: bool
    published: int  # tables of schema square it publishes
    missing: list[str]  # tables of schema square it leaves out

    def describe(self) -> str:
        if not self.present:
            return ("publication square_mirror: not created (the migrating user may not create publications; "
                    "see docs/how-to/stream-changes.md)")
        if self.missing:
            return (f"publication square_mirror: {self.published} tables of schema square, without "
                    f"{', '.join(self.missing)} (the migrating user may not update it)")
        return f"publication square_mirror: every table of schema square ({self.published})"


async def publication_status(dsn: str) -> PublicationStatus:
    conn = await connect(dsn)
    try:
        row = await conn.fetchrow(queries.get("publication_status"))
        assert row is not None
        return PublicationStatus(row["present"], row["published"], list(row["missing"]))
    finally:
        await conn.close()
