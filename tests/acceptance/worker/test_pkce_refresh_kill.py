"""A worker SIGKILLed in the middle of a PKCE refresh: Square has spent the seller's single-use refresh token and
issued new tokens, but the worker dies before it learns them. The seller still syncs afterwards (the access token
in use stays valid until its own expiry), the refresh in flight is on record, and the next refresh, refused, marks
the seller for re-authorization without stopping its sync."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import sys

import asyncpg

from emulator.config import EmulatorConfig, Knobs
from emulator.testing import run_emulator
from square_mirror.credentials.cipher import TokenCipher, new_key
from square_mirror.credentials.store import CredentialStore, Grant
from square_mirror.settings import Secret, Settings
from tests.mirror_check import assert_mirror_matches
from worker import runs
from worker.backfill import backfill
from worker.context import open_context
from worker.reconcile import run_lane

MERCHANT = "MLPKCEKILL01"
REDIRECT = "https://mirror.example/oauth/callback"


async def test_a_worker_killed_in_the_middle_of_a_pkce_refresh_leaves_the_seller_syncing(
    db_dsn: str, db_pool: asyncpg.Pool, redis_url: str
) -> None:
    key = new_key()
    # Square commits a refresh, then answers 10 s later: time enough to kill the worker waiting for the answer.
    config = EmulatorConfig(seed=5, customers=5, knobs=Knobs(oauth_answer_delay_ms=10_000))
    async with run_emulator(config) as emu:
        verifier = "pkce-verifier-" + "x" * 40
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
        query = await emu.authorize(MERCHANT, code_challenge=challenge, redirect_uri=REDIRECT)
        status, body = await emu.obtain_token(grant_type="authorization_code", code=query["code"],
                                              code_verifier=verifier, redirect_uri=REDIRECT)
        assert status == 200, body
        grant = Grant.from_response(body)
        assert grant.refresh_kind == "pkce"
        await emu.seed(customers=12, merchant_id=MERCHANT)
        store = CredentialStore(db_pool, TokenCipher([Secret(key)]))
        await store.save_grant(grant)
        await db_pool.execute("UPDATE square_private.seller_credentials "
                              "SET refreshed_at = now() - interval '8 days', connected_at = now() - interval '8 days'")

        app = emu.emulator
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SQUARE_", "DATABASE_", "REDIS_"))}
        env.update({"DATABASE_URL": db_dsn, "REDIS_URL": redis_url, "SQUARE_BASE_URL": emu.base_url,
                    "SQUARE_MIRROR_ENCRYPTION_KEYS": key, "SQUARE_APPLICATION_ID": app.application_id,
                    "SQUARE_APPLICATION_SECRET": app.application_secret, "SQUARE_MAX_REQUESTS_PER_SECOND": "0",
                    "WORKER_METRICS_PORT": "0", "PYTHONPATH": os.getcwd()})
        worker = await asyncio.create_subprocess_exec(sys.executable, "-m", "square_mirror", "worker", env=env,
                                                      stdout=asyncio.subprocess.DEVNULL,
                                                      stderr=asyncio.subprocess.DEVNULL)
        try:
            # The worker catches up on the overdue refresh at start; wait until Square has committed it.
            for _ in range(600):
                tokens = (await emu.admin("GET", f"oauth?merchant_id={MERCHANT}"))["grants"][0]["access_tokens"]
                if len(tokens) == 2:
                    break
                assert worker.returncode is None, "the worker exited"
                await asyncio.sleep(0.05)
            assert len(tokens) == 2, "the worker never asked Square for a refresh"
        finally:
            worker.kill()  # SIGKILL: no cleanup, no chance to store anything
            await worker.wait()

        row = await db_pool.fetchrow("SELECT status, refresh_started_at FROM square_private.seller_credentials")
        assert row is not None and row["status"] == "active" and row["refresh_started_at"] is not None
        await emu.set_faults(oauth_answer_delay_ms=0)

        settings = Settings(square_base_url=emu.base_url, square_max_requests_per_second=0,
                            encryption_keys=(Secret(key),), square_application_id=app.application_id,
                            square_application_secret=Secret(app.application_secret))
        async with open_context(settings, pool=db_pool) as wc:
            assert wc.sellers is not None
            # The seller still syncs: the access token in use was not touched by the lost refresh.
            assert (await backfill(wc.sync, MERCHANT, concurrency=2)).status == runs.SUCCEEDED
            await assert_mirror_matches(db_pool, emu, MERCHANT)
            # The next refresh presents the spent token: refused, so the seller must connect again, and meanwhile
            # it keeps syncing.
            result = await wc.sellers.refresher.refresh(MERCHANT)
            assert (result.outcome, result.status) == ("failed", "reauthorize")
            app.merchants[MERCHANT].create_customer({"given_name": "After", "family_name": "Kill"})
            assert (await run_lane(wc, MERCHANT, "incremental")).status == runs.SUCCEEDED
            await assert_mirror_matches(db_pool, emu, MERCHANT)
