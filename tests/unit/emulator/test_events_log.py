"""EventLog keeps its searchable flags and sequence numbers aligned with the entries; SearchEvents merges
several sellers' logs by (created_at second, emission order) and pages with a keyset cursor."""

from __future__ import annotations

import itertools
import random
from typing import Any

import orjson
import pytest

from emulator.cli import build_parser, config_from_args
from emulator.config import Knobs
from emulator.errors import SquareError
from emulator.events import RETENTION_SECONDS, EventLog, search_events
from emulator.state import MerchantState

NOW = 2_000_000_000.0


def event(n: int, kind: str = "customer.created", merchant_id: str = "M") -> dict[str, Any]:
    return {"merchant_id": merchant_id, "type": kind, "event_id": f"e{n}", "created_at": "x", "data": {"id": str(n)}}


def ids(result: dict[str, Any]) -> list[str]:
    return [e["event_id"] for e in result.get("events", [])]


def run(sources: list[tuple[str, EventLog]], body: dict[str, Any]) -> dict[str, Any]:
    return search_events(sources, body, orjson.dumps(body), NOW)


def test_drop_and_prune_keep_flags_and_seqs_aligned() -> None:
    log = EventLog(max_entries=10)
    for n in range(25):
        log.append(NOW - 100 + n, event(n), searchable=n % 2 == 0, seq=1000 + n)
    assert len(log.entries) == len(log.searchable) == len(log.seqs) <= 10
    for (_, e), flag, seq in zip(log.entries, log.searchable, log.seqs, strict=True):
        n = int(e["data"]["id"])
        assert flag == (n % 2 == 0) and seq == 1000 + n
    old = EventLog()
    old.append(NOW - RETENTION_SECONDS - 5, event(1), searchable=True, seq=1)
    old.append(NOW - 5, event(2), searchable=False, seq=2)
    old.append(NOW - 4, event(3), searchable=True, seq=3)
    old.prune(NOW)
    assert [e["event_id"] for _, e in old.entries] == ["e2", "e3"]
    assert list(old.searchable) == [0, 1] and list(old.seqs) == [2, 3] and old.dropped == 1
    assert old.to_json() == [[NOW - 5, event(2), False, 2], [NOW - 4, event(3), True, 3]]


def test_unsearchable_events_are_never_returned() -> None:
    log = EventLog()
    for n in range(6):
        log.append(NOW - 60 + n, event(n), searchable=n in (1, 4), seq=n)
    assert ids(run([("M", log)], {})) == ["e4", "e1"]
    only_unsearchable = EventLog()
    only_unsearchable.append(NOW - 1, event(9), searchable=False, seq=9)
    assert run([("M", only_unsearchable)], {}) == {}


def test_merge_orders_by_second_then_emission_and_pages_with_keyset_cursor() -> None:
    seq = itertools.count(1)
    a, b = EventLog(), EventLog()
    # Same second for e0..e3 across sellers: emission order decides; e4 is a later second.
    for n, (log, ts) in enumerate([(a, NOW - 10.9), (b, NOW - 10.5), (a, NOW - 10.2), (b, NOW - 10.1),
                                   (a, NOW - 3.0)]):
        log.append(ts, event(n), seq=next(seq))
    sources = [("MA", a), ("MB", b)]
    assert ids(run(sources, {"query": {"sort": {"order": "ASC"}}})) == ["e0", "e1", "e2", "e3", "e4"]
    seen: list[str] = []
    body: dict[str, Any] = {"limit": 2}
    while True:
        page = run(sources, body)
        seen += ids(page)
        if "cursor" not in page:
            break
        body["cursor"] = page["cursor"]
    assert seen == ["e4", "e3", "e2", "e1", "e0"]
    assert ids(run(sources, {"query": {"filter": {"merchant_ids": ["MB"]}}})) == ["e3", "e1"]
    with pytest.raises(SquareError) as bad:
        run(sources, {"cursor": "bm90LWEtY3Vyc29y"})
    assert bad.value.errors[0]["code"] == "INVALID_CURSOR"


def test_merchant_state_flags_events_by_enablement_at_emission() -> None:
    seq = itertools.count(1)
    state = MerchantState("M", "t", random.Random(0), Knobs(), lambda m, e: None, next_seq=lambda: next(seq))
    assert state.events_enabled is False and state.token_kind == "personal"
    rec, _ = state.create_customer({"given_name": "A"})
    state.set_events_enabled(True, "seller")
    state.update_customer(rec.id, {"nickname": "x"}, None, clear_null=False)
    state.revoked = True
    state.update_customer(rec.id, {"nickname": "y"}, None, clear_null=False)
    assert list(state.events.searchable) == [0, 1, 0] and list(state.events.seqs) == [1, 2, 3]
    restored = MerchantState("M", "t", random.Random(0), Knobs(), lambda m, e: None)
    restored.restore(orjson.loads(orjson.dumps(state.snapshot())))
    assert restored.events.to_json() == state.events.to_json()
    assert restored.events_dump() == state.events_dump()
    legacy = state.snapshot()
    legacy["events"] = [[ts, e] for ts, e, *_ in legacy["events"]]
    del legacy["events_state"]
    restored.restore(legacy)  # snapshots from before the flag: those events stay searchable
    assert list(restored.events.searchable) == [1, 1, 1]


def test_knob_scope_is_checked() -> None:
    knobs = Knobs()
    knobs.merge({"events_enablement_scope": "application"})
    assert knobs.events_enablement_scope == "application"
    with pytest.raises(ValueError, match="events_enablement_scope"):
        knobs.merge({"events_enablement_scope": "merchant"})


def test_cli_seller_kinds_application_token_and_instant_profiles() -> None:
    args = build_parser().parse_args([
        "--seller", "MA:tok-a", "--seller", "MO:tok-o:oauth", "--seller", "MP:tok:with:colons:personal",
        "--seller", "MQ:tok:colon", "--application-token", "app-pat", "--customers", "5",
        "--instant-profiles", "3", "--knob", "events_enablement_scope=\"application\""])
    cfg = config_from_args(args)
    assert cfg.sellers == {"MA": "tok-a", "MO": "tok-o", "MP": "tok:with:colons", "MQ": "tok:colon"}
    assert cfg.token_kinds == {"MO": "oauth"}
    assert cfg.application_token == "app-pat" and cfg.instant_profiles == 3
    assert cfg.knobs.events_enablement_scope == "application" and cfg.knobs.events_enabled_by_default is False
    for bad in (["--seller", "MA:tok-a", "--application-token", "tok-a"], ["--knob", "events_enablement_scope=\"x\""],
                ["--seller", "MA::oauth"]):
        with pytest.raises(SystemExit):
            config_from_args(build_parser().parse_args(bad))
