from __future__ import annotations

import time
from datetime import UTC, datetime

from webhooks.views import _utc_now_iso


def test_received_at_is_rfc3339_utc_with_milliseconds_and_current() -> None:
    for _ in range(3):
        value = _utc_now_iso()
        assert len(value) == len("2024-01-02T03:04:05.678Z") and value.endswith("Z")
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        assert abs((datetime.now(UTC) - parsed).total_seconds()) < 1
        time.sleep(0.6)  # crosses a second boundary at least once
