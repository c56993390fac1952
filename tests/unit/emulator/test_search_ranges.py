"""updated_at/created_at ranges (start inclusive, end exclusive) give the same answer whether or not the
index narrows the walk, across pages and both sort orders."""

from __future__ import annotations

import random

import pytest

from emulator.clock import rfc3339_s
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
