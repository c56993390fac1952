"""The mirror as a source for others: migrate's publication square_mirror, and what a logical-replication consumer
reads through a pgoutput slot when the mirror writes (docs/how-to/stream-changes.md).

The system Postgres runs with wal_level=replica, which is enough for a publication but not for decoding, so the
slot test starts a private embedded Postgres (pgserver, the dev venv's `embedded` extra) with wal_level=logical
in a temporary directory, and removes it afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from square_mirror.db import connect, migrate, publication_status
from square_mirror.embedded import EmbeddedPostgres, EmbeddedUnavailable
from tests.factories import custom_attribute, customer
from tests.pgoutput import Change, Decoder
from tests.services import Services, with_database
from worker.attribute_store import upsert_values, value_row
from worker.store import tombstone_customers, upsert_customers

PEEK = ("SELECT data FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL, 'proto_version', '1', "
        "'publication_names', 'square_mirror')")


async def _square_tables(conn: asyncpg.Connection) -> set[str]:
    return {r[0] for r in await conn.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'square'")}


async def _published(conn: asyncpg.Connection) -> set[tuple[str, str]]:
    return {(r[0], r[1]) for r in await conn.fetch(
        "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = 'square_mirror'")}


async def test_migrate_publishes_every_table_of_square_and_nothing_of_square_private(db_dsn: str) -> None:
    conn = await connect(db_dsn)
    try:
        assert await _published(conn) == {("square", t) for t in await _square_tables(conn)}
        # A publication needs replica identities for updates and deletes: every table's is its primary key.
        assert await conn.fetch(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'square' AND c.relkind = 'r' AND c.relreplident = 'd' "
            "AND NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)") == []
    finally:
        await conn.close()
    status = await publication_status(db_dsn)
    assert status.present and not status.missing
    assert status.describe() == f"publication square_mirror: every table of schema square ({status.published})"


@contextlib.asynccontextmanager
async def _owned_database(services: Services) -> AsyncIterator[tuple[str, asyncpg.Connection]]:
    """A database owned by a login role that is not a superuser (it may create publications of its own tables),
    and a superuser connection to it; both dropped at the end."""
    name = f"sqm_pub_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(services.postgres_dsn)
    await admin.execute(f"CREATE ROLE \"{name}\" LOGIN PASSWORD '{name}'")
    await admin.execute(f'CREATE DATABASE "{name}" OWNER "{name}"')
    su = await asyncpg.connect(with_database(services.postgres_dsn, name))
    try:
        parts = urlsplit(with_database(services.postgres_dsn, name))
        host = parts.netloc.rpartition("@")[2]
        yield parts._replace(netloc=f"{name}:{name}@{host}").geturl(), su
    finally:
        await su.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'DROP ROLE IF EXISTS "{name}"')
        await admin.close()


async def test_a_table_owner_gets_a_table_list_that_every_migrate_sets_again_and_never_fails_for_it(
    services: Services,
) -> None:
    async with _owned_database(services) as (owner_dsn, su):
        await migrate(owner_dsn)
        assert await _published(su) == {("square", t) for t in await _square_tables(su)}
        assert await su.fetchval(  # FOR TABLE each table: a non-superuser may not publish a whole schema
            "SELECT count(*) FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid "
            "WHERE p.pubname = 'square_mirror'") == len(await _square_tables(su))

        owner = await asyncpg.connect(owner_dsn)
        try:  # a table a later schema adds joins the publication at the next migrate
            await owner.execute("CREATE TABLE square.added_later (merchant_id text, id text, "
                                "PRIMARY KEY (merchant_id, id))")
            await migrate(owner_dsn)
            assert ("square", "added_later") in await _published(su)

            # Not permitted (the publication now belongs to someone else): migrate carries on and says so.
            await su.execute("ALTER PUBLICATION square_mirror OWNER TO postgres")
            await owner.execute("CREATE TABLE square.added_after_that (merchant_id text, id text, "
                                "PRIMARY KEY (merchant_id, id))")
            await migrate(owner_dsn)
        finally:
            await owner.close()
        status = await publication_status(owner_dsn)
        assert status.present and status.missing == ["added_after_that"]
        assert "without added_after_that (the migrating user may not update it)" in status.describe()


# --- reading the changes through a slot ---------------------------------------------------------------------


async def _set_logical(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("ALTER SYSTEM SET wal_level = 'logical'")
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def logical_postgres() -> Iterator[str]:
    """A private Postgres with wal_level=logical: started, set, restarted (wal_level needs a restart)."""
    base = Path(tempfile.mkdtemp(prefix="sqm-logical-"))
    first = EmbeddedPostgres(base_dir=base)
    try:
        asyncio.run(_set_logical(first.start()))
    except EmbeddedUnavailable as exc:
        shutil.rmtree(base, ignore_errors=True)
        pytest.skip(f"no private Postgres to decode with (the system one has wal_level=replica): {exc}")
    first.stop()  # base_dir is ours: the data directory stays for the restart
    server = EmbeddedPostgres(base_dir=base)
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


async def _write_a_small_stream(conn: asyncpg.Connection) -> None:
    """The mirror's own write path: a new customer in a group, a new version of it, its delete (a tombstone),
    another customer's custom attribute value; and a write to square_private, which must not be streamed."""
    now = datetime.now(UTC)
    await upsert_customers(conn, "M1", [customer("C1", version=1, group_ids=["G1"])], now)
    await upsert_customers(conn, "M1", [customer("C1", version=2, group_ids=["G1"], given_name="Renamed")], now)
    await tombstone_customers(conn, "M1", ["C1"], now, version=3, stated=True)
    await upsert_customers(conn, "M1", [customer("C2", version=1)], now)
    await upsert_values(conn, "M1", [value_row("C2", custom_attribute("favorite-drink", "Flat white"))])
    await conn.execute("INSERT INTO square_private.seller_credentials (merchant_id, access_token) "
                       "VALUES ('M1', 'gAAAA-encrypted')")
    await conn.execute("INSERT INTO square_private.oauth_states (state_hash, expires_at) VALUES ('h', now())")


async def _read_slot(dsn: str) -> tuple[list[Change], dict[str, int]]:
    slot = f"sqm_test_{uuid.uuid4().hex[:8]}"
    conn = await connect(dsn)
    try:
        await conn.execute("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", slot)
        try:
            await _write_a_small_stream(conn)
            decoder = Decoder()
            for row in await conn.fetch(PEEK, slot):
                decoder.feed(row["data"])
        finally:
            await conn.execute("SELECT pg_drop_replication_slot($1)", slot)
        return decoder.changes, decoder.messages
    finally:
        await conn.close()


async def test_a_pgoutput_slot_streams_the_mirrors_writes_tombstones_and_history_and_nothing_private(
    logical_postgres: str,
) -> None:
    dsn = with_database(logical_postgres, "postgres")
    await migrate(dsn)
    assert (await publication_status(dsn)).describe().startswith("publication square_mirror: every table")
    changes, messages = await _read_slot(dsn)

    tables = {c.table for c in changes}
    assert all(t.startswith("square.") for t in tables), tables  # never square_private
    assert messages.get("B") == messages.get("C") and messages.get("B", 0) >= 5  # whole transactions
    seen = {(c.operation, c.table) for c in changes}
    assert {("INSERT", "square.customers"), ("UPDATE", "square.customers"),
            ("INSERT", "square.customer_group_members"), ("DELETE", "square.customer_group_members"),
            ("INSERT", "square.customer_versions_closed"), ("INSERT", "square.customer_group_membership_closed"),
            ("INSERT", "square.customer_custom_attributes")} <= seen, seen

    c1 = [c for c in changes if c.table == "square.customers" and c.new.get("id") == "C1"]
    assert [c.operation for c in c1] == ["INSERT", "UPDATE", "UPDATE"]
    assert c1[1].new["given_name"] == "Renamed" and c1[1].new["deleted_at"] is None
    assert c1[2].new["deleted_at"] is not None  # a delete reaches consumers as an UPDATE: the tombstone
    closed = [c.new for c in changes if c.table == "square.customer_versions_closed"]
    assert [(v["customer_id"], v["version"], v["closed_reason"]) for v in closed] == [
        ("C1", "1", "superseded"), ("C1", "2", "deleted")]
    # A delete carries its row's key (the primary key is the replica identity), merchant_id first.
    (left,) = [c for c in changes if c.operation == "DELETE"]
    assert left.old_kind == "K"
    assert (left.old["merchant_id"], left.old["group_id"], left.old["customer_id"]) == ("M1", "G1", "C1")
    (value,) = [c.new for c in changes if c.table == "square.customer_custom_attributes"]
    assert (value["merchant_id"], value["customer_id"], value["key"]) == ("M1", "C2", "favorite-drink")
    assert value["value"] == '"Flat white"'
