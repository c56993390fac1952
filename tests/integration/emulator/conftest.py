"""Fixtures of the emulator's tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

import emulator.clock
from emulator.testing import ManualClock
from tests.integration.emulator.helpers import HookReceiver, receiving


@pytest.fixture
def manual_clock(monkeypatch: pytest.MonkeyPatch) -> ManualClock:
    """The emulator's clock, standing still until the test advances it (index lag, cursor expiry)."""
    clock = ManualClock()
    monkeypatch.setattr(emulator.clock, "now", clock)
    return clock


@pytest.fixture
async def hook_receiver() -> AsyncIterator[HookReceiver]:
    """A real HTTP endpoint recording the webhooks it is sent."""
    async with receiving() as receiver:
        yield receiver
