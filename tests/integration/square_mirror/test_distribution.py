"""The schema invariants a distributed Postgres (Citus) needs to shard the mirror by merchant_id, read from the
catalog of a migrated database (docs/explanation/distributed-postgres.md):

- every table that holds a seller's data has a merchant_id column; the others are listed here by name;
- every primary key, unique constraint and unique index of those tables starts with merchant_id;
- every foreign key includes merchant_id on both sides, at the same place;
- every join in the views and functions of schemas square and square_private is merchant-local: its ON clause
  equates merchant_id (with the other side's, or the function's one merchant), or it is a LATERAL subquery
  handed the outer row's merchant_id, or it joins a set-returning function rather than a table.

A failure names the object; if the new object really is not a seller's (a reference or local table), add it to
NOT_MERCHANT_TABLES here and to the explanation page.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

import asyncpg

from square_mirror.db import connect

SCHEMAS: Final = ("square", "square_private")
# Tables without merchant_id: Citus reference tables (copied to every node) or local ones (coordinator only).
NOT_MERCHANT_TABLES: Final = {
    "square.schema_version": "reference",  # the schema's version rows, read by migrate and status
    "square_private.oauth_states": "local",  # used OAuth state hashes: no seller is known before the exchange
}

TABLES = """
SELECT n.nspname || '.' || c.relname AS name,
       EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'merchant_id'
                                              AND NOT a.attisdropped) AS has_merchant_id
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = ANY($1::text[]) AND c.relkind IN ('r', 'p')
"""
# Primary keys, unique constraints and unique indexes (constraints' indexes included): the first key column.
UNIQUE_INDEXES = """
SELECT n.nspname || '.' || c.relname AS table_name, ic.relname AS index_name,
       coalesce(a.attname, '(expression)') AS first_column
FROM pg_index i
JOIN pg_class c ON c.oid = i.indrelid
JOIN pg_class ic ON ic.oid = i.indexrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = i.indkey[0]
WHERE n.nspname = ANY($1::text[]) AND (i.indisunique OR i.indisprimary)
"""
FOREIGN_KEYS = """
SELECT con.conname, con.conrelid::regclass::text AS table_name, con.confrelid::regclass::text AS referenced,
       ARRAY(SELECT a.attname FROM unnest(con.conkey) WITH ORDINALITY k(attnum, ord)
             JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum ORDER BY k.ord) AS columns,
       ARRAY(SELECT a.attname FROM unnest(con.confkey) WITH ORDINALITY k(attnum, ord)
             JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.attnum ORDER BY k.ord) AS ref_columns
FROM pg_constraint con JOIN pg_namespace n ON n.oid = con.connamespace
WHERE con.contype = 'f' AND n.nspname = ANY($1::text[])
"""
SQL_TEXTS = """
SELECT 'view ' || n.nspname || '.' || c.relname AS name, pg_get_viewdef(c.oid) AS sql
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = ANY($1::text[]) AND c.relkind IN ('v', 'm')
UNION ALL
SELECT 'function ' || p.oid::regprocedure::text, pg_get_functiondef(p.oid)
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = ANY($1::text[]) AND p.prokind IN ('f', 'p')
"""

# --- the join check: a small scanner, not a SQL parser, for the SQL this project writes ----------------------

_TOKEN: Final = re.compile(
    r"'(?:[^']|'')*'|\(|\)|;|\b(?:ON|JOIN|LEFT|RIGHT|INNER|FULL|CROSS|NATURAL|WHERE|GROUP|ORDER|UNION|LIMIT|"
    r"HAVING|WINDOW|RETURNING|LOOP|THEN|INTO)\b", re.I)
_CLAUSE_END: Final = {"JOIN", "LEFT", "RIGHT", "INNER", "FULL", "CROSS", "NATURAL", "WHERE", "GROUP", "ORDER",
                      "UNION", "LIMIT", "HAVING", "WINDOW", "RETURNING", "LOOP", "THEN", "INTO", ";"}
_JOIN: Final = re.compile(r"\bJOIN\s+(LATERAL\b\s*)?", re.I)
_MERCHANT_EQUALITY: Final = re.compile(
    r"\b\w+\.merchant_id\s*\)?\s*=\s*\(?\s*(?:\w+\.merchant_id|p_merchant_id|\$1)\b"
    r"|\b(?:p_merchant_id|\$1)\s*\)?\s*=\s*\(?\s*\w+\.merchant_id\b", re.I)
_FUNCTION_TARGET: Final = re.compile(r"^\s*(?!square\.|square_private\.)[a-z_][a-z0-9_.]*\s*\(", re.I)


@dataclass(frozen=True)
class Join:
    target: str  # what is joined: a table with its alias, a function call, a (LATERAL) subquery
    condition: str | None  # the ON clause; None for CROSS JOIN, NATURAL JOIN or USING
    lateral: bool
    constant: bool = False  # a list of constants (a CTE of VALUES, or a query of such CTEs only): no seller's rows


_CTE: Final = re.compile(r"\b(\w+)\s*(?:\([^()]*\))?\s+AS\s+(?:(?:NOT\s+)?MATERIALIZED\s+)?\(", re.I)
_WORD: Final = re.compile(r"\b[a-z_]\w*\b", re.I)


def constant_ctes(sql: str) -> set[str]:
    """The CTEs of ``sql`` that read no table: built from VALUES and other such CTEs only (a view's lists of lanes,
    say). Joining one is merchant-local: it holds no seller's rows."""
    bodies: dict[str, str] = {}
    for match in _CTE.finditer(sql):
        end = _clause_end(sql, match.end(), set())
        bodies[match.group(1).lower()] = sql[match.end():end]
    constant: set[str] = set()
    changed = True
    while changed:
        changed = False
        for name, body in bodies.items():
            if name in constant or re.search(r"\bsquare(?:_private)?\.", body, re.I):
                continue
            if "VALUES" not in body.upper() and not {w.lower() for w in _WORD.findall(body)} & constant:
                continue
            names_read = {w.lower() for w in re.findall(r"\b(?:FROM|JOIN)\s+(\w+)", body, re.I)}
            if names_read <= constant | {"lateral"}:
                constant.add(name)
                changed = True
    return constant


def _reads_only(target: str, constant: set[str]) -> bool:
    if re.search(r"\bsquare(?:_private)?\.", target, re.I):
        return False
    if target.startswith("("):
        if re.match(r"\(\s*VALUES\b", target, re.I):
            return True  # a VALUES list
        read = {w.lower() for w in re.findall(r"\b(?:FROM|JOIN)\s+(\w+)", target, re.I)}
        return bool(read) and read <= constant
    return target.split()[0].lower() in constant


def _clause_end(sql: str, start: int, ends: set[str]) -> int:
    """Where a clause starting at ``start`` ends: at a keyword of ``ends`` outside parentheses and strings, or
    at the parenthesis closing the one it is in."""
    depth = 0
    for token in _TOKEN.finditer(sql, start):
        word = token.group(0).upper()
        if word == "(":
            depth += 1
        elif word == ")":
            if depth == 0:
                return token.start()
            depth -= 1
        elif depth == 0 and word in ends:
            return token.start()
    return len(sql)


def joins(sql: str) -> list[Join]:
    found = []
    constant = constant_ctes(sql)
    for match in _JOIN.finditer(sql):
        target_end = _clause_end(sql, match.end(), _CLAUSE_END | {"ON"})
        target = sql[match.end():target_end].strip()
        condition = None
        if sql[target_end:target_end + 2].upper() == "ON":
            condition = sql[target_end + 2:_clause_end(sql, target_end + 2, _CLAUSE_END)].strip()
        found.append(Join(target, condition, match.group(1) is not None, _reads_only(target, constant)))
    return found


def merchant_local(join: Join) -> bool:
    if join.constant:
        return True  # a list of constants (lanes, kinds): no seller's rows to keep together
    if _FUNCTION_TARGET.match(join.target):
        return True  # generate_series(...), jsonb_array_elements(...): rows computed from the row, not a table
    if join.target.startswith("(") or join.lateral:
        # a subquery: merchant-local when it is handed (or filters on) a merchant_id, and its ON adds nothing else
        return "merchant_id" in join.target and (join.condition is None or join.condition.lower() in ("true", "(true)")
                                                 or _MERCHANT_EQUALITY.search(join.condition) is not None)
    return join.condition is not None and _MERCHANT_EQUALITY.search(join.condition) is not None


# --- the checks, each returning what breaks the invariant ------------------------------------------------------


async def tables_without_merchant_id(conn: asyncpg.Connection) -> set[str]:
    return {r["name"] for r in await conn.fetch(TABLES, list(SCHEMAS)) if not r["has_merchant_id"]}


async def unique_keys_not_led_by_merchant_id(conn: asyncpg.Connection) -> list[str]:
    return sorted(f"{r['table_name']}: {r['index_name']} starts with {r['first_column']}"
                  for r in await conn.fetch(UNIQUE_INDEXES, list(SCHEMAS))
                  if r["table_name"] not in NOT_MERCHANT_TABLES and r["first_column"] != "merchant_id")


async def foreign_keys_not_merchant_local(conn: asyncpg.Connection) -> list[str]:
    bad = []
    for r in await conn.fetch(FOREIGN_KEYS, list(SCHEMAS)):
        pairs = list(zip(r["columns"], r["ref_columns"], strict=True))
        if ("merchant_id", "merchant_id") not in pairs:
            bad.append(f"{r['table_name']}.{r['conname']} -> {r['referenced']} {pairs}")
    return bad


async def all_joins(conn: asyncpg.Connection) -> dict[str, list[Join]]:
    return {r["name"]: joins(r["sql"]) for r in await conn.fetch(SQL_TEXTS, list(SCHEMAS))}


def joins_not_merchant_local(found: dict[str, list[Join]]) -> list[str]:
    return sorted(f"{name}: JOIN {j.target} ON {j.condition}" for name, js in found.items() for j in js
                  if not merchant_local(j))


# --- the tests -------------------------------------------------------------------------------------------------


async def test_every_table_with_a_sellers_data_has_merchant_id_and_the_others_are_listed(db_dsn: str) -> None:
    conn = await connect(db_dsn)
    try:
        assert await tables_without_merchant_id(conn) == set(NOT_MERCHANT_TABLES)
    finally:
        await conn.close()


async def test_every_primary_key_unique_constraint_and_unique_index_starts_with_merchant_id(db_dsn: str) -> None:
    conn = await connect(db_dsn)
    try:
        assert len(await conn.fetch(UNIQUE_INDEXES, list(SCHEMAS))) >= 17  # the check saw the keys
        assert await unique_keys_not_led_by_merchant_id(conn) == []
    finally:
        await conn.close()


async def test_every_foreign_key_and_every_join_of_views_and_functions_is_merchant_local(db_dsn: str) -> None:
    conn = await connect(db_dsn)
    try:
        assert await foreign_keys_not_merchant_local(conn) == []
        found = await all_joins(conn)
    finally:
        await conn.close()
    # The scanner sees the joins it should (a parse that found nothing would pass anything).
    assert sum(len(js) for js in found.values()) >= 20, found
    assert len(found["view square.customers_current"]) == 1
    assert len(found["function square.customer_history_on_update()"]) == 2  # transition tables: new_rows/old_rows
    assert joins_not_merchant_local(found) == []


async def test_the_checks_catch_a_key_a_table_a_foreign_key_and_a_join_that_are_not_merchant_local(
    db_dsn: str,
) -> None:
    conn = await connect(db_dsn)
    try:
        await conn.execute("""
            CREATE TABLE square.bad_key (id text PRIMARY KEY, merchant_id text NOT NULL);
            CREATE UNIQUE INDEX customers_email_unique ON square.customers (email_address);
            CREATE TABLE square.no_merchant (id text PRIMARY KEY);
            CREATE TABLE square.bad_reference (
                merchant_id text NOT NULL, customer_id text NOT NULL, other_merchant text,
                PRIMARY KEY (merchant_id, customer_id),
                FOREIGN KEY (other_merchant, customer_id) REFERENCES square.customers (merchant_id, id));
            CREATE VIEW square.bad_join AS
                SELECT c.id, m.to_customer_id FROM square.customers c
                JOIN square.customer_merges m ON m.from_customer_id = c.id;
            CREATE FUNCTION square.bad_function(p_merchant_id text) RETURNS SETOF text LANGUAGE sql STABLE AS $$
                SELECT c.id FROM square.customers c
                LEFT JOIN square.customer_groups g ON g.id = ANY (c.group_ids)
                WHERE c.merchant_id = p_merchant_id
            $$;
        """)
        assert await tables_without_merchant_id(conn) == set(NOT_MERCHANT_TABLES) | {"square.no_merchant"}
        assert await unique_keys_not_led_by_merchant_id(conn) == [
            "square.bad_key: bad_key_pkey starts with id",
            "square.customers: customers_email_unique starts with email_address",
            "square.no_merchant: no_merchant_pkey starts with id",  # not listed, so held to the rule
        ]
        assert len(await foreign_keys_not_merchant_local(conn)) == 1
        bad = joins_not_merchant_local(await all_joins(conn))
    finally:
        await conn.close()
    assert [b.split(":")[0] for b in bad] == ["function square.bad_function(text)", "view square.bad_join"], bad
