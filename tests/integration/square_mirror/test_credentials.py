"""Sellers' credentials against real Postgres and a scripted Square: stored encrypted, refreshed by the right flow,
never lost, one refresh at a time, and an ACCESS_TOKEN_EXPIRED answer refreshed and retried once."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import asyncpg
from aiohttp import web

from square_mirror.credentials.cipher import TokenCipher, new_key
from square_mirror.credentials.refresh import Refresher
from square_mirror.credentials.store import CredentialStore, Grant
from square_mirror.settings import Secret
from square_mirror.square_api import RetryPolicy, SquareClient
from square_mirror.tokens import TokenSource
from tests.scripted_square import ScriptedSquare, json_reply

KEY = Secret(new_key())
SECRET = Secret("sq0csp-app-secret")


def _store(pool: asyncpg.Pool) -> CredentialStore:
    return CredentialStore(pool, TokenCipher([KEY]))


def _client(base_url: str) -> SquareClient:
    return SquareClient(base_url=base_url, version="2025-08-20", tokens=TokenSource(),
                        retry=RetryPolicy(attempts=1))


def _grant(merchant: str = "M1", access: str = "EAAA-one", refresh: str = "EQAA-one", *, pkce: bool = False) -> Grant:
    body: dict[str, Any] = {"merchant_id": merchant, "access_token": access, "refresh_token": refresh,
                            "expires_at": "2030-01-31T00:00:00Z"}
    if pkce:
        body["refresh_token_expires_at"] = "2030-04-01T00:00:00Z"
    return Grant.from_response(body)


def _answer(access: str, refresh: str | None, merchant: str = "M1", *, pkce: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"access_token": access, "token_type": "bearer", "expires_at": "2030-03-02T00:00:00Z",
                            "merchant_id": merchant, "short_lived": False}
    if refresh:
        body["refresh_token"] = refresh
    if pkce:
        body["refresh_token_expires_at"] = "2030-06-01T00:00:00Z"
    return body


async def test_tokens_are_stored_encrypted_and_read_back(db_pool: asyncpg.Pool) -> None:
    store = _store(db_pool)
    await store.save_grant(_grant())
    raw = await db_pool.fetchrow("SELECT access_token, refresh_token FROM square_private.seller_credentials")
    assert raw is not None and "EAAA" not in raw["access_token"] and "EQAA" not in raw["refresh_token"]
    assert {m: t.reveal() for m, t in (await store.usable_tokens()).items()} == {"M1": "EAAA-one"}


async def test_a_code_flow_refresh_keeps_the_reusable_refresh_token(
    db_pool: asyncpg.Pool, square: tuple[ScriptedSquare, str]
) -> None:
    fake, url = square
    store = _store(db_pool)
    await store.save_grant(_grant())
    fake.script.append(json_reply(_answer("EAAA-two", "EQAA-one")))
    refresher = Refresher(store, _client(url), "sq0idp-app", SECRET)
    assert (await refresher.refresh("M1")).outcome == "refreshed"
    sent = fake.requests[0]
    assert sent["path"] == "/oauth2/token" and "Authorization" not in sent["headers"]
    assert sent["body"] == {"client_id": "sq0idp-app", "grant_type": "refresh_token", "refresh_token": "EQAA-one",
                            "client_secret": "sq0csp-app-secret"}
    assert (await store.usable_tokens())["M1"].reveal() == "EAAA-two"


async def test_a_pkce_refresh_stores_the_next_single_use_token_and_sends_no_secret(
    db_pool: asyncpg.Pool, square: tuple[ScriptedSquare, str]
) -> None:
    fake, url = square
    store = _store(db_pool)
    await store.save_grant(_grant(pkce=True))
    fake.script += [json_reply(_answer("EAAA-two", "EQAA-two", pkce=True)),
                    json_reply(_answer("EAAA-three", "EQAA-three", pkce=True))]
    refresher = Refresher(store, _client(url), "sq0idp-app", SECRET)
    assert (await refresher.refresh("M1")).outcome == "refreshed"
    assert (await refresher.refresh("M1")).outcome == "refreshed"
    assert [r["body"]["refresh_token"] for r in fake.requests] == ["EQAA-one", "EQAA-two"]
    assert all("client_secret" not in r["body"] for r in fake.requests)
    async with db_pool.acquire() as conn:
        held = await store.refresh_token(conn, "M1")
    assert held is not None and held[1] is not None and held[1].reveal() == "EQAA-three"


async def test_a_refused_refresh_marks_the_seller_reauthorize_and_keeps_its_token_in_use(
    db_pool: asyncpg.Pool, square: tuple[ScriptedSquare, str]
) -> None:
    fake, url = square
    store = _store(db_pool)
    await store.save_grant(_grant())
    await store.save_grant(_grant("M2", "EAAA-other", "EQAA-other"))
    fake.script.append(json_reply({"errors": [{"category": "INVALID_REQUEST_ERROR", "code": "BAD_REQUEST",
                                               "detail": "refresh token invalid"}]}, status=400))
    result = await Refresher(store, _client(url), "sq0idp-app", SECRET).refresh("M1")
    assert (result.outcome, result.status) == ("failed", "reauthorize")
    rows = {r["merchant_id"]: r for r in await store.listing()}
    assert rows["M1"]["status"] == "reauthorize" and rows["M1"]["refresh_failures"] == 1
    assert rows["M1"]["next_refresh_at"] is not None  # retried with backoff, in case the refusal passes
    assert rows["M2"]["status"] == "active"  # the others carry on
    assert set(await store.usable_tokens()) == {"M1", "M2"}  # its access token works until it expires
    assert "EQAA" not in str(rows) and "EAAA" not in str(rows)


async def test_a_transient_failure_is_retried_later_with_backoff(
    db_pool: asyncpg.Pool, square: tuple[ScriptedSquare, str]
) -> None:
    fake, url = square
    store = _store(db_pool)
    await store.save_grant(_grant())
    fake.script.append(json_reply({"errors": [{"category": "API_ERROR", "code": "SERVICE_UNAVAILABLE"}]},
                                  status=503))
    result = await Refresher(store, _client(url), "sq0idp-app", SECRET).refresh("M1")
    assert (result.outcome, result.status) == ("failed", "refresh_failed")
    await db_pool.execute("UPDATE square_private.seller_credentials SET refreshed_at = now() - interval '8 days'")
    assert await store.due_for_refresh(timedelta(days=7)) == []  # not before its backoff has passed
    await db_pool.execute("UPDATE square_private.seller_credentials SET next_refresh_at = now() - interval '1 s'")
    assert await store.due_for_refresh(timedelta(days=7)) == ["M1"]


async def test_one_refresh_at_a_time_per_seller(db_pool: asyncpg.Pool, square: tuple[ScriptedSquare, str]) -> None:
    fake, url = square
    store = _store(db_pool)
    await store.save_grant(_grant())
    answered = asyncio.Event()

    async def slow(_request: web.Request) -> web.StreamResponse:
        await answered.wait()
        return web.json_response(_answer("EAAA-two", "EQAA-one"))

    fake.script.append(slow)
    refresher = Refresher(store, _client(url), "sq0idp-app", SECRET)
    first = asyncio.create_task(refresher.refresh("M1"))
    while not fake.requests:  # the first refresh holds the seller's lock and waits on Square
        await asyncio.sleep(0.01)
    assert (await refresher.refresh("M1")).outcome == "skipped"
    answered.set()
    assert (await first).outcome == "refreshed"
    assert len(fake.requests) == 1


async def test_an_expired_token_is_refreshed_and_the_call_retried_once(
    db_pool: asyncpg.Pool, square: tuple[ScriptedSquare, str]
) -> None:
    fake, url = square
    store = _store(db_pool)
    await store.save_grant(_grant())
    client = _client(url)
    refresher = Refresher(store, client, "sq0idp-app", SECRET)

    async def reload() -> None:
        client.tokens.set_oauth(await store.usable_tokens())

    refresher.on_refreshed = reload
    await reload()

    async def on_expired(merchant_id: str) -> None:
        await refresher.refresh(merchant_id)

    client.on_token_expired = on_expired
    expired = {"errors": [{"category": "AUTHENTICATION_ERROR", "code": "ACCESS_TOKEN_EXPIRED"}]}
    fake.script += [json_reply(expired, status=401), json_reply(_answer("EAAA-two", "EQAA-one")),
                    json_reply({"customer": {"id": "C1", "created_at": "2026-01-01T00:00:00Z", "version": 1}})]
    customer = await client.retrieve_customer("M1", "C1")
    assert customer is not None and customer["id"] == "C1"
    assert [r["path"] for r in fake.requests] == ["/v2/customers/C1", "/oauth2/token", "/v2/customers/C1"]
    assert [r["headers"].get("Authorization") for r in fake.requests] == [
        "Bearer EAAA-one", None, "Bearer EAAA-two"]
    await client.close()
