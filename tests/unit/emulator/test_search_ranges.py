"""updated_at/created_at ranges (start inclusive, end exclusive) give the same answer whether or not the
index narrows the walk, across pages and both sort orders."""

from __future__ import annotations

import random

import pytest

from emulator.clock import parse_rfc3339, rfc3339_ms, rfc3339_s
from emulator.config import Knobs
from emulator.search import compile_filter
from emulator.seeding import seed_merchant
from emulator.state import MerchantState


@pytest.fixture(scope="module")
def state() -> MerchantState:
    st = MerchantState("M", "t", random.Random(3), Knobs(), lambda m, e: None)
    seed_merchant(st, customers=3000, seed=1)
    return st


@pytest.mark.parametrize("width", [0.001, 0.2, 0.9])
@pytest.mark.parametrize(("sort", "order"), [("CREATED_AT", "ASC"), ("DEFAULT", "DESC")])
def test_updated_at_range_matches_brute_force(state: MerchantState, width: float, sort: str, order: str) -> None:
    times = sorted(r.updated_ts for r in state.customers.values())
    lo = times[len(times) // 3]
    hi = times[min(len(times) - 1, len(times) // 3 + int(width * len(times)))]
    flt = {"updated_at": {"start_at": rfc3339_s(lo), "end_at": rfc3339_s(hi)}}
    preds = compile_filter(flt, state.groups, state.segments, b"")
    expected = {r.id for r in state.customers.values() if r.public and lo <= r.updated_ts < hi}
    got: list[str] = []
    cursor = None
    total = None
    while True:
        recs, cursor, total = state.page(sort_field=sort, order=order, limit=100, cursor=cursor, fingerprint="q",
                                         predicates=preds, count=True)
        got += [r.id for r in recs]
        if not cursor:
            break
    assert len(got) == len(set(got)) and set(got) == expected and total == len(expected)
    key = (lambda i: state.customers[i].ckey) if sort == "CREATED_AT" else (lambda i: state.customers[i].dkey)
    assert got == sorted(got, key=key, reverse=order == "DESC")


@pytest.mark.parametrize("bounds", [(0.3, 0.31), (0.0, 0.5), (0.5, None), (None, 0.2), (None, None), (0.99, 1.0)])
@pytest.mark.parametrize("order", ["ASC", "DESC"])
def test_created_at_range_matches_brute_force(state: MerchantState, bounds: tuple[float | None, float | None],
                                              order: str) -> None:
    """The created_at walk starts and stops by bisection (a backfill's partitions): same pages as a full scan,
    with millisecond bounds that fall between, and exactly on, customers' creation times."""
    times = sorted(r.created_ts for r in state.customers.values())

    def at(frac: float | None) -> float | None:
        return None if frac is None else times[min(len(times) - 1, int(frac * len(times)))]

    lo, hi = at(bounds[0]), at(bounds[1])
    for shift in (0.0, 0.0004, -0.0004):
        start = None if lo is None else lo + shift
        end = None if hi is None else hi + shift
        rng = {k: rfc3339_ms(v) for k, v in (("start_at", start), ("end_at", end)) if v is not None}
        preds = compile_filter({"created_at": rng}, state.groups, state.segments, b"")
        s_ts = None if start is None else parse_rfc3339(rng["start_at"])
        e_ts = None if end is None else parse_rfc3339(rng["end_at"])
        expected = sorted((r.ckey for r in state.customers.values() if r.public
                           and (s_ts is None or r.created_ts >= s_ts) and (e_ts is None or r.created_ts < e_ts)),
                          reverse=order == "DESC")
        got: list[tuple[str, str]] = []
        cursor = None
        while True:
            recs, cursor, total = state.page(sort_field="CREATED_AT", order=order, limit=100, cursor=cursor,
                                             fingerprint="c", predicates=preds, count=True)
            got += [r.ckey for r in recs]
            assert total == len(expected)
            if not cursor:
                break
        assert got == expected
