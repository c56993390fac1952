"""Custom attribute events in any order, with duplicates, leave the values Square ends with.

Hypothesis draws a history per (customer, key): values set and changed (the version goes up), deleted, and made
again (versions start over at 1, with a later ``created_at``: a new generation). Every change is one event
carrying its state, as Square's webhooks do; a delete carries the last state. The events are applied through the
write path the worker uses (:func:`worker.attribute_store.upsert_values`) in Square's order and in a drawn order
with duplicates; both must end at Square's final state: the same live values (value, version, created_at) and
the same deleted ones. History rows are not compared: they keep the states the mirror saw, which depends on
what it saw first.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.services import Services, with_database
from worker import attribute_store

T0 = datetime(2026, 3, 1, tzinfo=UTC)
PAIRS = [("C1", "drink"), ("C1", "size"), ("C2", "drink")]


@pytest.fixture(scope="module")
def order_db(services: Services, template_database: str) -> Iterator[str]:
    name = f"sqm_ca_order_{uuid.uuid4().hex[:8]}"

    async def admin(statement: str) -> None:
        conn = await asyncpg.connect(services.postgres_dsn)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"'))
    yield with_database(services.postgres_dsn, name)
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _stamp(minute: int) -> str:
    return (T0 + timedelta(minutes=minute)).isoformat().replace("+00:00", "Z")


def play(ops: list[tuple[int, str]]) -> tuple[list[dict[str, Any]], dict[tuple[str, str], dict[str, Any]]]:
    """Square's side: the events of the drawn changes, and each pair's final state."""
    events: list[dict[str, Any]] = []
    final: dict[tuple[str, str], dict[str, Any]] = {}
    for minute, (pair_index, op) in enumerate(ops, start=1):
        customer_id, key = PAIRS[pair_index]
        held = final.get((customer_id, key))
        live = held is not None and not held["deleted"]
        if op == "delete":
            if not live:
                continue
            assert held is not None
            final[(customer_id, key)] = {**held, "deleted": True}
            events.append({**held, "deleted": True, "deleted_at": _stamp(minute)})
            continue
        if live:
            assert held is not None
            state = {**held, "value": f"v{minute}", "version": held["version"] + 1, "updated_at": _stamp(minute)}
        else:  # first set, or made again after a delete: a new generation
            state = {"customer_id": customer_id, "key": key, "value": f"v{minute}", "version": 1,
                     "visibility": "VISIBILITY_READ_ONLY", "created_at": _stamp(minute), "updated_at": _stamp(minute),
                     "deleted": False, "deleted_at": None}
        final[(customer_id, key)] = state
        events.append(state)
    return events, final


async def _apply(dsn: str, events: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    conn = await asyncpg.connect(dsn)
    try:
        from square_mirror.db import init_connection

        await init_connection(conn)
        await conn.execute("TRUNCATE square.customer_custom_attributes, "
                           "square.customer_custom_attribute_versions_closed")
        for event in events:
            await attribute_store.upsert_values(conn, "M", [dict(event)])
        rows = await conn.fetch("SELECT customer_id, key, value, version, created_at, "
                                "deleted_at IS NOT NULL AS deleted FROM square.customer_custom_attributes")
    finally:
        await conn.close()
    return {(r["customer_id"], r["key"]): {"value": r["value"], "version": r["version"],
                                           "created_at": r["created_at"], "deleted": r["deleted"]} for r in rows}


def _expected(final: dict[tuple[str, str], dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {pair: {"value": s["value"], "version": s["version"],
                   "created_at": datetime.fromisoformat(s["created_at"].replace("Z", "+00:00")),
                   "deleted": s["deleted"]} for pair, s in final.items()}


changes = st.lists(st.tuples(st.integers(0, len(PAIRS) - 1), st.sampled_from(["set", "set", "delete"])),
                   min_size=1, max_size=14)


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=changes, data=st.data())
def test_any_order_with_duplicates_ends_at_squares_state(order_db: str, ops: list[tuple[int, str]],
                                                          data: st.DataObject) -> None:
    events, final = play(ops)
    repeats = data.draw(st.lists(st.sampled_from(events), max_size=4), label="duplicates") if events else []
    delivered = data.draw(st.permutations([*events, *repeats]), label="order")
    want = _expected(final)
    assert asyncio.run(_apply(order_db, events)) == want
    assert asyncio.run(_apply(order_db, delivered)) == want
