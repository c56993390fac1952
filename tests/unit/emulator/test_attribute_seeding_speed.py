"""Seeding custom attributes stays fast: values are written straight into the store (no events, no per-value
index staging), so a large directory with a third of its profiles holding 1-5 values seeds in seconds."""

from __future__ import annotations

import random
import time

from emulator.config import Knobs
from emulator.seeding import seed_merchant
from emulator.state import MerchantState


def test_seeding_30k_profiles_with_custom_attributes_takes_seconds_not_minutes() -> None:
    state = MerchantState("MSPEED", "token", random.Random(1), Knobs(), lambda merchant_id, event: None)
    started = time.perf_counter()
    result = seed_merchant(state, customers=30_000, seed=1,
                           custom_attributes={"definitions": 8, "share": 0.3, "min": 1, "max": 5})
    elapsed = time.perf_counter() - started
    assert 20_000 < result["custom_attributes"]["values"] < 35_000
    assert len(state.index.holders) == 8  # the index holds every seeded value at once
    assert state.events.entries == []  # seeding is history: no events
    assert elapsed < 10, elapsed  # ~1.2 s on the shared 2-core machine (100,000 profiles: ~4 s)
