"""The schema reference against a migrated database, and every SQL example of the docs run on one.

The examples run here on an empty mirror (a typo, a renamed column or a wrong function signature fails at
once); ``tests/acceptance/test_demo.py`` runs them again on what the demo fills.
"""

from __future__ import annotations

import re

import asyncpg
import pytest

from square_mirror.db import describe_schema
from tests.docs_examples import DOCS, ROOT, WITH_SQL, is_role_statement, sections, sql_blocks

SCHEMA_REFERENCE = DOCS / "reference" / "schema.md"


async def _schema_objects(dsn: str) -> tuple[dict[str, tuple[str, list[str]]], set[str]]:
    relations = {name: (kind, columns) for kind, name, columns in await describe_schema(dsn)}
    conn = await asyncpg.connect(dsn)
    try:
        functions = await conn.fetch(
            "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'square'")
    finally:
        await conn.close()
    return relations, {r["proname"] for r in functions}


async def test_the_schema_reference_documents_every_table_view_function_and_table_column(db_dsn: str) -> None:
    relations, functions = await _schema_objects(db_dsn)
    documented: dict[str, tuple[str, str]] = {}
    for title, body in sections(SCHEMA_REFERENCE, 3).items():
        match = re.fullmatch(r"`square\.(\w+)` \((table|view)\)", title)
        if match:
            documented[match.group(1)] = (match.group(2), body)
    assert set(relations) - set(documented) == set(), "tables or views missing from docs/reference/schema.md"
    assert set(documented) - set(relations) == set(), "docs/reference/schema.md documents relations that do not exist"
    for name, (kind, columns) in relations.items():
        assert documented[name][0] == kind, f"square.{name} is a {kind}"
        if kind == "table":
            body = documented[name][1]
            missing = [c for c in columns if f"`{c}`" not in body]
            assert missing == [], f"square.{name}: columns not documented"
    named = set(re.findall(r"square\.(\w+)\(", SCHEMA_REFERENCE.read_text()))
    assert functions - named == set(), "functions missing from docs/reference/schema.md"
    assert named - functions == set(), "docs/reference/schema.md names functions that do not exist"


class _RolledBack(Exception):
    pass


async def _run_example(conn: asyncpg.Connection, where: str, statement: str) -> None:
    altered = re.match(r"ALTER ROLE (\w+)", statement, flags=re.IGNORECASE)
    if altered and not await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", altered.group(1)):
        await conn.execute(f'CREATE ROLE "{altered.group(1)}"')
    try:
        if is_role_statement(statement):
            await conn.execute(statement)
        else:
            await conn.fetch(statement)
    except asyncpg.PostgresError as exc:
        pytest.fail(f"{where}: {type(exc).__name__}: {exc}\n{statement}")


def _examples() -> list[tuple[str, list[str]]]:
    return [(f"{path.relative_to(ROOT)} #{i + 1}", block) for path in WITH_SQL
            for i, block in enumerate(sql_blocks(path))]


def test_the_tutorial_and_the_schema_reference_have_sql_examples() -> None:
    files = {name.split(" #")[0] for name, _ in _examples()}
    assert {"docs/tutorial.md", "docs/reference/schema.md"} <= files


@pytest.mark.parametrize(("where", "statements"), _examples(), ids=[name for name, _ in _examples()])
async def test_every_sql_example_runs_on_a_migrated_database(db_dsn: str, where: str, statements: list[str]) -> None:
    """Each block runs in a transaction that is rolled back, so role examples leave nothing behind; a role an
    example alters (the mirror's own login role, say) is created first, inside that transaction."""
    conn = await asyncpg.connect(db_dsn)
    try:
        async with conn.transaction():
            for statement in statements:
                await _run_example(conn, where, statement)
            raise _RolledBack
    except _RolledBack:
        pass
    finally:
        await conn.close()

