"""Keyset cursors: paging while the directory changes never repeats nor skips a profile that existed,
unchanged, for the whole walk (a property checked with hypothesis)."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from emulator.config import Knobs
from emulator.state import MerchantState

NAMES = ["Ann", "Bob", "Cy", "Dee", "Eve", "Fay", "Gus", "Hal"]


def make_state(n: int) -> MerchantState:
    state = MerchantState("M", "t", random.Random(0), Knobs(), lambda m, e: None)
    for i in range(n):
        state.create_customer({"given_name": NAMES[i % len(NAMES)], "family_name": str(i)})
    return state


@settings(max_examples=40, deadline=None)
@given(n=st.integers(5, 60), limit=st.integers(1, 10), sort=st.sampled_from(["DEFAULT", "CREATED_AT"]),
       order=st.sampled_from(["ASC", "DESC"]), ops=st.lists(st.tuples(st.sampled_from(["create", "delete", "rename"]),
                                                                        st.integers(0, 10_000)), max_size=20))
def test_paging_under_mutation(n: int, limit: int, sort: str, order: str, ops: list[tuple[str, int]]) -> None:
    state = make_state(n)
    initial = set(state.customers)
    touched: set[str] = set()
    seen: list[str] = []
    cursor = None
    ops = list(ops)
    while True:
        recs, cursor, _ = state.page(sort_field=sort, order=order, limit=limit, cursor=cursor, fingerprint="f",
                                     predicates=None, count=False)
        seen += [r.id for r in recs]
        if ops:
            op, k = ops.pop()
            ids = sorted(state.customers)
            if op == "create":
                state.create_customer({"given_name": NAMES[k % len(NAMES)]})
            elif ids:
                target = ids[k % len(ids)]
                touched.add(target)
                if op == "delete":
                    state.delete_customer(target, None)
                else:
                    state.update_customer(target, {"given_name": NAMES[k % len(NAMES)] + "x"}, None,
                                          clear_null=True)
        if not cursor:
            break
    untouched = [i for i in seen if i not in touched]
    assert len(untouched) == len(set(untouched))  # a renamed profile may legitimately move and reappear
    assert (initial - touched) <= set(seen)
