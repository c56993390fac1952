"""Connecting a seller through the OAuth redirect and its revocation, against real Postgres and Redis, a real
receiver and a scripted Square: the redirect's job connects the seller and queues its backfill; a replay, a refused
code or an expired state connects nothing; a revocation takes the seller out of everything, once."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

import aiohttp
import asyncpg
import pytest
from arq import Retry
from arq.connections import ArqRedis

from square_mirror.constants import BACKFILL_JOB, CONNECT_SELLER_JOB, backfill_job_id
from square_mirror.credentials.cipher import TokenCipher, new_key
from square_mirror.credentials.oauth_state import new_state
from square_mirror.credentials.store import CredentialStore, Grant
from square_mirror.jobs import build_connect_job, build_event_job
from square_mirror.logs import configure_logging
from square_mirror.settings import Secret, Settings
from square_mirror.square_api import RetryPolicy, SquareClient
from square_mirror.tokens import NoToken
from tests.factories import webhook_body
from tests.integration.webhooks.support import arq_pool, queued_jobs, running_receiver, settings_for
from tests.integration.worker.support import job_ctx
from tests.scripted_square import ScriptedSquare, json_reply
from worker.context import WorkerContext, open_context
from worker.events.process import process_event
from worker.merchants import known_merchants
from worker.oauth import connect_seller
from worker.reconcile.jobs import backfill_job, reconcile_lane_job

KEYS = (Secret(new_key()),)
APP_ID = "sq0idp-the-app"
APP_SECRET = "sq0csp-the-application-secret"
REDIRECT_URL = "https://mirror.example.com/square/oauth/callback"
CODE = "sq0cgb-AUTHORIZATION-CODE-1234"
ACCESS = "EAAAl-the-access-token-of-the-seller"
REFRESH = "EQAAl-the-refresh-token-of-the-seller"
MERCHANT = "MLQW2MYBY81PZ"


def settings(base_url: str, redis_url: str) -> Settings:
    return replace(settings_for(redis_url), square_base_url=base_url, square_application_id=APP_ID,
                   square_application_secret=Secret(APP_SECRET), square_oauth_redirect_url=REDIRECT_URL,
                   encryption_keys=KEYS, square_max_requests_per_second=0, worker_metrics_port=0)


def obtained(merchant: str = MERCHANT) -> dict[str, Any]:
    """ObtainTokenResponse, as FACTS-2 §B.1's example."""
    return {"access_token": ACCESS, "expires_at": "2030-04-03T18:31:06Z", "merchant_id": merchant,
            "refresh_token": REFRESH, "short_lived": False, "token_type": "bearer"}


def revoked_event(merchant: str = MERCHANT, event_id: str = "e1d6ae37-5aa9-45a5-b525-b12caf819fdb",
                  revoked_at: str = "2031-08-14T15:51:00.246373287Z") -> dict[str, Any]:
    """FACTS-2 §B.6's example, with this test's seller, event and time."""
    return {"created_at": "2031-08-14T15:51:04.246373287Z", "data": {
        "id": "415641cf-eba2-4dfa-88cc-c4be1301fdc6", "object": {"revocation": {
            "revoked_at": revoked_at, "revoker_type": "MERCHANT"}}, "type": "revocation"},
        "event_id": event_id, "merchant_id": merchant, "type": "oauth.authorization.revoked"}


@pytest.fixture
async def arq(redis_url: str) -> AsyncIterator[ArqRedis]:
    async with arq_pool(redis_url) as pool:
        yield pool


@pytest.fixture
async def wc(db_pool: asyncpg.Pool, redis_url: str, arq: ArqRedis,
             square: tuple[ScriptedSquare, str]) -> AsyncIterator[WorkerContext]:
    """The worker's context as the worker builds it (queueing through arq), one Square try per call."""
    config = settings(square[1], redis_url)
    client = SquareClient.from_settings(config, retry=RetryPolicy(attempts=1))
    try:
        async with open_context(config, worker=True, pool=db_pool, client=client, redis=arq,
                                arq_redis=arq) as context:
            yield context
    finally:
        await client.close()


def connect_payload(state: str | None = None, code: str = CODE) -> dict[str, Any]:
    return build_connect_job(code, state or new_state(KEYS), TokenCipher(KEYS))


async def credentials(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT merchant_id, status, last_error FROM square_private.seller_credentials")


async def merchants(pool: asyncpg.Pool) -> dict[str, str]:
    return {r["merchant_id"]: r["auth_status"]
            for r in await pool.fetch("SELECT merchant_id, auth_status FROM square.merchants")}


async def connected_seller(wc: WorkerContext, merchant: str = MERCHANT) -> None:
    await CredentialStore(wc.pool, TokenCipher(KEYS)).save_grant(Grant.from_response(obtained(merchant)))
    assert wc.sellers is not None
    await wc.sellers.reload()


@contextlib.contextmanager
def captured_logs() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("DEBUG", stream=stream)
    try:
        yield stream
    finally:
        configure_logging("INFO")


# -- connecting ------------------------------------------------------------------------------------------------

async def test_a_redirect_queues_one_job_and_the_worker_connects_the_seller_and_queues_its_backfill(
    wc: WorkerContext, square: tuple[ScriptedSquare, str], redis_url: str, db_pool: asyncpg.Pool
) -> None:
    fake, base_url = square
    state = new_state(KEYS)
    async with running_receiver(settings(base_url, redis_url)) as receiver, aiohttp.ClientSession() as http, \
            http.get(receiver.base + "/square/oauth/callback",
                     params={"code": CODE, "response_type": "code", "state": state}) as response:
        assert response.status == 200
    [job] = await queued_jobs(redis_url)
    assert job.function == CONNECT_SELLER_JOB

    fake.script.append(json_reply(obtained()))
    result = await connect_seller(job_ctx(wc), *job.args)

    assert result == {"status": "connected", "merchant_id": MERCHANT, "backfill_queued": True}
    [sent] = fake.requests
    assert sent["path"] == "/oauth2/token" and "Authorization" not in sent["headers"]
    assert sent["body"] == {"client_id": APP_ID, "client_secret": APP_SECRET, "grant_type": "authorization_code",
                            "code": CODE, "redirect_uri": REDIRECT_URL}
    assert [(r["merchant_id"], r["status"]) for r in await credentials(db_pool)] == [(MERCHANT, "active")]
    assert await merchants(db_pool) == {MERCHANT: "ok"}
    assert wc.client.tokens.token_for(MERCHANT) == ACCESS
    assert MERCHANT in await known_merchants(wc)
    [backfill] = [queued for queued in await queued_jobs(redis_url) if queued.function != CONNECT_SELLER_JOB]
    assert (backfill.function, backfill.job_id, list(backfill.args)) == (BACKFILL_JOB, backfill_job_id(MERCHANT),
                                                                          [MERCHANT, False])


async def test_a_replayed_redirect_connects_nothing(
    wc: WorkerContext, square: tuple[ScriptedSquare, str], db_pool: asyncpg.Pool
) -> None:
    fake, _ = square
    payload = connect_payload()
    fake.script.append(json_reply(obtained()))
    assert (await connect_seller(job_ctx(wc), payload))["status"] == "connected"
    await db_pool.execute("DELETE FROM square_private.seller_credentials")
    assert await connect_seller(job_ctx(wc), payload) == {"status": "replayed"}
    assert len(fake.requests) == 1 and await credentials(db_pool) == []


async def test_a_refused_code_ends_the_job_and_spends_the_state(
    wc: WorkerContext, square: tuple[ScriptedSquare, str], db_pool: asyncpg.Pool, redis_url: str
) -> None:
    fake, _ = square
    payload = connect_payload()
    fake.script.append(json_reply({"errors": [{"category": "INVALID_REQUEST_ERROR", "code": "INVALID_VALUE",
                                               "detail": "Invalid authorization code"}]}, status=400))
    with captured_logs() as logs:
        assert await connect_seller(job_ctx(wc), payload) == {"status": "refused"}
    assert "connect_code_refused" in logs.getvalue()
    assert await credentials(db_pool) == [] and await merchants(db_pool) == {}
    assert await queued_jobs(redis_url) == []
    assert await connect_seller(job_ctx(wc), payload) == {"status": "replayed"}
    assert len(fake.requests) == 1


async def test_square_not_answering_retries_the_job_with_the_state_still_unused(
    wc: WorkerContext, square: tuple[ScriptedSquare, str], db_pool: asyncpg.Pool
) -> None:
    fake, _ = square
    payload = connect_payload()
    fake.script.append(json_reply({"errors": [{"category": "API_ERROR", "code": "SERVICE_UNAVAILABLE"}]}, status=503))
    with pytest.raises(Retry):
        await connect_seller(job_ctx(wc, job_try=1), payload)
    assert await db_pool.fetchval("SELECT count(*) FROM square_private.oauth_states") == 0
    fake.script.append(json_reply(obtained()))
    assert (await connect_seller(job_ctx(wc, job_try=2), payload))["status"] == "connected"


async def test_a_job_that_waited_past_its_state_connects_nothing(
    wc: WorkerContext, square: tuple[ScriptedSquare, str], db_pool: asyncpg.Pool
) -> None:
    fake, _ = square
    assert await connect_seller(job_ctx(wc), connect_payload(new_state(KEYS, lifetime=-1))) == {"status": "expired"}
    assert fake.requests == [] and await credentials(db_pool) == []


async def test_no_code_state_token_or_secret_reaches_a_log_line_or_a_repr(
    wc: WorkerContext, square: tuple[ScriptedSquare, str]
) -> None:
    fake, _ = square
    state = new_state(KEYS)
    fake.script += [json_reply(obtained()), json_reply({"errors": [{"code": "UNAUTHORIZED"}]}, status=401)]
    with captured_logs() as logs:
        await connect_seller(job_ctx(wc), connect_payload(state))
        await connect_seller(job_ctx(wc), connect_payload())
        await connect_seller(job_ctx(wc), connect_payload(state))
    output = logs.getvalue()
    assert "seller_connected" in output and "connect_code_refused" in output and "connect_state_replayed" in output
    secrets = (CODE, state, state.split(".")[2], ACCESS, REFRESH, APP_SECRET, KEYS[0].reveal())
    assert [s for s in secrets if s in output] == []
    shown = repr(wc) + repr(wc.settings) + repr(Grant.from_response(obtained()))
    assert [s for s in secrets if s in shown] == []


# -- revocation --------------------------------------------------------------------------------------------------

async def test_a_revocation_marks_the_seller_revoked_removes_its_token_and_known_merchants_drops_it(
    wc: WorkerContext, db_pool: asyncpg.Pool
) -> None:
    await connected_seller(wc)
    await connected_seller(wc, "OTHERSELLER1")
    assert MERCHANT in await known_merchants(wc)
    assert await process_event(job_ctx(wc), build_event_job(revoked_event())) == "applied"
    status = {r["merchant_id"]: (r["status"], r["last_error"]) for r in await credentials(db_pool)}
    assert status[MERCHANT][0] == "revoked" and "MERCHANT" in status[MERCHANT][1]
    assert status["OTHERSELLER1"][0] == "active"
    with pytest.raises(NoToken):
        wc.client.tokens.token_for(MERCHANT)
    assert (await merchants(db_pool))[MERCHANT] == "unauthorized"  # what `status` shows
    assert await known_merchants(wc) == ["OTHERSELLER1"]
    assert await db_pool.fetchval("SELECT outcome FROM square.webhook_events WHERE event_id = $1",
                                  revoked_event()["event_id"]) == "applied"


async def test_repeated_revocation_events_are_idempotent(wc: WorkerContext, db_pool: asyncpg.Pool) -> None:
    await connected_seller(wc)
    first = await process_event(job_ctx(wc), build_event_job(revoked_event()))
    again = await process_event(job_ctx(wc), build_event_job(revoked_event(event_id="second-token-revoked")))
    redelivered = await process_event(job_ctx(wc), build_event_job(revoked_event()))
    assert (first, again, redelivered) == ("applied", "stale", "duplicate")
    [row] = await credentials(db_pool)
    assert row["status"] == "revoked"


async def test_a_revocation_for_an_unknown_seller_is_recorded_and_ignored(
    wc: WorkerContext, db_pool: asyncpg.Pool, square: tuple[ScriptedSquare, str]
) -> None:
    assert await process_event(job_ctx(wc), build_event_job(revoked_event("NEVERSEEN01"))) == "ignored"
    assert await credentials(db_pool) == [] and await merchants(db_pool) == {}
    assert await db_pool.fetchval("SELECT count(*) FROM square.webhook_events") == 1
    assert square[0].requests == []


async def test_a_late_revocation_leaves_a_seller_who_connected_again_since(
    wc: WorkerContext, db_pool: asyncpg.Pool
) -> None:
    await connected_seller(wc)
    late = revoked_event(revoked_at="2001-01-01T00:00:00Z")
    assert await process_event(job_ctx(wc), build_event_job(late)) == "stale"
    assert [r["status"] for r in await credentials(db_pool)] == ["active"]


async def test_a_revoked_sellers_event_jobs_lanes_and_backfill_end_without_calling_square_or_retrying(
    wc: WorkerContext, db_pool: asyncpg.Pool, square: tuple[ScriptedSquare, str], redis_url: str
) -> None:
    await connected_seller(wc)
    await process_event(job_ctx(wc), build_event_job(revoked_event()))
    event = build_event_job(json.loads(webhook_body(1, merchant_id=MERCHANT, customer_id="CUST1")))
    assert await process_event(job_ctx(wc), event) == "ignored"  # no Retry: nothing deferred for hours
    lane = await reconcile_lane_job(job_ctx(wc), "incremental", MERCHANT)
    assert lane == {"merchant_id": MERCHANT, "lane": "incremental", "status": "withdrawn"}
    assert await backfill_job(job_ctx(wc), MERCHANT) == {"merchant_id": MERCHANT, "status": "withdrawn"}
    assert (await backfill_job(job_ctx(wc)))["queued"] == []
    assert square[0].requests == [] and await queued_jobs(redis_url) == []


async def test_a_lane_running_when_the_seller_is_revoked_ends_failed_as_unauthorized_at_its_next_call(
    wc: WorkerContext, db_pool: asyncpg.Pool, square: tuple[ScriptedSquare, str]
) -> None:
    from worker.reconcile.lanes import run_lane

    await connected_seller(wc)
    await process_event(job_ctx(wc), build_event_job(revoked_event()))
    run = await run_lane(wc, MERCHANT, "incremental")  # as if it had started before: no check at its start
    assert run.status == "failed" and run.error is not None and "SquareUnauthorized" in run.error
    assert square[0].requests == []


async def test_a_seller_with_a_personal_token_in_the_tokens_file_is_not_affected_by_a_revocation(
    wc: WorkerContext, db_pool: asyncpg.Pool, tmp_path: Any
) -> None:
    await connected_seller(wc)
    tokens_file = tmp_path / "tokens.json"
    tokens_file.write_text(json.dumps({MERCHANT: "EAAA-personal-token"}))
    from square_mirror.tokens import TokenSource

    wc.client.tokens = TokenSource(path=tokens_file)
    await process_event(job_ctx(wc), build_event_job(revoked_event()))
    assert wc.client.tokens.token_for(MERCHANT) == "EAAA-personal-token"
    assert not wc.client.tokens.withdrawn(MERCHANT) and MERCHANT in await known_merchants(wc)


async def test_known_merchants_lists_an_active_oauth_seller_not_yet_in_square_merchants(
    wc: WorkerContext, db_pool: asyncpg.Pool
) -> None:
    await CredentialStore(db_pool, TokenCipher(KEYS)).save_grant(Grant.from_response(obtained("FRESHSELLER1")))
    assert await merchants(db_pool) == {}
    assert await known_merchants(wc) == ["FRESHSELLER1"]


# -- against the emulator: Square's authorize page, ObtainToken, RevokeToken and the revocation webhook ------------

async def test_a_seller_connected_through_the_emulators_redirect_is_backfilled_and_its_revocation_stops_it(
    db_pool: asyncpg.Pool, redis_url: str, arq: ArqRedis
) -> None:
    from emulator import EmulatorConfig
    from emulator.testing import run_emulator
    from tests.factories import NOTIFICATION_URL, SIGNATURE_KEY
    from worker.events.process import process_event as run_event

    async with run_emulator(EmulatorConfig(seed=7, application_token="app-token")) as emu:
        config = replace(settings(emu.base_url, redis_url), square_application_id=emu.emulator.application_id,
                         square_application_secret=Secret(emu.emulator.application_secret),
                         square_application_access_token=Secret("app-token"))
        client = SquareClient.from_settings(config, retry=RetryPolicy(attempts=1))
        async with running_receiver(config) as receiver, aiohttp.ClientSession() as http, \
                open_context(config, worker=True, pool=db_pool, client=client, redis=arq, arq_redis=arq) as wc:
            await emu.subscribe(receiver.url, SIGNATURE_KEY, notification_url=NOTIFICATION_URL,
                                event_types=["oauth.authorization.revoked"])
            query = await emu.authorize(state=new_state(KEYS), redirect_uri=REDIRECT_URL)
            async with http.get(receiver.base + "/square/oauth/callback", params=query) as response:
                assert response.status == 200
            [connect] = await queued_jobs(redis_url)
            result = await connect_seller(job_ctx(wc), *connect.args)
            merchant = result["merchant_id"]
            assert result["status"] == "connected" and merchant in emu.emulator.merchants
            await emu.seed(3, merchant)
            [backfill] = [j for j in await queued_jobs(redis_url) if j.function == BACKFILL_JOB]
            assert (await backfill_job(job_ctx(wc), *backfill.args))["status"] == "succeeded"
            assert await db_pool.fetchval("SELECT count(*) FROM square.customers WHERE merchant_id = $1",
                                          merchant) == 3

            await wc.client.revoke_token(emu.emulator.application_secret,
                                         {"client_id": emu.emulator.application_id, "merchant_id": merchant})
            assert await emu.drain_webhooks(10)
            events = [j for j in await queued_jobs(redis_url) if j.function != BACKFILL_JOB
                      and j.function != CONNECT_SELLER_JOB]
            assert events and {j.args[0]["type"] for j in events} == {"oauth.authorization.revoked"}
            outcomes = [await run_event(job_ctx(wc), *j.args) for j in events]
            assert outcomes[0] == "applied" and set(outcomes[1:]) <= {"stale"}
            assert [r["status"] for r in await credentials(db_pool)] == ["revoked"]
            assert merchant not in await known_merchants(wc)
        await client.close()
