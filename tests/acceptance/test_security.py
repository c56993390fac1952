# ruff: noqa: S608  (table names come from pg_class, not from input)
"""Security properties that are promised in SECURITY.md: what the analytics role can and cannot do, what the
receiver tells a caller whose signature fails, and that deployment images are built from pinned dependencies.

(That no customer PII or secret reaches a log line is checked on the logs of a whole chaos run, in
``tests/chaos/test_chaos.py``.)
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from tests.factories import signed_headers, webhook_body
from tests.integration.webhooks.support import (
    KEY,
    NOTIFICATION_URL,
    running_receiver,
    settings_for,
)
from tests.services import Services

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def reader_conn(db_dsn: str, db_pool: asyncpg.Pool, services: Services) -> AsyncIterator[asyncpg.Connection]:
    """A login role that holds only ``square_mirror_reader``, as the README tells operators to create one."""
    name = f"sqm_analyst_{uuid.uuid4().hex[:8]}"
    await db_pool.execute(f'CREATE ROLE "{name}" LOGIN')
    await db_pool.execute(f'GRANT square_mirror_reader TO "{name}"')
    conn = await asyncpg.connect(db_dsn, user=name)
    try:
        yield conn
    finally:
        await conn.close()
        await db_pool.execute(f'DROP OWNED BY "{name}"')
        await db_pool.execute(f'DROP ROLE "{name}"')


async def _relations(pool: asyncpg.Pool) -> list[tuple[str, str]]:
    rows = await pool.fetch("SELECT c.relname, c.relkind::text AS relkind FROM pg_class c"
                            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'square'"
                            " AND c.relkind IN ('r', 'v', 'm', 'p') ORDER BY 1")
    return [(r["relname"], r["relkind"]) for r in rows]


async def test_analytics_role_reads_every_table_and_view(db_pool: asyncpg.Pool,
                                                         reader_conn: asyncpg.Connection) -> None:
    relations = await _relations(db_pool)
    assert {"customers", "customers_current", "webhook_events", "customer_id_resolution"} <= {r for r, _ in relations}
    for relation, _kind in relations:
        await reader_conn.fetch(f'SELECT * FROM square."{relation}" LIMIT 1')
    await reader_conn.fetch("SELECT * FROM square.customers_as_of('M', now())")


async def test_analytics_role_cannot_write_or_change_the_schema(db_pool: asyncpg.Pool,
                                                                reader_conn: asyncpg.Connection) -> None:
    tables = [r for r, kind in await _relations(db_pool) if kind in ("r", "p")]
    assert tables
    for table in tables:
        for statement in (f'INSERT INTO square."{table}" DEFAULT VALUES', f'DELETE FROM square."{table}"',
                          f'UPDATE square."{table}" SET merchant_id = merchant_id', f'TRUNCATE square."{table}"'):
            if statement.startswith("UPDATE") and table == "schema_version":
                statement = 'UPDATE square."schema_version" SET version = version'
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await reader_conn.execute(statement)
    for ddl in ("CREATE TABLE square.evil (x int)", "DROP TABLE square.customers",
                "ALTER TABLE square.customers ADD COLUMN evil int", "CREATE TABLE public.evil (x int)"):
        with pytest.raises((asyncpg.InsufficientPrivilegeError, asyncpg.UndefinedTableError)):
            await reader_conn.execute(ddl)


async def test_no_token_or_secret_is_stored_where_the_analytics_role_could_read_it(
        db_pool: asyncpg.Pool, reader_conn: asyncpg.Connection) -> None:
    # Personal tokens live in SQUARE_ACCESS_TOKEN / SQUARE_TOKENS_FILE only; OAuth sellers' tokens live encrypted in
    # schema square_private, which the analytics role is refused.
    columns = await db_pool.fetch(
        "SELECT table_schema, table_name, column_name FROM information_schema.columns"
        " WHERE table_schema NOT IN ('pg_catalog', 'information_schema', 'square_private')"
        " AND column_name ~* '(token|secret|signature|password|api_key|credential)'")
    assert [tuple(c) for c in columns] == []
    for table in ("seller_credentials", "oauth_states"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await reader_conn.fetch(f"SELECT * FROM square_private.{table}")
    # Nor can the role read the server's own secrets (role password hashes).
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await reader_conn.fetch("SELECT rolpassword FROM pg_authid")


async def test_receiver_reveals_nothing_about_why_a_signature_failed(redis_url: str) -> None:
    body = webhook_body(1)
    good = signed_headers(body)
    attempts = {
        "no signature header": {k: v for k, v in good.items() if k != "x-square-hmacsha256-signature"},
        "empty signature": {**good, "x-square-hmacsha256-signature": ""},
        "not base64": {**good, "x-square-hmacsha256-signature": "%%%not-base64%%%"},
        "wrong key": signed_headers(body, key="some-other-key"),
        "wrong notification URL": signed_headers(body, url=NOTIFICATION_URL + "/"),
        "truncated signature": {**good, "x-square-hmacsha256-signature": good["x-square-hmacsha256-signature"][:10]},
        "signature of another body": signed_headers(webhook_body(2)),
    }
    answers = {}
    async with running_receiver(settings_for(redis_url)) as receiver, aiohttp.ClientSession() as session:
        for why, headers in attempts.items():
            async with session.post(receiver.url, data=body, headers=headers) as resp:
                shown = {k.lower(): v for k, v in resp.headers.items() if k.lower() not in ("date",)}
                answers[why] = (resp.status, await resp.read(), tuple(sorted(shown.items())))
        async with session.post(receiver.url, data=body, headers=good) as resp:
            assert resp.status == 200  # the same body with its real signature is accepted
    distinct = set(answers.values())
    assert len(distinct) == 1, answers
    status, text, _ = distinct.pop()
    assert status in (401, 403)
    assert not re.search(rb"(?i)(key|url|base64|length|mismatch|expected|header|hmac)", text), text
    assert KEY.encode() not in text


def test_deployment_images_install_pinned_dependencies_from_the_lock_file() -> None:
    lock = ROOT / "deploy" / "requirements.lock"
    requirements = [line.strip() for line in lock.read_text().splitlines()
                    if line.strip() and not line.lstrip().startswith("#")]
    assert requirements
    unpinned = [r for r in requirements if not re.fullmatch(r"[A-Za-z0-9_.\-\[\],]+==[A-Za-z0-9_.+\-]+( .*)?", r)]
    assert unpinned == []
    assert "requirements.lock" in (ROOT / "deploy" / "Dockerfile").read_text()
