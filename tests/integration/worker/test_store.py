from __future__ import annotations

import asyncio
import itertools

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.factories import at, customer, group
from worker.store import (
    apply_merge,
    replace_segment_members,
    tombstone_customers,
    tombstone_definitions,
    upsert_customers,
    upsert_definitions,
)

M = "MERCHANT1"


async def _row(pool: asyncpg.Pool, cid: str) -> asyncpg.Record | None:
    return await pool.fetchrow("SELECT * FROM square.customers WHERE merchant_id=$1 AND id=$2", M, cid)


async def _groups_of(pool: asyncpg.Pool, cid: str) -> set[str]:
    rows = await pool.fetch(
        "SELECT group_id FROM square.customer_group_members WHERE merchant_id=$1 AND customer_id=$2", M, cid)
    return {r["group_id"] for r in rows}


async def _segments_of(pool: asyncpg.Pool, cid: str) -> set[str]:
    rows = await pool.fetch(
        "SELECT segment_id FROM square.customer_segment_members WHERE merchant_id=$1 AND customer_id=$2", M, cid)
    return {r["segment_id"] for r in rows}


async def test_newer_version_replaces_and_older_is_ignored(db_pool: asyncpg.Pool) -> None:
    async with db_pool.acquire() as conn:
        assert await upsert_customers(conn, M, [customer("A", version=2, given_name="Two")], at(10)) == {"A"}
        assert await upsert_customers(conn, M, [customer("A", version=1, given_name="One")], at(20)) == set()
        assert await upsert_customers(conn, M, [customer("A", version=3, given_name="Three")], at(5)) == {"A"}
    row = await _row(db_pool, "A")
    assert row is not None
    assert (row["version"], row["given_name"]) == (3, "Three")


async def test_equal_version_applies_only_when_observed_later(db_pool: asyncpg.Pool) -> None:
    async with db_pool.acquire() as conn:
        await upsert_customers(conn, M, [customer("A", version=1, segment_ids=["S1"])], at(10))
        assert await upsert_customers(conn, M, [customer("A", version=1, segment_ids=["S2"])], at(5)) == set()
        assert await _segments_of(db_pool, "A") == {"S1"}
        assert await upsert_customers(conn, M, [customer("A", version=1, segment_ids=["S2"])], at(15)) == {"A"}
    assert await _segments_of(db_pool, "A") == {"S2"}


async def test_fields_map_to_columns_and_raw_keeps_everything(db_pool: asyncpg.Pool) -> None:
    snapshot = customer(
        "A", version=4, birthday="0000-09-21", address={"address_line_1": "1 Main St", "locality": "Town"},
        tax_ids={"eu_vat": "IE3426675K"}, reference_id="REF-1", note="n", nickname="Nick", company_name="Co",
        preferences={"email_unsubscribed": True}, group_ids=["G1", "G2"], segment_ids=["S1"],
    )
    async with db_pool.acquire() as conn:
        await upsert_customers(conn, M, [snapshot], at(1))
    row = await _row(db_pool, "A")
    assert row is not None
    assert row["birthday"] == "0000-09-21"
    assert row["address"] == {"address_line_1": "1 Main St", "locality": "Town"}
    assert row["tax_ids"] == {"eu_vat": "IE3426675K"}
    assert row["email_unsubscribed"] is True
    assert row["group_ids"] == ["G1", "G2"]
    assert row["raw"] == snapshot
    assert row["updated_at"].isoformat().startswith("2026-01-01T00:04")


async def test_membership_follows_group_ids(db_pool: asyncpg.Pool) -> None:
    async with db_pool.acquire() as conn:
        await upsert_customers(conn, M, [customer("A", version=1, group_ids=["G1", "G2"])], at(1))
        assert await _groups_of(db_pool, "A") == {"G1", "G2"}
        await upsert_customers(conn, M, [customer("A", version=2, group_ids=["G2", "G3"])], at(2))
        assert await _groups_of(db_pool, "A") == {"G2", "G3"}
        await upsert_customers(conn, M, [customer("A", version=3)], at(3))
    assert await _groups_of(db_pool, "A") == set()


async def test_tombstone_is_final_and_drops_membership(db_pool: asyncpg.Pool) -> None:
    async with db_pool.acquire() as conn:
        await upsert_customers(conn, M, [customer("A", version=1, group_ids=["G1"], segment_ids=["S1"])], at(1))
        assert await tombstone_customers(conn, M, ["A"], at(2)) == {"A"}
        assert await tombstone_customers(conn, M, ["A"], at(3)) == set()
        assert await upsert_customers(conn, M, [customer("A", version=9)], at(4)) == set()
    row = await _row(db_pool, "A")
    assert row is not None
    assert row["deleted_at"] == at(2)
    assert row["version"] == 1
    assert await _groups_of(db_pool, "A") == set()
    assert await _segments_of(db_pool, "A") == set()


async def _wait_until_blocked(pool: asyncpg.Pool, pid: int) -> None:
    for _ in range(500):
        if await pool.fetchval("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the second writer never waited for the first one's row lock")


@pytest.mark.parametrize("second", ["newer_snapshot", "tombstone"])
async def test_a_writer_that_waited_for_a_row_lock_sees_the_memberships_committed_meanwhile(
    db_pool: asyncpg.Pool, second: str
) -> None:
    """A backfill page (in group G) and a newer webhook fetch or delete of the same new customer, interleaved."""
    async with db_pool.acquire() as first, db_pool.acquire() as other:
        pid = await other.fetchval("SELECT pg_backend_pid()")
        transaction = first.transaction()
        await transaction.start()
        await upsert_customers(first, M, [customer("A", version=1, group_ids=["G"], segment_ids=["S"])], at(0))

        async def write_second() -> None:
            async with other.transaction():
                if second == "tombstone":
                    await tombstone_customers(other, M, ["A"], at(60))
                else:
                    await upsert_customers(other, M, [customer("A", version=2)], at(60))

        task = asyncio.create_task(write_second())
        await _wait_until_blocked(db_pool, pid)
        await transaction.commit()
        await task
    assert await _groups_of(db_pool, "A") == set()
    assert await _segments_of(db_pool, "A") == set()


async def test_a_segment_diff_waits_for_a_fresher_write_in_flight_and_lets_it_win(db_pool: asyncpg.Pool) -> None:
    async with db_pool.acquire() as conn:
        await upsert_customers(conn, M, [customer("A", version=1, segment_ids=["S"])], at(0))
    async with db_pool.acquire() as fetch, db_pool.acquire() as lane:
        pid = await lane.fetchval("SELECT pg_backend_pid()")
        transaction = fetch.transaction()
        await transaction.start()  # a webhook fetch observed at 20 s: A is still in S
        await upsert_customers(fetch, M, [customer("A", version=1, segment_ids=["S"])], at(20))

        async def diff() -> None:  # the segments lane observed S at 10 s without A
            async with lane.transaction():
                await replace_segment_members(lane, M, "S", [], at(10))

        task = asyncio.create_task(diff())
        await _wait_until_blocked(db_pool, pid)
        await transaction.commit()
        await task
    assert await _segments_of(db_pool, "A") == {"S"}
    row = await _row(db_pool, "A")
    assert row is not None and row["segment_ids"] == ["S"] and row["observed_at"] == at(20)


async def test_tombstone_of_unseen_customer_blocks_a_late_create(db_pool: asyncpg.Pool) -> None:
    async with db_pool.acquire() as conn:
        await tombstone_customers(conn, M, ["B"], at(5), version=3)
        assert await upsert_customers(conn, M, [customer("B", version=0)], at(6)) == set()
    row = await _row(db_pool, "B")
    assert row is not None
    assert row["deleted_at"] is not None


async def test_merge_records_lineage_once_and_links_tombstones(db_pool: asyncpg.Pool) -> None:
    async with db_pool.acquire() as conn:
        await upsert_customers(conn, M, [customer("A", version=1), customer("B", version=2)], at(1))
        await tombstone_customers(conn, M, ["B"], at(2))  # the plain delete arrived before the merge context
        result = await apply_merge(conn, M, ["A", "B", "C"], "C", at(3), source="webhook", event_id="E1")
        assert result.recorded == {"A", "B"}
        assert result.tombstoned == {"A", "B"}
        again = await apply_merge(conn, M, ["A", "B"], "C", at(4), source="retrieve")
        assert again.recorded == set()
        assert again.tombstoned == set()
    a, b = await _row(db_pool, "A"), await _row(db_pool, "B")
    assert a is not None
    assert b is not None
    assert (a["merged_into"], b["merged_into"]) == ("C", "C")
    assert b["deleted_at"] == at(3)  # deleted by its merge: the merge's stated time replaces the observed one
    merges = await db_pool.fetch("SELECT from_customer_id, to_customer_id, source FROM square.customer_merges")
    assert {(m["from_customer_id"], m["to_customer_id"], m["source"]) for m in merges} == {
        ("A", "C", "webhook"), ("B", "C", "webhook")}
    assert await _row(db_pool, "C") is None


async def test_stated_lineage_replaces_a_redirect_that_skipped_a_merge_chain_link(db_pool: asyncpg.Pool) -> None:
    async with db_pool.acquire() as conn:
        # RetrieveCustomer(A) answered E (A -> C -> E): all the redirect can tell is A -> E ...
        first = await apply_merge(conn, M, ["A"], "E", at(1), source="retrieve")
        assert first.recorded == {"A"}
        # ... until the webhook states A -> C, which wins, tombstone link included ...
        stated = await apply_merge(conn, M, ["A", "B"], "C", at(2), source="webhook", event_id="E1")
        assert stated.recorded == {"A", "B"}
        # ... and no later redirect or replay moves it again.
        assert (await apply_merge(conn, M, ["A"], "E", at(3), source="retrieve")).recorded == set()
        assert (await apply_merge(conn, M, ["A", "B"], "C", at(4), source="webhook")).recorded == set()
    a = await _row(db_pool, "A")
    assert a is not None and a["merged_into"] == "C"
    merges = await db_pool.fetch("SELECT from_customer_id, to_customer_id, source FROM square.customer_merges")
    assert {(m["from_customer_id"], m["to_customer_id"], m["source"]) for m in merges} == {
        ("A", "C", "webhook"), ("B", "C", "webhook")}


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))))
async def test_merge_lineage_and_tombstones_end_the_same_in_every_order(db_pool: asyncpg.Pool,
                                                                       order: tuple[int, ...]) -> None:
    """One merge A, B -> C stated by three events (C's created and each source's deleted, their times a second
    apart), and a redirect observed before any of them: the earliest stated event wins, in any order."""
    # The redirect's observed time may even be earlier: the fetch left before Square merged (it is taken then).
    statements = [(at(300), "webhook", "E-created"), (at(301), "webhook", "E-deleted-a"),
                  (at(301), "events_api", "E-deleted-b"), (at(200), "retrieve", None)]
    async with db_pool.acquire() as conn:
        await upsert_customers(conn, M, [customer("A", version=1)], at(0))
        for n in order:
            merged_at, source, event_id = statements[n]
            ids = ["A"] if source == "retrieve" else ["A", "B"]
            async with conn.transaction():
                await apply_merge(conn, M, ids, "C", merged_at, source=source, event_id=event_id)
    merges = await db_pool.fetch("SELECT from_customer_id, to_customer_id, merged_at, source, event_id"
                                 " FROM square.customer_merges ORDER BY 1")
    assert [tuple(r) for r in merges] == [("A", "C", at(300), "webhook", "E-created"),
                                          ("B", "C", at(300), "webhook", "E-created")]
    tombstones = await db_pool.fetch("SELECT id, deleted_at, merged_into FROM square.customers ORDER BY id")
    assert [tuple(r) for r in tombstones] == [("A", at(300), "C"), ("B", at(300), "C")]
    closed = await db_pool.fetch("SELECT customer_id, version, valid_to, closed_reason"
                                 " FROM square.customer_versions_closed")
    assert [tuple(r) for r in closed] == [("A", 1, at(300), "merged")]


async def test_group_definitions_upsert_and_tombstone_clear_memberships(db_pool: asyncpg.Pool) -> None:
    async with db_pool.acquire() as conn:
        assert await upsert_definitions(conn, M, "groups", [group("G1", "VIP"), group("G2")]) == {"G1", "G2"}
        assert await upsert_definitions(conn, M, "groups", [group("G1", "Renamed", minute=5)]) == {"G1"}
        assert await upsert_definitions(conn, M, "groups", [group("G1", "Old name", minute=1)]) == set()
        await upsert_customers(conn, M, [customer("A", version=1, group_ids=["G1", "G2"])], at(1))
        assert await tombstone_definitions(conn, M, "groups", ["G1"], at(2)) == {"G1"}
    assert await db_pool.fetchval("SELECT name FROM square.customer_groups WHERE id='G1'") == "Renamed"
    assert await _groups_of(db_pool, "A") == {"G2"}
    assert await db_pool.fetchval("SELECT group_ids FROM square.customers WHERE id='A'") == ["G2"]


async def test_segment_lane_diff_respects_fresher_fetches(db_pool: asyncpg.Pool) -> None:
    async with db_pool.acquire() as conn:
        await upsert_customers(conn, M, [customer("A", version=1), customer("B", version=1, segment_ids=["S1"])], at(1),
                               listed=True)
        await upsert_customers(conn, M, [customer("C", version=1, segment_ids=["S1"])], at(100), listed=True)
        diff = await replace_segment_members(conn, M, "S1", ["A", "X"], at(50))
        assert (diff.added, diff.removed, diff.unknown) == (1, 1, ["X"])
    assert await _segments_of(db_pool, "A") == {"S1"}
    assert await _segments_of(db_pool, "B") == set()
    assert await _segments_of(db_pool, "C") == {"S1"}
    assert await db_pool.fetchval("SELECT segment_ids FROM square.customers WHERE id='A'") == ["S1"]
    # A stale snapshot (same version, observed before the lane) can no longer undo the lane's observation.
    async with db_pool.acquire() as conn:
        assert await upsert_customers(conn, M, [customer("A", version=1)], at(20)) == set()


async def test_segment_lane_diff_never_reads_a_hidden_customers_absence_as_leaving(db_pool: asyncpg.Pool) -> None:
    instant = {"id": "H", "version": 1, "segment_ids": ["S1"], "creation_source": "INSTANT_PROFILE"}
    async with db_pool.acquire() as conn:
        await upsert_customers(conn, M, [instant], at(1), listed=True)  # no public field: no search shows it
        await upsert_customers(conn, M, [customer("U", version=1, segment_ids=["S1"])], at(1))  # never listed
        await upsert_customers(conn, M, [customer("L", version=1, segment_ids=["S1"])], at(1), listed=True)
        diff = await replace_segment_members(conn, M, "S1", [], at(50))
    assert diff.removed == 1
    assert (await _segments_of(db_pool, "H"), await _segments_of(db_pool, "U")) == ({"S1"}, {"S1"})
    assert await _segments_of(db_pool, "L") == set()
    hidden = await db_pool.fetch(
        "SELECT id FROM square.customers WHERE square.customer_is_hidden(given_name, family_name, company_name,"
        " email_address, phone_number, listed_at) ORDER BY id")
    assert [r["id"] for r in hidden] == ["H", "U"]


async def test_a_search_answer_marks_its_customers_listed_once(db_pool: asyncpg.Pool) -> None:
    async with db_pool.acquire() as conn:
        await upsert_customers(conn, M, [customer("U", version=1, segment_ids=["S1"])], at(1))
        await replace_segment_members(conn, M, "S1", ["U"], at(50))
        await upsert_customers(conn, M, [customer("U", version=2)], at(60), listed=True)
    assert await db_pool.fetchval("SELECT listed_at FROM square.customers WHERE id = 'U'") == at(50)


Op = tuple[str, int, float]  # ("snap" | "delete", version, observed seconds)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ops=st.lists(
        st.tuples(st.sampled_from(["snap", "snap", "snap", "delete"]), st.integers(0, 6), st.floats(0, 100)),
        min_size=1, max_size=12,
    ),
    order=st.randoms(use_true_random=False),
)
async def test_any_delivery_order_converges_to_the_same_row(
    db_pool: asyncpg.Pool, ops: list[Op], order: object
) -> None:
    import random

    assert isinstance(order, random.Random)
    shuffled = list(ops)
    order.shuffle(shuffled)
    results = []
    for sequence in (ops, shuffled):
        async with db_pool.acquire() as conn:
            await conn.execute(
                "TRUNCATE square.customers, square.customer_segment_members, square.customer_versions_closed,"
                " square.customer_segment_membership_closed"
            )
            for kind, version, observed in sequence:
                if kind == "snap":
                    segs = [f"S{version}-{int(observed)}"]
                    await upsert_customers(conn, M, [customer("A", version=version, segment_ids=segs)], at(observed))
                else:
                    await tombstone_customers(conn, M, ["A"], at(0))
            row = await _row(db_pool, "A")
            assert row is not None
            results.append((row["deleted_at"] is not None, row["version"] if row["deleted_at"] is None else None,
                            sorted(await _segments_of(db_pool, "A"))))
    assert results[0] == results[1]
    deleted = any(kind == "delete" for kind, _, _ in ops)
    assert results[0][0] == deleted
    if not deleted:
        best = max((v, o) for _, v, o in ops)
        assert results[0][1] == best[0]
