"""Fixtures of the emulator's tests."""

from __future__ import annotations

import pytest

import emulator.clock
from emulator.testing import ManualClock


@pytest.fixture
def manual_clock(monkeypatch: pytest.MonkeyPatch) -> ManualClock:
    """The emulator's clock, standing still until the test advances it (index lag, cursor expiry)."""
    clock = ManualClock()
    monkeypatch.setattr(emulator.clock, "now", clock)
    return clock
