"""Three OAuth sellers over simulated months: the emulator's clock moves past several token lifetimes (30 days each)
and the mirror keeps every seller in sync by refreshing tokens itself; a seller whose refresh token becomes invalid
is the only one marked, and the others carry on.

The mirror runs in this process (real Postgres, real Redis, the emulator as a real aiohttp server): the refresh job
and the reconcile lanes are called as the worker's cron would call them, eight days apart in simulated time. The
emulator's clock is a ManualClock, and the credentials' clock (``timefmt.utcnow`` as the credential store reads it)
moves with it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import pytest

import emulator.clock
from emulator.config import EmulatorConfig
from emulator.testing import ManualClock, run_emulator
from square_mirror.credentials import store as credential_store
from square_mirror.credentials.cipher import new_key
from square_mirror.credentials.store import Grant
from square_mirror.settings import Secret, Settings
from square_mirror.timefmt import utcnow
from tests.mirror_check import assert_mirror_matches
from worker import runs
from worker.backfill import backfill
from worker.context import open_context
from worker.reconcile import run_lane

SELLERS = ("MLMONTHS0001", "MLMONTHS0002", "MLMONTHS0003")
STEP = timedelta(days=8)


class Clocks:
    """The emulator's clock and the mirror's credential clock, moved together."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.emulator = ManualClock()
        self.offset = timedelta(0)
        monkeypatch.setattr(emulator.clock, "now", self.emulator)
        shifted: Callable[[], datetime] = lambda: utcnow() + self.offset  # noqa: E731
        monkeypatch.setattr(credential_store, "utcnow", shifted)

    def advance(self, delta: timedelta) -> None:
        self.emulator.advance(delta.total_seconds())
        self.offset += delta


def _create(emu: Any, merchant_id: str, n: int) -> None:
    """A new customer in the seller's directory, made in the seller's Dashboard (no webhook reaches the mirror
    here: the incremental lane must find it)."""
    emu.emulator.merchants[merchant_id].create_customer({"given_name": f"Month{n}", "family_name": merchant_id[-4:]})


@pytest.mark.slow
async def test_three_sellers_stay_in_sync_across_token_lifetimes(db_pool: asyncpg.Pool, redis_url: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    clocks = Clocks(monkeypatch)
    async with run_emulator(EmulatorConfig(seed=3, customers=20)) as emu:
        grants = {}
        for merchant_id in SELLERS:
            body = await emu.connect_seller(merchant_id)
            grants[merchant_id] = Grant.from_response(body, scopes=("CUSTOMERS_READ", "MERCHANT_PROFILE_READ"))
            await emu.seed(customers=15, merchant_id=merchant_id)
        app = emu.emulator
        settings = Settings(square_base_url=emu.base_url, square_max_requests_per_second=0,
                            encryption_keys=(Secret(new_key()),), square_application_id=app.application_id,
                            square_application_secret=Secret(app.application_secret), worker_metrics_port=0,
                            redis_url=Secret(redis_url))
        async with open_context(settings, pool=db_pool) as wc:
            assert wc.sellers is not None
            for grant in grants.values():
                await wc.sellers.store.save_grant(grant)
            await wc.sellers.reload()
            for merchant_id in SELLERS:
                assert (await backfill(wc.sync, merchant_id, concurrency=2)).status == runs.SUCCEEDED
                await assert_mirror_matches(db_pool, emu, merchant_id)

            broken = SELLERS[1]
            for step in range(8):  # 64 days: more than two access token lifetimes
                clocks.advance(STEP)
                if step == 4:  # this seller's refresh token stops working for good
                    await emu.admin("POST", "oauth/invalidate-refresh", {"merchant_id": broken})
                results = {r.merchant_id: r for r in await wc.sellers.refresh_due()}
                for merchant_id in SELLERS:
                    if merchant_id == broken and step >= 4:
                        continue
                    assert results[merchant_id].outcome == "refreshed", (step, results)
                    _create(emu, merchant_id, step)
                    run = await run_lane(wc, merchant_id, "incremental")
                    assert run.status == runs.SUCCEEDED, (step, merchant_id, run.error)
                    await assert_mirror_matches(db_pool, emu, merchant_id)

            listing = {row["merchant_id"]: row for row in await wc.sellers.store.listing()}
            assert listing[broken]["status"] == "reauthorize"
            assert all(listing[m]["status"] == "active" for m in SELLERS if m != broken)
            # Refreshed eight days apart: none of the healthy sellers' tokens ever came near its 30 days.
            for merchant_id in SELLERS:
                if merchant_id != broken:
                    assert listing[merchant_id]["refreshed_at"] >= utcnow() + clocks.offset - STEP
