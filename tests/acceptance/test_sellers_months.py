"""Three OAuth sellers over simulated months: the emulator's clock moves past several token lifetimes (30 days each)
and the mirror keeps every seller in sync by refreshing tokens itself; a seller whose refresh token becomes invalid
is the only one marked, and the others carry on; a seller who revokes access stops at once, and
``sellers remove --purge`` leaves no row of it. No token, refresh token or client secret reaches a log line.

The mirror runs in this process (real Postgres, real Redis, the emulator as a real aiohttp server): the refresh job
and the reconcile lanes are called as the worker's cron would call them, eight days apart in simulated time. The
emulator's clock is a ManualClock, and the credentials' clock (``timefmt.utcnow`` as the credential store reads it)
moves with it.
"""

from __future__ import annotations

import io
import json
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
from square_mirror.jobs import build_event_job
from square_mirror.logs import configure_logging
from square_mirror.metrics import SELLERS as SELLERS_BY_STATUS
from square_mirror.metrics import TOKEN_REFRESHES
from square_mirror.settings import Secret, Settings
from square_mirror.timefmt import utcnow
from tests.integration.worker.support import job_ctx
from tests.mirror_check import assert_mirror_matches
from worker import runs
from worker.backfill import backfill
from worker.commands.sellers import seller_rows
from worker.context import open_context
from worker.events.process import process_event
from worker.merchants import known_merchants
from worker.purge import purge_seller, seller_tables
from worker.reconcile import run_lane
from worker.reconcile.jobs import reconcile_lane_job

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
    logs = io.StringIO()
    configure_logging("DEBUG", stream=logs)
    refreshed_before = TOKEN_REFRESHES.labels("refreshed")._value.get()
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
            # The refreshes show in `sellers list` and in the metrics.
            async with db_pool.acquire() as conn:
                shown = {row["merchant_id"]: row for row in await seller_rows(conn, settings)}
            assert shown[broken]["status"] == "reauthorize" and shown[SELLERS[0]]["status"] == "active"
            assert TOKEN_REFRESHES.labels("refreshed")._value.get() - refreshed_before >= 2 * 8 + 4
            assert SELLERS_BY_STATUS.labels("reauthorize")._value.get() == 1

            # A seller revokes access in their Dashboard: Square sends oauth.authorization.revoked.
            revoking = SELLERS[2]
            await emu.admin("POST", f"sellers/{revoking}/revoke-authorization", {})
            revocation = {"merchant_id": revoking, "type": "oauth.authorization.revoked", "event_id": "revoked-1",
                          "created_at": "2030-01-01T00:00:00.000000000Z",
                          "data": {"type": "revocation", "id": "n/a", "object": {"revocation": {
                              "revoked_at": "2030-01-01T00:00:00.000000000Z", "revoker_type": "MERCHANT"}}}}
            assert await process_event(job_ctx(wc), build_event_job(revocation)) == "applied"
            assert revoking not in await known_merchants(wc)  # the cron lanes and --all skip it
            job = await reconcile_lane_job(job_ctx(wc), "incremental", revoking)
            assert job["status"] == "withdrawn"  # its next job stops before any Square call
            _create(emu, SELLERS[0], 99)  # the others carry on
            assert (await run_lane(wc, SELLERS[0], "incremental")).status == runs.SUCCEEDED
            await assert_mirror_matches(db_pool, emu, SELLERS[0])

            async with db_pool.acquire() as conn:
                removed = await purge_seller(conn, revoking)
                assert sum(removed.values()) > 0
                for table in await seller_tables(conn):
                    schema, name = table.split(".", 1)
                    left = await conn.fetchval(
                        f'SELECT count(*) FROM "{schema}"."{name}" WHERE merchant_id = $1', revoking)  # noqa: S608 (catalog names)
                    assert left == 0, table
                kept = await conn.fetchval("SELECT count(*) FROM square.customers WHERE merchant_id = $1",
                                           SELLERS[0])
                assert kept > 0

        state = await emu.admin("GET", "oauth")
        secrets_ = {app.application_secret}
        for grant in state["grants"]:
            secrets_.update(t["token"] for t in grant["access_tokens"])
            secrets_.update(str(v) for k, v in grant.items() if "refresh" in k and isinstance(v, str) and len(v) > 20)
    configure_logging("INFO")  # flushes the lines still waiting
    written = logs.getvalue()
    assert "token_refreshed" in written  # the log was captured
    leaked = [s for s in secrets_ if s and s in written]
    assert not leaked, f"{len(leaked)} secrets in the log"
    assert all(isinstance(json.loads(line), dict) for line in written.splitlines() if line.strip())
