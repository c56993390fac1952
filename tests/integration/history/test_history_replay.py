"""History replay: a random Square history, observed with duplicates and in random order, leaves exactly one
history row per observed state, in version order, without overlaps or gaps, and as-of queries agree with the
emulator's truth at sampled times.

The emulator's clock is advanced 10 s per operation (its timestamps have second precision), so each state
has a distinct Square ``updated_at`` and sampled times fall cleanly between operations.
"""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import emulator.clock
from emulator.errors import SquareError
from emulator.testing import run_emulator
from worker.store import apply_merge, replace_segment_members, tombstone_customers, upsert_customers

OPS = ("create", "update", "update", "group", "segment", "delete", "merge")
START = 1_767_225_600.0  # 2026-01-01T00:00:00Z


class FakeClock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fake_clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    clock = FakeClock()
    monkeypatch.setattr(emulator.clock, "now", clock)
    return clock


def _ts(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def _observe(conn: asyncpg.Connection, mid: str, kind: str, item: Any, when: float) -> None:
    observed = _ts(when)
    if kind == "snapshot":
        await upsert_customers(conn, mid, [item], observed)
    elif kind == "tombstone":
        cid, stone = item
        if stone.get("merged_into"):
            await apply_merge(conn, mid, [cid], stone["merged_into"], _parse(stone["deleted_at"]), source="webhook")
        else:
            await tombstone_customers(conn, mid, [cid], _parse(stone["deleted_at"]))
    else:
        sid, members = item
        await replace_segment_members(conn, mid, sid, members, observed)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.sampled_from(OPS), min_size=4, max_size=18), seed=st.integers(0, 2**32 - 1))
async def test_replayed_history_is_one_row_per_state_and_as_of_matches_truth(
    db_pool: asyncpg.Pool, fake_clock: FakeClock, steps: list[str], seed: int
) -> None:
    rng = random.Random(seed)
    fake_clock.now = START  # the fixture outlives one hypothesis example
    async with db_pool.acquire() as conn:
        await conn.execute("TRUNCATE square.customers, square.customer_versions_closed, square.customer_merges,"
                           " square.customer_group_members, square.customer_segment_members,"
                           " square.customer_group_membership_closed, square.customer_segment_membership_closed")
    async with run_emulator() as emu:
        mid = emu.merchant_id
        state = emu.emulator.merchants[mid]
        groups = [state.create_group(f"G{n}", None)["id"] for n in range(2)]
        segments = [state.create_segment(f"S{n}")["id"] for n in range(2)]
        ids = [state.create_customer({"given_name": f"C{n}"})[0].id for n in range(3)]
        truths: list[tuple[float, dict[str, Any]]] = []

        def record() -> None:
            truths.append((fake_clock.now, orjson.loads(orjson.dumps(state.dump()))))

        record()
        for step in steps:
            fake_clock.now += 10
            target = rng.choice(ids)
            try:
                if step == "create":
                    ids.append(state.create_customer({"given_name": f"C{len(ids)}"})[0].id)
                elif step == "update":
                    state.update_customer(target, {"family_name": f"F{fake_clock.now}"}, None, clear_null=True)
                elif step == "group":
                    state.set_group(target, rng.choice(groups), rng.random() < 0.6)
                elif step == "segment":
                    state.set_segment(target, rng.choice(segments), rng.random() < 0.6)
                elif step == "delete":
                    state.delete_customer(target, None)
                elif step == "merge":
                    other = rng.choice(ids)
                    if other != target:
                        ids.append(state.merge([target, other]).id)
            except SquareError:
                continue  # an operation on a customer already gone
            record()

    # Every observation the mirror could make, each twice, in random order. A profile is fetched by ID just after
    # its segments were listed: a profile never listed counts as hidden (square.customer_is_hidden), so a segment
    # listing cannot remove it, and only a later fetch (as the segments lane's refresh of hidden profiles makes)
    # brings its membership up to date.
    observations: list[tuple[str, Any, float]] = []
    for when, truth in truths:
        observations.extend(("snapshot", doc, when + 2) for doc in truth["customers"].values())
        observations.extend(("tombstone", (cid, stone), when + 1) for cid, stone in truth["tombstones"].items())
        observations.extend(("segment", (sid, members), when + 1) for sid, members in truth["segment_members"].items())
    observations = observations * 2
    rng.shuffle(observations)
    async with db_pool.acquire() as conn:
        for kind, item, when in observations:
            await _observe(conn, mid, kind, item, when)

    rows = await db_pool.fetch("SELECT customer_id, version, valid_from, valid_to, closed_reason"
                               " FROM square.customer_versions WHERE merchant_id = $1"
                               " ORDER BY customer_id, valid_from, history_id", mid)
    observed_versions: dict[str, set[int]] = {}
    for _when, truth in truths:
        for cid, doc in truth["customers"].items():
            observed_versions.setdefault(cid, set()).add(doc["version"])
    final = truths[-1][1]
    held: dict[str, set[int]] = {}
    for cid, history in itertools.groupby(rows, key=lambda r: r["customer_id"]):
        periods = list(history)
        versions = [p["version"] for p in periods]
        # A state superseded (or deleted) before its snapshot arrived can never be applied, so the history
        # holds the states the mirror applied: each once, strictly in version order.
        assert versions == sorted(set(versions)), f"{cid}: each state once, in version order"
        assert set(versions) <= observed_versions[cid]
        held[cid] = set(versions)
        for earlier, later in itertools.pairwise(periods):
            assert earlier["valid_to"] == later["valid_from"], f"{cid}: no gap or overlap"
        last = periods[-1]
        if cid in final["customers"]:
            assert last["valid_to"] is None
            assert last["version"] == final["customers"][cid]["version"], f"{cid}: the current state is held"
        else:
            assert last["valid_to"] == _parse(final["tombstones"][cid]["deleted_at"])
            assert last["closed_reason"] == ("merged" if final["tombstones"][cid]["merged_into"] else "deleted")
    for cid in final["customers"]:
        assert cid in held, f"{cid}: a live customer has history"

    for when, truth in truths:
        sampled = _ts(when + 5)  # between this operation and the next
        as_of = await db_pool.fetch("SELECT customer_id, version FROM square.customers_as_of($1, $2)", mid, sampled)
        got = {r["customer_id"]: r["version"] for r in as_of}
        # Every state the mirror could have observed, i.e. that it holds, must be answered exactly.
        expected = {cid: doc["version"] for cid, doc in truth["customers"].items()
                    if doc["version"] in held.get(cid, set())}
        assert {cid: v for cid, v in got.items() if cid in expected} == expected, f"as of {sampled}"
        assert set(got) <= set(truth["customers"]), f"as of {sampled}: no customer before it existed or after it left"

    members_now = await db_pool.fetch("SELECT group_id, customer_id FROM square.group_members_as_of($1, now())", mid)
    want = {(g, c) for g, cs in final["group_members"].items() for c in cs if c in final["customers"]}
    assert {(r["group_id"], r["customer_id"]) for r in members_now} == want
    segments_now = await db_pool.fetch("SELECT segment_id, customer_id FROM square.segment_members_as_of($1, now())",
                                       mid)
    want_segments = {(s, c) for s, cs in final["segment_members"].items() for c in cs if c in final["customers"]}
    assert {(r["segment_id"], r["customer_id"]) for r in segments_now} == want_segments


async def test_replaying_everything_again_adds_no_history_row(db_pool: asyncpg.Pool, fake_clock: FakeClock) -> None:
    async with run_emulator() as emu:
        state = emu.emulator.merchants[emu.merchant_id]
        gid = state.create_group("G", None)["id"]
        cid = state.create_customer({"given_name": "A"})[0].id
        fake_clock.now += 10
        state.set_group(cid, gid, True)
        truth = orjson.loads(orjson.dumps(state.dump()))
    async with db_pool.acquire() as conn:
        for _ in range(2):
            await upsert_customers(conn, emu.merchant_id, list(truth["customers"].values()), _ts(fake_clock.now))
        counts = [await conn.fetchval(f"SELECT count(*) FROM square.{t}") for t in  # noqa: S608
                  ("customer_versions", "customer_group_membership_history")]
        for _ in range(3):
            await upsert_customers(conn, emu.merchant_id, list(truth["customers"].values()), _ts(fake_clock.now + 60))
        assert [await conn.fetchval(f"SELECT count(*) FROM square.{t}") for t in  # noqa: S608
                ("customer_versions", "customer_group_membership_history")] == counts == [1, 1]
