from __future__ import annotations

import asyncpg

from square_mirror.settings import Secret
from square_mirror.square_api import RetryPolicy, SquareClient
from square_mirror.tokens import TokenSource
from tests.factories import customer, group
from tests.scripted_square import ScriptedSquare, json_reply
from worker.outcome import Outcome
from worker.sync import SyncContext, sync_customers

M = "MERCHANT1"


def _not_found(cid: str) -> dict[str, object]:
    return {"errors": [{"code": "NOT_FOUND", "category": "INVALID_REQUEST_ERROR",
                        "detail": f"Customer with ID `{cid}` not found."}]}


async def test_bulk_fetch_resolves_live_deleted_and_merged(
    db_pool: asyncpg.Pool, square: tuple[ScriptedSquare, str]
) -> None:
    fake, url = square
    confirmations = {  # the bulk NOT_FOUNDs, confirmed concurrently: B is really gone, C was merged into E
        "/v2/customers/B": json_reply(_not_found("B"), status=404),
        "/v2/customers/C": json_reply({"customer": customer("E", version=0)}),
    }
    fake.script = [
        json_reply({"responses": {
            "A": {"customer": customer("A", version=2, group_ids=["G1"])},
            "B": _not_found("B"),
            "C": _not_found("C"),
            "D": {"customer": customer("E", version=0)},
        }}),
        lambda r: confirmations[r.path](r),
        lambda r: confirmations[r.path](r),
        json_reply({"group": group("G1", "VIP")}),
    ]
    client = SquareClient(base_url=url, version="2025-08-20", tokens=TokenSource(single=Secret("token-1")),
                          retry=RetryPolicy(attempts=2, base_delay=0.01))
    async with client:
        result = await sync_customers(SyncContext(db_pool, client), M, ["A", "B", "C", "D"])
    assert result.outcomes == {"A": Outcome.APPLIED, "B": Outcome.DELETED, "C": Outcome.MERGED, "D": Outcome.MERGED}
    assert result.merged_into == {"C": "E", "D": "E"}
    assert result.api_calls == 4
    rows = {r["id"]: r for r in await db_pool.fetch("SELECT * FROM square.customers")}
    assert rows["A"]["deleted_at"] is None
    assert rows["B"]["deleted_at"] is not None
    assert rows["B"]["merged_into"] is None
    assert (rows["C"]["merged_into"], rows["D"]["merged_into"]) == ("E", "E")
    assert rows["E"]["deleted_at"] is None
    assert await db_pool.fetchval("SELECT name FROM square.customer_groups WHERE id='G1'") == "VIP"
    lineage = await db_pool.fetch("SELECT from_customer_id, to_customer_id, source FROM square.customer_merges")
    assert {(r["from_customer_id"], r["to_customer_id"], r["source"]) for r in lineage} == {
        ("C", "E", "retrieve"), ("D", "E", "retrieve")}


async def test_stale_snapshot_is_reported_not_written(
    db_pool: asyncpg.Pool, square: tuple[ScriptedSquare, str]
) -> None:
    fake, url = square
    fake.script = [json_reply({"customer": customer("A", version=5)}),
                   json_reply({"customer": customer("A", version=4)})]
    client = SquareClient(base_url=url, version="2025-08-20", tokens=TokenSource(single=Secret("token-1")))
    async with client:
        ctx = SyncContext(db_pool, client)
        assert (await sync_customers(ctx, M, ["A"])).outcomes == {"A": Outcome.APPLIED}
        assert (await sync_customers(ctx, M, ["A"])).outcomes == {"A": Outcome.STALE}
    assert await db_pool.fetchval("SELECT version FROM square.customers WHERE id='A'") == 5
