"""Every named query (worker/sql/*.sql, square_mirror/sql/queries.sql) parses on the migrated schema, states what
it does, and is used by its package's code; every name the code asks for exists."""

from __future__ import annotations

import ast
from pathlib import Path

import asyncpg
import pytest

from square_mirror.queries import Queries
from square_mirror.queries import queries as shared
from worker.queries import queries as worker

ROOT = Path(__file__).resolve().parents[2]
LOADERS = {"square_mirror": shared, "worker": worker}
ALL = [(package, name) for package, loader in LOADERS.items() for name in loader.names()]


def _names_asked_for(package: str) -> set[str]:
    """The literal names a package passes to ``queries.get``."""
    asked = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                    and getattr(node.func.value, "id", None) == "queries"):
                assert node.args and isinstance(node.args[0], ast.Constant), f"{path}: name the query literally"
                asked.add(node.args[0].value)
    return asked


@pytest.mark.parametrize("package", LOADERS)
def test_every_query_is_used_and_every_used_name_exists(package: str) -> None:
    assert _names_asked_for(package) == set(LOADERS[package].names())


def test_a_name_means_one_query_across_the_packages() -> None:
    assert set(shared.names()).isdisjoint(worker.names())


@pytest.mark.parametrize(("package", "name"), ALL)
def test_every_query_states_what_it_does(package: str, name: str) -> None:
    assert LOADERS[package].query(name).description, name


async def _prepare(conn: asyncpg.Connection, loader: Queries, name: str) -> None:
    for kind in loader.kinds() if loader.query(name).fields else [None]:
        tr = conn.transaction()
        await tr.start()
        try:
            await conn.prepare(loader.get(name, kind))  # parsed, analysed and planned; nothing runs
        finally:
            await tr.rollback()


@pytest.mark.parametrize(("package", "name"), ALL)
async def test_every_query_prepares_on_the_schema(db_pool: asyncpg.Pool, package: str, name: str) -> None:
    async with db_pool.acquire() as conn:
        await _prepare(conn, LOADERS[package], name)
