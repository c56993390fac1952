"""OAuth (FACTS-2 B): the authorize page, ObtainToken (code flow and PKCE), token lifetimes on the emulator clock,
RetrieveTokenStatus, RevokeToken and the oauth.authorization.revoked webhook, and the fault switches."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from square.utils.webhooks_helper import verify_signature
from yarl import URL

import emulator.clock
from emulator import EmulatorConfig, Knobs
from emulator.testing import EmulatorHandle, ManualClock, run_emulator
from tests.integration.emulator.helpers import HookReceiver

REDIRECT = "https://mirror.example/oauth/callback"
SECRET = "sq0csp-emulator-secret"
DAY = 86400.0


@pytest.fixture
async def emu(manual_clock: ManualClock) -> AsyncIterator[EmulatorHandle]:
    async with run_emulator(EmulatorConfig(seed=31, application_token="app-token")) as handle:
        yield handle


async def call(emu: EmulatorHandle, method: str, path: str, token: str | None, json: Any = None,
               headers: dict[str, str] | None = None) -> tuple[int, Any]:
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    async with aiohttp.ClientSession() as s, s.request(method, emu.base_url + path, json=json, headers=sent) as r:
        return r.status, await r.json(content_type=None)


async def revoke(emu: EmulatorHandle, body: dict[str, Any], secret: str = SECRET) -> tuple[int, Any]:
    return await call(emu, "POST", "/oauth2/revoke", None, {"client_id": "sq0idp-square-mirror", **body},
                      headers={"Authorization": f"Client {secret}"})


def code_flow(code: str, **extra: Any) -> dict[str, Any]:
    return {"grant_type": "authorization_code", "code": code, "client_secret": SECRET, "redirect_uri": REDIRECT,
            **extra}


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def code_of(error_body: dict[str, Any]) -> str:
    code: str = error_body["errors"][0]["code"]
    return code


# --- authorize ---

async def test_approval_redirects_with_code_response_type_and_the_state(emu: EmulatorHandle) -> None:
    query = await emu.authorize(state="csrf-1")
    assert query["response_type"] == "code" and query["state"] == "csrf-1" and query["code"].startswith("sq0cgb-")


async def test_denial_redirects_with_access_denied_and_user_denied(emu: EmulatorHandle) -> None:
    query = await emu.authorize(state="s", approve=False)
    assert query == {"error": "access_denied", "error_description": "user_denied", "state": "s"}


async def test_authorize_page_rejects_unknown_client_and_unregistered_redirects(emu: EmulatorHandle) -> None:
    async with aiohttp.ClientSession() as s:
        url = emu.base_url + "/oauth2/authorize"
        async with s.get(url, params={"client_id": "sq0idp-other", "redirect_uri": REDIRECT},
                         allow_redirects=False) as r:
            assert r.status == 400
        async with s.get(url, params={"client_id": "sq0idp-square-mirror"}, allow_redirects=False) as r:
            assert r.status == 400  # no redirect_uri and none registered
        await emu.admin("PUT", "application", {"oauth_redirect_url": REDIRECT})
        async with s.get(url, params={"client_id": "sq0idp-square-mirror", "redirect_uri": "https://evil.example/"},
                         allow_redirects=False) as r:
            assert r.status == 400
        async with s.get(url, params={"client_id": "sq0idp-square-mirror", "state": "x"},
                         allow_redirects=False) as r:
            assert r.status == 302 and r.headers["Location"].startswith(REDIRECT + "?code=")


async def test_queued_approval_onboards_a_new_seller_with_the_default_scopes(emu: EmulatorHandle) -> None:
    await emu.admin("POST", "oauth/next-approval", {"merchant_id": "MLNEWSELLER1"})
    await emu.admin("POST", "oauth/next-approval", {"merchant_id": "MLNEWSELLER1", "approve": False})
    query = await emu.authorize(scope=None)  # no emulator_merchant_id: the queue decides
    denied = await emu.authorize(scope=None)
    assert "code" in query and denied["error"] == "access_denied"
    status, token = await emu.obtain_token(**code_flow(query["code"]))
    assert status == 200 and token["merchant_id"] == "MLNEWSELLER1"
    sellers = {s["merchant_id"]: s for s in (await emu.admin("GET", "sellers"))["sellers"]}
    assert sellers["MLNEWSELLER1"]["token"] is None and sellers["MLNEWSELLER1"]["token_kind"] == "oauth"
    status, info = await call(emu, "POST", "/oauth2/token/status", token["access_token"])
    assert info["scopes"] == ["MERCHANT_PROFILE_READ", "PAYMENTS_READ", "SETTLEMENTS_READ", "BANK_ACCOUNTS_READ"]
    # Without CUSTOMERS_READ the customer endpoints refuse the token; the Merchants API answers.
    status, body = await call(emu, "GET", "/v2/customers", token["access_token"])
    assert status == 403 and code_of(body) == "INSUFFICIENT_SCOPES"
    status, body = await call(emu, "GET", "/v2/merchants/me", token["access_token"])
    assert status == 200 and body["merchant"]["id"] == "MLNEWSELLER1"


# --- ObtainToken: code flow ---

async def test_code_flow_token_response_and_reusable_refresh_token(emu: EmulatorHandle,
                                                                    manual_clock: ManualClock) -> None:
    query = await emu.authorize("MLOAUTH0001")
    status, first = await emu.obtain_token(**code_flow(query["code"]))
    assert status == 200
    assert set(first) == {"access_token", "token_type", "expires_at", "merchant_id", "refresh_token", "short_lived"}
    assert first["token_type"] == "bearer" and first["short_lived"] is False and first["merchant_id"] == "MLOAUTH0001"
    assert emulator.clock.parse_rfc3339(first["expires_at"]) == pytest.approx(manual_clock.now + 30 * DAY, abs=1)
    assert (await call(emu, "GET", "/v2/customers", first["access_token"]))[0] == 200
    for _ in range(2):  # the code-flow refresh token is reusable, and a refresh returns it again
        manual_clock.advance(DAY)
        status, again = await emu.obtain_token(grant_type="refresh_token", refresh_token=first["refresh_token"],
                                               client_secret=SECRET)
        assert status == 200 and again["refresh_token"] == first["refresh_token"]
        assert again["access_token"] != first["access_token"] and "refresh_token_expires_at" not in again
    # A refresh needs the client secret in the code flow.
    status, body = await emu.obtain_token(grant_type="refresh_token", refresh_token=first["refresh_token"])
    assert status == 400 and code_of(body) == "MISSING_REQUIRED_PARAMETER"


async def test_a_code_works_once_and_expires_after_five_minutes(emu: EmulatorHandle,
                                                                 manual_clock: ManualClock) -> None:
    code = (await emu.authorize())["code"]
    assert (await emu.obtain_token(**code_flow(code)))[0] == 200
    status, body = await emu.obtain_token(**code_flow(code))
    assert status == 401 and code_of(body) == "UNAUTHORIZED" and "already been used" in body["errors"][0]["detail"]
    on_time = (await emu.authorize())["code"]
    manual_clock.advance(299)
    assert (await emu.obtain_token(**code_flow(on_time)))[0] == 200
    stale = (await emu.authorize())["code"]
    manual_clock.advance(300)
    status, body = await emu.obtain_token(**code_flow(stale))
    assert status == 401 and "expired" in body["errors"][0]["detail"]


async def test_invalid_grant_status_and_code_are_knobs(emu: EmulatorHandle) -> None:
    await emu.set_faults(invalid_grant_status=400, invalid_grant_code="BAD_REQUEST")
    status, body = await emu.obtain_token(**code_flow("sq0cgb-unknown"))
    assert status == 400 and code_of(body) == "BAD_REQUEST"
    assert body["errors"][0]["category"] == "INVALID_REQUEST_ERROR"


async def test_obtain_token_checks_client_secret_client_id_redirect_and_grant_type(emu: EmulatorHandle) -> None:
    code = (await emu.authorize())["code"]
    status, body = await emu.obtain_token(**code_flow(code, client_secret="sq0csp-wrong"))
    assert status == 401 and code_of(body) == "UNAUTHORIZED"
    status, body = await emu.obtain_token(grant_type="authorization_code", code=code, redirect_uri=REDIRECT)
    assert status == 400 and body["errors"][0]["field"] == "client_secret"
    status, body = await emu.obtain_token(**code_flow(code, redirect_uri="https://other.example/cb"))
    assert status == 401 and "redirect_uri" in body["errors"][0]["detail"]
    status, body = await emu.obtain_token(**code_flow(code, client_id="sq0idp-other"))
    assert status == 401
    status, body = await emu.obtain_token(**code_flow(code, grant_type="password"))
    assert status == 400 and code_of(body) == "INVALID_VALUE"
    status, body = await emu.obtain_token(**code_flow(code, colour="blue"))
    assert status == 400 and body["errors"][0]["field"] == "colour"
    async with aiohttp.ClientSession() as s, s.post(emu.base_url + "/oauth2/token", json={"grant_type": "x"}) as r:
        assert r.status == 400 and code_of(await r.json()) == "MISSING_REQUIRED_PARAMETER"
    assert (await emu.obtain_token(**code_flow(code)))[0] == 200  # the failures did not spend the code


# --- ObtainToken: PKCE ---

@pytest.mark.parametrize("method", ["S256", "plain", None])
async def test_pkce_needs_the_matching_verifier_and_no_secret(emu: EmulatorHandle, method: str | None) -> None:
    verifier = "v" * 50
    challenge = verifier if method == "plain" else s256(verifier)
    params: dict[str, Any] = {"client_id": "sq0idp-square-mirror", "redirect_uri": REDIRECT,
                              "code_challenge": challenge, "scope": "CUSTOMERS_READ"}
    if method:
        params["code_challenge_method"] = method
    async with aiohttp.ClientSession() as s, s.get(emu.base_url + "/oauth2/authorize", params=params,
                                                   allow_redirects=False) as r:
        code = URL(r.headers["Location"]).query["code"]
    status, body = await emu.obtain_token(grant_type="authorization_code", code=code, redirect_uri=REDIRECT,
                                          code_verifier="w" * 50)
    assert status == 401 and "code_verifier" in body["errors"][0]["detail"]
    status, body = await emu.obtain_token(grant_type="authorization_code", code=code, redirect_uri=REDIRECT,
                                          code_verifier=verifier)
    assert status == 200 and "refresh_token_expires_at" in body


async def test_pkce_refresh_tokens_are_single_use_and_last_90_days(emu: EmulatorHandle,
                                                                    manual_clock: ManualClock) -> None:
    verifier = "pkce-verifier-" * 4
    code = (await emu.authorize(code_challenge=s256(verifier)))["code"]
    status, first = await emu.obtain_token(grant_type="authorization_code", code=code, redirect_uri=REDIRECT,
                                           code_verifier=verifier)
    assert status == 200
    expires = emulator.clock.parse_rfc3339(first["refresh_token_expires_at"])
    assert expires == pytest.approx(manual_clock.now + 90 * DAY, abs=1)
    chain = [first["refresh_token"]]
    for _ in range(3):
        manual_clock.advance(10 * DAY)
        status, nxt = await emu.obtain_token(grant_type="refresh_token", refresh_token=chain[-1])
        assert status == 200 and nxt["refresh_token"] not in chain
        assert emulator.clock.parse_rfc3339(nxt["refresh_token_expires_at"]) == pytest.approx(
            manual_clock.now + 90 * DAY, abs=1)
        chain.append(nxt["refresh_token"])
    status, body = await emu.obtain_token(grant_type="refresh_token", refresh_token=chain[0])
    assert status == 401 and "already been used" in body["errors"][0]["detail"]
    manual_clock.advance(90 * DAY)
    status, body = await emu.obtain_token(grant_type="refresh_token", refresh_token=chain[-1])
    assert status == 401 and "expired" in body["errors"][0]["detail"]


# --- lifetimes on the API ---

async def test_access_tokens_expire_after_30_days_or_24_hours_when_short_lived(
        emu: EmulatorHandle, manual_clock: ManualClock) -> None:
    long = await emu.connect_seller()
    short = await emu.connect_seller(short_lived=True)
    assert short["short_lived"] is True
    manual_clock.advance(DAY - 1)
    assert (await call(emu, "GET", "/v2/customers", short["access_token"]))[0] == 200
    manual_clock.advance(1)
    status, body = await call(emu, "GET", "/v2/customers", short["access_token"])
    assert status == 401 and code_of(body) == "ACCESS_TOKEN_EXPIRED"
    assert body["errors"][0]["category"] == "AUTHENTICATION_ERROR"
    manual_clock.advance(29 * DAY - 1)
    assert (await call(emu, "GET", "/v2/customers", long["access_token"]))[0] == 200
    manual_clock.advance(1)
    assert (await call(emu, "GET", "/v2/customers", long["access_token"]))[0] == 401
    await emu.set_faults(expired_token_code="UNAUTHORIZED")
    status, body = await call(emu, "GET", "/v2/customers", long["access_token"])
    assert status == 401 and code_of(body) == "UNAUTHORIZED"
    # The authorization outlives its access token: a refresh gives a working one.
    status, fresh = await emu.obtain_token(grant_type="refresh_token", refresh_token=long["refresh_token"],
                                           client_secret=SECRET)
    assert status == 200 and (await call(emu, "GET", "/v2/customers", fresh["access_token"]))[0] == 200


async def test_old_access_token_survives_a_refresh_unless_the_knob_says_otherwise(emu: EmulatorHandle) -> None:
    first = await emu.connect_seller()
    refresh = {"grant_type": "refresh_token", "refresh_token": first["refresh_token"], "client_secret": SECRET}
    second = (await emu.obtain_token(**refresh))[1]
    assert (await call(emu, "GET", "/v2/customers", first["access_token"]))[0] == 200  # several live tokens
    await emu.set_faults(refresh_keeps_old_access_token=False)
    third = (await emu.obtain_token(**refresh))[1]
    status, body = await call(emu, "GET", "/v2/customers", second["access_token"])
    assert status == 401 and code_of(body) == "ACCESS_TOKEN_REVOKED"
    assert (await call(emu, "GET", "/v2/customers", third["access_token"]))[0] == 200


async def test_code_flow_refresh_token_never_expires_by_default(emu: EmulatorHandle,
                                                                manual_clock: ManualClock) -> None:
    token = await emu.connect_seller()
    manual_clock.advance(400 * DAY)
    status, _ = await emu.obtain_token(grant_type="refresh_token", refresh_token=token["refresh_token"],
                                       client_secret=SECRET)
    assert status == 200


async def test_code_flow_refresh_token_dies_15_days_after_expiry_with_the_grace_knob(
        emu: EmulatorHandle, manual_clock: ManualClock) -> None:
    await emu.set_faults(refresh_token_grace_days=15)
    token = await emu.connect_seller()
    refresh = {"grant_type": "refresh_token", "refresh_token": token["refresh_token"], "client_secret": SECRET}
    manual_clock.advance(30 * DAY + 15 * DAY - 1)
    assert (await emu.obtain_token(**refresh))[0] == 200  # in time: and the window restarts from the new token
    manual_clock.advance(30 * DAY + 15 * DAY)
    status, body = await emu.obtain_token(**refresh)
    assert status == 401 and "expired" in body["errors"][0]["detail"]


async def test_fault_switches_expire_access_tokens_now_and_break_a_refresh_token(emu: EmulatorHandle) -> None:
    a = await emu.connect_seller("MLSELLERA001")
    b = await emu.connect_seller("MLSELLERB001")
    assert await emu.admin("POST", "oauth/expire", {"merchant_id": "MLSELLERA001"}) == {"expired": 1}
    assert code_of((await call(emu, "GET", "/v2/customers", a["access_token"]))[1]) == "ACCESS_TOKEN_EXPIRED"
    assert (await call(emu, "GET", "/v2/customers", b["access_token"]))[0] == 200
    assert await emu.admin("POST", "oauth/expire", {}) == {"expired": 1}
    assert (await call(emu, "GET", "/v2/customers", b["access_token"]))[0] == 401
    assert await emu.admin("POST", "oauth/invalidate-refresh", {"merchant_id": "MLSELLERB001"}) == {"invalidated": 1}
    for _ in range(2):  # for good
        status, body = await emu.obtain_token(grant_type="refresh_token", refresh_token=b["refresh_token"],
                                              client_secret=SECRET)
        assert status == 401 and "no longer valid" in body["errors"][0]["detail"]
    status, _ = await emu.obtain_token(grant_type="refresh_token", refresh_token=a["refresh_token"],
                                       client_secret=SECRET)
    assert status == 200
    dump = await emu.admin("GET", "oauth?merchant_id=MLSELLERB001")
    assert [g["refresh_invalid"] for g in dump["grants"]] == [True]


async def test_admin_clock_advance_moves_the_manual_clock(emu: EmulatorHandle, manual_clock: ManualClock) -> None:
    token = await emu.connect_seller()
    before = manual_clock.now
    await emu.admin("POST", "clock/advance", {"seconds": 30 * DAY})
    assert manual_clock.now == before + 30 * DAY
    assert (await call(emu, "GET", "/v2/customers", token["access_token"]))[0] == 401


async def test_admin_clock_advance_offsets_the_wall_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(emulator.clock, "_offset", 0.0)  # restored after the test
    async with run_emulator(EmulatorConfig(seed=32)) as emu:
        token = await emu.connect_seller()
        await emu.admin("POST", "clock/advance", {"seconds": 30 * DAY + 5})
        status, body = await call(emu, "GET", "/v2/customers", token["access_token"])
        assert status == 401 and code_of(body) == "ACCESS_TOKEN_EXPIRED"
        with pytest.raises(RuntimeError, match="400"):
            await emu.admin("POST", "clock/advance", {"seconds": -1})


# --- RetrieveTokenStatus ---

async def test_token_status_for_oauth_personal_and_application_tokens(emu: EmulatorHandle,
                                                                      manual_clock: ManualClock) -> None:
    token = await emu.connect_seller(scope="CUSTOMERS_READ MERCHANT_PROFILE_READ")
    status, info = await call(emu, "POST", "/oauth2/token/status", token["access_token"])
    assert status == 200 and info == {"scopes": ["CUSTOMERS_READ", "MERCHANT_PROFILE_READ"],
                                      "expires_at": token["expires_at"], "client_id": "sq0idp-square-mirror",
                                      "merchant_id": emu.merchant_id}
    status, info = await call(emu, "POST", "/oauth2/token/status", emu.token)
    assert status == 200 and "expires_at" not in info and info["merchant_id"] == emu.merchant_id
    status, info = await call(emu, "POST", "/oauth2/token/status", "app-token")
    assert status == 200 and "merchant_id" not in info
    for bad in ("nope", None):
        status, body = await call(emu, "POST", "/oauth2/token/status", bad)
        assert status == 401 and code_of(body) == "UNAUTHORIZED"
    manual_clock.advance(30 * DAY)
    status, body = await call(emu, "POST", "/oauth2/token/status", token["access_token"])
    assert status == 401 and code_of(body) == "UNAUTHORIZED"


# --- RevokeToken and the revocation webhook ---

async def subscribe_all(emu: EmulatorHandle, receiver: HookReceiver) -> str:
    status, body = await call(emu, "POST", "/v2/webhooks/subscriptions", "app-token", {"subscription": {
        "name": "mirror", "event_types": ["oauth.authorization.revoked", "customer.created"],
        "notification_url": receiver.url}})
    assert status == 200
    key: str = body["subscription"]["signature_key"]
    return key


async def test_revoke_by_merchant_kills_every_token_and_fires_one_signed_event_per_token(
        emu: EmulatorHandle, hook_receiver: HookReceiver) -> None:
    key = await subscribe_all(emu, hook_receiver)
    one = await emu.connect_seller("MLREVOKE0001")
    two = await emu.connect_seller("MLREVOKE0001")
    assert await revoke(emu, {"merchant_id": "MLREVOKE0001"}) == (200, {"success": True})
    assert await emu.drain_webhooks(5)
    for token in (one, two):
        status, body = await call(emu, "GET", "/v2/customers", token["access_token"])
        assert status == 401 and code_of(body) == "ACCESS_TOKEN_REVOKED"
        status, body = await emu.obtain_token(grant_type="refresh_token", refresh_token=token["refresh_token"],
                                              client_secret=SECRET)
        assert status == 401 and "revoked" in body["errors"][0]["detail"]
    assert len(hook_receiver.raw) == 2  # one per revoked access token
    for headers, body in hook_receiver.raw:
        assert verify_signature(request_body=body.decode(), signature_header=headers["x-square-hmacsha256-signature"],
                                signature_key=key, notification_url=hook_receiver.url)
    events = hook_receiver.received
    for event in events:
        assert list(event) == ["merchant_id", "type", "event_id", "created_at", "data"]
        assert event["merchant_id"] == "MLREVOKE0001" and event["type"] == "oauth.authorization.revoked"
        assert event["data"]["type"] == "revocation" and list(event["data"]) == ["type", "id", "object"]
        revocation = event["data"]["object"]["revocation"]
        assert revocation["revoker_type"] == "APPLICATION"
        assert len(event["created_at"].split(".")[1]) == 10 and len(revocation["revoked_at"].split(".")[1]) == 10
    assert len({e["event_id"] for e in events}) == 2
    # A new authorization brings the seller back.
    again = await emu.connect_seller("MLREVOKE0001")
    assert (await call(emu, "GET", "/v2/customers", again["access_token"]))[0] == 200


async def test_revoke_by_access_token_revokes_the_whole_authorization(emu: EmulatorHandle,
                                                                      hook_receiver: HookReceiver) -> None:
    await subscribe_all(emu, hook_receiver)
    one = await emu.connect_seller("MLREVOKE0002")
    two = await emu.connect_seller("MLREVOKE0002")
    assert await revoke(emu, {"access_token": one["access_token"]}) == (200, {"success": True})
    assert (await call(emu, "GET", "/v2/customers", two["access_token"]))[0] == 401
    assert await revoke(emu, {"access_token": one["access_token"]}) == (200, {"success": True})  # idempotent
    assert await emu.drain_webhooks(5)
    assert len(hook_receiver.of_type("oauth.authorization.revoked")) == 2


async def test_revoke_only_access_token_keeps_the_authorization_and_fires_nothing(
        emu: EmulatorHandle, hook_receiver: HookReceiver) -> None:
    await subscribe_all(emu, hook_receiver)
    token = await emu.connect_seller("MLREVOKE0003")
    assert (await revoke(emu, {"access_token": token["access_token"], "revoke_only_access_token": True}))[0] == 200
    status, body = await call(emu, "GET", "/v2/customers", token["access_token"])
    assert status == 401 and code_of(body) == "ACCESS_TOKEN_REVOKED"
    status, fresh = await emu.obtain_token(grant_type="refresh_token", refresh_token=token["refresh_token"],
                                           client_secret=SECRET)
    assert status == 200 and (await call(emu, "GET", "/v2/customers", fresh["access_token"]))[0] == 200
    assert await emu.drain_webhooks(5)
    assert hook_receiver.of_type("oauth.authorization.revoked") == []
    await emu.set_faults(revoke_only_access_token_fires_webhook=True)
    await revoke(emu, {"access_token": fresh["access_token"], "revoke_only_access_token": True})
    assert await emu.drain_webhooks(5)
    assert len(hook_receiver.of_type("oauth.authorization.revoked")) == 1


async def test_revoke_token_needs_the_client_secret_header_and_one_target(emu: EmulatorHandle) -> None:
    token = await emu.connect_seller()
    assert (await revoke(emu, {"merchant_id": emu.merchant_id}, secret="wrong"))[0] == 401
    status, body = await call(emu, "POST", "/oauth2/revoke", token["access_token"],
                              {"client_id": "sq0idp-square-mirror", "merchant_id": emu.merchant_id})
    assert status == 401 and code_of(body) == "UNAUTHORIZED"  # Bearer is not Client
    status, body = await revoke(emu, {"merchant_id": emu.merchant_id, "access_token": token["access_token"]})
    assert status == 400 and code_of(body) == "CONFLICTING_PARAMETERS"
    status, body = await revoke(emu, {})
    assert status == 400 and code_of(body) == "MISSING_REQUIRED_PARAMETER"
    status, body = await revoke(emu, {"merchant_id": emu.merchant_id, "revoke_only_access_token": True})
    assert status == 400
    assert (await revoke(emu, {"access_token": "EAAAnot-issued"}))[0] == 404
    assert (await revoke(emu, {"merchant_id": "MLUNKNOWN"}))[0] == 404
    assert (await call(emu, "GET", "/v2/customers", token["access_token"]))[0] == 200


async def test_dashboard_revocation_fires_merchant_revoker_and_kills_a_static_oauth_token(
        hook_receiver: HookReceiver) -> None:
    config = EmulatorConfig(seed=33, sellers={"MLSTATIC0001": "static-oauth"}, token_kinds={"MLSTATIC0001": "oauth"},
                            application_token="app-token")
    async with run_emulator(config) as emu:
        await subscribe_all(emu, hook_receiver)
        token = await emu.connect_seller("MLSTATIC0001")
        out = await emu.admin("POST", "sellers/MLSTATIC0001/revoke-authorization", {})
        assert out == {"merchant_id": "MLSTATIC0001", "events": 2}  # the issued token and the static one
        for dead in ("static-oauth", token["access_token"]):
            status, body = await call(emu, "GET", "/v2/customers", dead)
            assert status == 401 and code_of(body) == "ACCESS_TOKEN_REVOKED"
        assert await emu.drain_webhooks(5)
        events = hook_receiver.of_type("oauth.authorization.revoked")
        assert [e["data"]["object"]["revocation"]["revoker_type"] for e in events] == ["MERCHANT", "MERCHANT"]
        with pytest.raises(RuntimeError, match="400"):
            await emu.admin("POST", "sellers/MLSTATIC0001/revoke-authorization", {"revoker_type": "NOBODY"})


async def test_revocation_reaches_admin_subscriptions_without_event_types(hook_receiver: HookReceiver) -> None:
    async with run_emulator(EmulatorConfig(seed=34)) as emu:
        await emu.subscribe(hook_receiver.url, "k")  # no event_types: every non-deprecated type
        await emu.connect_seller()
        await emu.admin("POST", f"sellers/{emu.merchant_id}/revoke-authorization", {"revoker_type": "SQUARE"})
        assert await emu.drain_webhooks(5)
        events = hook_receiver.of_type("oauth.authorization.revoked")
        assert [e["data"]["object"]["revocation"]["revoker_type"] for e in events] == ["SQUARE"]
        # The seller's personal token is not an OAuth grant: it still works.
        assert (await call(emu, "GET", "/v2/customers", emu.token))[0] == 200


# --- the rest of the API with OAuth tokens ---

async def test_issued_oauth_tokens_are_refused_by_the_events_api(emu: EmulatorHandle) -> None:
    token = await emu.connect_seller()
    status, body = await call(emu, "POST", "/v2/events", token["access_token"], {})
    assert status == 401 and "personal access token" in body["errors"][0]["detail"]


async def test_refresh_with_scopes_narrows_the_new_token(emu: EmulatorHandle) -> None:
    token = await emu.connect_seller(scope="CUSTOMERS_READ CUSTOMERS_WRITE MERCHANT_PROFILE_READ")
    assert (await call(emu, "POST", "/v2/customers", token["access_token"], {"given_name": "W"}))[0] == 200
    status, narrow = await emu.obtain_token(grant_type="refresh_token", refresh_token=token["refresh_token"],
                                            client_secret=SECRET, scopes=["CUSTOMERS_READ", "ORDERS_READ"])
    assert status == 200
    assert (await call(emu, "GET", "/v2/customers", narrow["access_token"]))[0] == 200
    status, body = await call(emu, "POST", "/v2/customers", narrow["access_token"], {"given_name": "W"})
    assert status == 403 and code_of(body) == "INSUFFICIENT_SCOPES"


async def test_snapshot_and_restore_keep_oauth_grants_and_tokens(emu: EmulatorHandle) -> None:
    token = await emu.connect_seller("MLSNAP00001")
    snap = await emu.admin("POST", "snapshot", {})
    await emu.admin("POST", "reset")
    assert (await call(emu, "GET", "/v2/customers", token["access_token"]))[0] == 401
    await emu.admin("POST", "restore", snap)
    assert (await call(emu, "GET", "/v2/customers", token["access_token"]))[0] == 200
    status, _ = await emu.obtain_token(grant_type="refresh_token", refresh_token=token["refresh_token"],
                                       client_secret=SECRET)
    assert status == 200


async def test_static_seller_tokens_never_expire(emu: EmulatorHandle, manual_clock: ManualClock) -> None:
    manual_clock.advance(1000 * DAY)
    assert (await call(emu, "GET", "/v2/customers", emu.token))[0] == 200


async def test_application_settings_are_set_through_the_admin_api() -> None:
    async with run_emulator(EmulatorConfig(seed=35, application_secret="sq0csp-custom")) as emu:
        app = await emu.admin("GET", "application")
        assert app["application_secret"] == "sq0csp-custom" and app["oauth_redirect_url"] is None
        out = await emu.admin("PUT", "application", {"application_secret": "sq0csp-new",
                                                     "oauth_redirect_url": REDIRECT})
        assert out["application_secret"] == "sq0csp-new" and out["oauth_redirect_url"] == REDIRECT
        code = (await emu.authorize(redirect_uri=None))["code"]
        status, _ = await emu.obtain_token(grant_type="authorization_code", code=code, client_secret="sq0csp-new")
        assert status == 200
        with pytest.raises(RuntimeError, match="400"):
            await emu.admin("PUT", "application", {"application_secret": ""})


def test_knobs_reject_unknown_choices() -> None:
    with pytest.raises(ValueError, match="expired_token_code"):
        Knobs().merge({"expired_token_code": "NOPE"})
