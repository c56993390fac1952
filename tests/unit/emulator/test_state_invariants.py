"""Random operation sequences keep the truth consistent: memberships match group_ids/segment_ids, IDs are
either live or tombstoned, merge redirects resolve, and every version bump is exactly one customer.updated
event (segment changes and group deletion never bump)."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from emulator.config import Knobs
from emulator.errors import SquareError
from emulator.state import MerchantState

OPS = st.lists(st.tuples(st.sampled_from(["create", "update", "delete", "group_add", "group_remove", "merge",
                                          "segment_add", "segment_remove", "group_delete", "group_create"]),
                         st.integers(0, 10_000), st.integers(0, 10_000)), min_size=1, max_size=60)


@settings(max_examples=60, deadline=None)
@given(ops=OPS)
def test_truth_invariants_hold(ops: list[tuple[str, int, int]]) -> None:
    events: list[dict[str, Any]] = []
    state = MerchantState("M", "t", random.Random(0), Knobs(), lambda m, e: events.append(e))
    state.create_group("G0", None)
    state.create_segment("S0")
    state.create_segment("S1")
    for op, a, b in ops:
        live = sorted(state.customers)
        groups = sorted(state.groups)
        segments = sorted(state.segments)
        pick = live[a % len(live)] if live else "NOPE"
        try:
            if op == "create" or not live:
                state.create_customer({"given_name": f"N{a}"})
            elif op == "update":
                state.update_customer(pick, {"nickname": f"n{b}"}, None, clear_null=True)
            elif op == "delete":
                state.delete_customer(pick, None)
            elif op in ("group_add", "group_remove") and groups:
                state.set_group(pick, groups[b % len(groups)], op == "group_add")
            elif op == "merge" and len(live) >= 2:
                other = live[b % len(live)]
                if other != pick:
                    state.merge([pick, other])
            elif op in ("segment_add", "segment_remove"):
                state.set_segment(pick, segments[b % len(segments)], op == "segment_add")
            elif op == "group_delete" and groups:
                state.delete_group(groups[b % len(groups)])
            elif op == "group_create":
                state.create_group(f"G{b}", None)
        except SquareError:
            pass
    dump = state.dump()
    customers = dump["customers"]
    assert not set(customers) & set(dump["tombstones"])
    for gid, members in dump["group_members"].items():
        assert set(members) == {c for c, doc in customers.items() if gid in (doc.get("group_ids") or [])}
    for sid, members in dump["segment_members"].items():
        assert set(members) == {c for c, doc in customers.items() if sid in (doc.get("segment_ids") or [])}
    for cid, tomb in dump["tombstones"].items():
        if tomb["merged_into"]:
            assert state.resolve(cid) is None or state.resolve(cid).id in customers  # type: ignore[union-attr]
    updates = Counter(e["data"]["id"] for e in events if e["type"] == "customer.updated")
    for cid, doc in customers.items():
        assert doc["version"] == updates[cid]
        assert "segment_ids" not in str([e["data"]["object"] for e in events if e["data"]["id"] == cid])
    assert {e["data"]["id"] for e in events if e["type"] == "customer.deleted"} == set(dump["tombstones"])


def test_merge_keeps_newest_fields_and_can_write_square_note() -> None:
    knobs = Knobs(merge_writes_note=True)
    state = MerchantState("M", "t", random.Random(0), knobs, lambda m, e: None)
    old, _ = state.create_customer({"given_name": "Mary", "family_name": "Doe", "email_address": "m@example.com"})
    new, _ = state.create_customer({"given_name": "Maria", "phone_number": "+14155550100"})
    new = state.update_customer(new.id, {"family_name": "Dover"}, None, clear_null=True)
    merged = state.merge([old.id, new.id]).doc
    assert (merged["given_name"], merged["family_name"]) == ("Maria", "Dover")
    assert merged["email_address"] == "m@example.com" and merged["phone_number"] == "+14155550100"
    assert merged["note"].startswith(" Merged on ")
    assert merged["note"].endswith("Following fields were not transferred to the current customer:"
                                   "First Name: Mary Last Name: Doe")
