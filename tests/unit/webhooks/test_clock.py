from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from webhooks.views import _utc_now_iso


def test_received_at_is_rfc3339_utc_with_milliseconds_and_current() -> None:
    before_ms = time.time_ns() // 1_000_000
    value = _utc_now_iso()
    after_ms = time.time_ns() // 1_000_000
    assert len(value) == len("2024-01-02T03:04:05.678Z") and value.endswith("Z")
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    # Current: the millisecond it was asked in (a bracket of the same clock, not a tolerance a stall can exceed).
    assert before_ms <= (parsed - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1) <= after_ms
