"""Every named query of the worker (worker/sql/*.sql) parses on the migrated schema, states what it does, and is
used by code; every name the code asks for exists."""

from __future__ import annotations

import ast
from pathlib import Path

import asyncpg
import pytest

from worker.queries import queries

ROOT = Path(__file__).resolve().parents[3]


def _names_asked_for() -> set[str]:
    """The literal names passed to ``queries.get`` anywhere in the worker."""
    asked = set()
    for path in (ROOT / "worker").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                    and getattr(node.func.value, "id", None) == "queries"):
                assert node.args and isinstance(node.args[0], ast.Constant), f"{path}: name the query literally"
                asked.add(node.args[0].value)
    return asked


def test_every_query_is_used_and_every_used_name_exists() -> None:
    assert _names_asked_for() == set(queries.names())


@pytest.mark.parametrize("name", queries.names())
def test_every_query_states_what_it_does(name: str) -> None:
    assert queries.query(name).description, name


@pytest.mark.parametrize("name", queries.names())
async def test_every_query_prepares_on_the_schema(db_pool: asyncpg.Pool, name: str) -> None:
    kinds = queries.kinds() if queries.query(name).fields else [None]
    async with db_pool.acquire() as conn:
        for kind in kinds:
            tr = conn.transaction()
            await tr.start()
            try:
                await conn.prepare(queries.get(name, kind))  # parse, analyse and plan, nothing executed
            finally:
                await tr.rollback()
