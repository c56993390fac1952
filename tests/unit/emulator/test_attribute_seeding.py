"""Seeding custom attributes writes values straight into the store (no events, no per-value index staging); its
speed is measured in bench/, not asserted here."""

from __future__ import annotations

import random

from emulator.config import Knobs
from emulator.seeding import seed_merchant
from emulator.state import MerchantState


def test_seeding_30k_profiles_writes_values_into_the_index_without_events() -> None:
    state = MerchantState("MSPEED", "token", random.Random(1), Knobs(), lambda merchant_id, event: None)
    result = seed_merchant(state, customers=30_000, seed=1,
                           custom_attributes={"definitions": 8, "share": 0.3, "min": 1, "max": 5})
    assert 20_000 < result["custom_attributes"]["values"] < 35_000
    assert len(state.index.holders) == 8  # the index holds every seeded value at once
    assert state.events.entries == []  # seeding is history: no events
