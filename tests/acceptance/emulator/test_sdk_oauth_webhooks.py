"""The official squareup SDK drives the emulator's OAuth API and Webhook Subscriptions API, and every response body
(and the oauth.authorization.revoked webhook) validates against the trimmed official spec
``tests/data/square-openapi-oauth-webhooks.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from square import AsyncSquare
from square.core.api_error import ApiError

from emulator import EmulatorConfig
from emulator.testing import run_emulator
from tests.acceptance.emulator.test_sdk_flow import SchemaChecker
from tests.integration.emulator.helpers import receiving

SPEC_PATH = Path(__file__).resolve().parents[2] / "data" / "square-openapi-oauth-webhooks.json"
APP_TOKEN = "sq0atp-emulator-application-token"


def _spec() -> dict[str, Any]:
    spec: dict[str, Any] = json.loads(SPEC_PATH.read_text())
    return spec


class OAuthChecker(SchemaChecker):
    """The customers checker's routing over this spec; the Merchants API is in it too."""

    def validate(self, method: str, path: str, body: Any) -> None:
        for m, pattern, ref in self.routes:
            if m == method and pattern.match(path):
                jsonschema.validate(body, {"$ref": ref, "components": self.components},
                                    cls=jsonschema.Draft4Validator)
                self.checked.append(ref.rsplit("/", 1)[-1])
                return
        raise AssertionError(f"no schema for {method} {path}")


async def test_sdk_oauth_and_webhook_subscriptions_match_the_spec() -> None:
    spec = _spec()
    checker = OAuthChecker(spec)

    async def hook(response: httpx.Response) -> None:
        await response.aread()
        if response.status_code == 200:
            checker.validate(response.request.method, response.request.url.path, response.json())

    config = EmulatorConfig(seed=51, application_token=APP_TOKEN)
    async with run_emulator(config) as emu, receiving() as receiver:
        http = httpx.AsyncClient(event_hooks={"response": [hook]}, timeout=30)
        app = AsyncSquare(base_url=emu.base_url, token=APP_TOKEN, httpx_client=http)
        client_id, secret = emu.emulator.application_id, emu.emulator.application_secret

        # Webhook Subscriptions API with the application's personal access token.
        types = await app.webhooks.event_types.list()
        assert types.event_types and "oauth.authorization.revoked" in types.event_types
        created = await app.webhooks.subscriptions.create(idempotency_key="sdk-sub-1", subscription={
            "name": "mirror", "event_types": ["customer.created", "oauth.authorization.revoked"],
            "notification_url": receiver.url})
        sub = created.subscription
        assert sub is not None and sub.id and sub.signature_key
        got = await app.webhooks.subscriptions.get(sub.id)
        assert got.subscription is not None and got.subscription.signature_key == sub.signature_key
        listed = [s async for s in await app.webhooks.subscriptions.list(include_disabled=True, sort_order="ASC",
                                                                          limit=10)]
        assert [s.id for s in listed] == [sub.id]
        updated = await app.webhooks.subscriptions.update(sub.id, subscription={"name": "mirror 2", "enabled": True})
        assert updated.subscription is not None and updated.subscription.name == "mirror 2"
        rotated = await app.webhooks.subscriptions.update_signature_key(sub.id, idempotency_key="sdk-key-1")
        assert rotated.signature_key and rotated.signature_key != sub.signature_key
        tested = await app.webhooks.subscriptions.test(sub.id, event_type="customer.created")
        assert tested.subscription_test_result is not None and tested.subscription_test_result.status_code == 200
        spare = await app.webhooks.subscriptions.create(subscription={
            "event_types": ["customer.updated"], "notification_url": "https://mirror.example/spare"})
        assert spare.subscription is not None and spare.subscription.id
        await app.webhooks.subscriptions.delete(spare.subscription.id)

        # OAuth: the code flow, token status, refresh, revoke.
        query = await emu.authorize("MLSDKSELLER1", redirect_uri="https://mirror.example/cb")
        token = await app.o_auth.obtain_token(client_id=client_id, client_secret=secret,
                                              grant_type="authorization_code", code=query["code"],
                                              redirect_uri="https://mirror.example/cb")
        assert token.merchant_id == "MLSDKSELLER1" and token.token_type == "bearer" and token.access_token
        seller = AsyncSquare(base_url=emu.base_url, token=token.access_token, httpx_client=http)
        status = await seller.o_auth.retrieve_token_status()
        assert status.merchant_id == "MLSDKSELLER1" and status.scopes == ["CUSTOMERS_READ", "MERCHANT_PROFILE_READ"]
        me = await seller.merchants.get("me")
        assert me.merchant is not None and me.merchant.id == "MLSDKSELLER1"
        refreshed = await app.o_auth.obtain_token(client_id=client_id, client_secret=secret,
                                                  grant_type="refresh_token", refresh_token=token.refresh_token)
        assert refreshed.refresh_token == token.refresh_token and refreshed.access_token != token.access_token
        revoked = await app.o_auth.revoke_token(client_id=client_id, merchant_id="MLSDKSELLER1", request_options={
            "additional_headers": {"Authorization": f"Client {secret}"}})
        assert revoked.success is True
        with pytest.raises(ApiError) as dead:
            await seller.merchants.get("me", request_options={"max_retries": 0})
        assert dead.value.status_code == 401
        with pytest.raises(ApiError) as refused:
            await seller.webhooks.subscriptions.list(request_options={"max_retries": 0})
        assert refused.value.status_code == 401
        assert await emu.drain_webhooks(5)
        await http.aclose()

    assert {"ListWebhookEventTypesResponse", "CreateWebhookSubscriptionResponse", "RetrieveWebhookSubscriptionResponse",
            "ListWebhookSubscriptionsResponse", "UpdateWebhookSubscriptionResponse",
            "UpdateWebhookSubscriptionSignatureKeyResponse", "TestWebhookSubscriptionResponse",
            "DeleteWebhookSubscriptionResponse", "ObtainTokenResponse", "RetrieveTokenStatusResponse",
            "RetrieveMerchantResponse", "RevokeTokenResponse"} <= set(checker.checked)
    revocations = receiver.of_type("oauth.authorization.revoked")
    assert len(revocations) == 2  # two live access tokens: one event each
    for event in revocations:
        jsonschema.validate(event, {"$ref": "#/components/schemas/OauthAuthorizationRevokedEvent",
                                    "components": spec["components"]}, cls=jsonschema.Draft4Validator)


async def test_oauth_error_bodies_match_the_spec() -> None:
    import aiohttp

    spec = _spec()
    error_schema = {"type": "object", "required": ["errors"], "properties": {
        "errors": {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/Error"}}},
        "components": spec["components"]}
    async with run_emulator(EmulatorConfig(seed=52, application_token=APP_TOKEN)) as emu, aiohttp.ClientSession() as s:
        calls: list[tuple[str, str, Any, dict[str, str]]] = [
            ("POST", "/oauth2/token", {"client_id": "sq0idp-square-mirror", "grant_type": "authorization_code",
                                       "code": "nope", "client_secret": "sq0csp-emulator-secret"}, {}),
            ("POST", "/oauth2/token", {"client_id": "other", "grant_type": "refresh_token"}, {}),
            ("POST", "/oauth2/token", {"grant_type": "refresh_token"}, {}),
            ("POST", "/oauth2/token/status", None, {"Authorization": "Bearer nope"}),
            ("POST", "/oauth2/revoke", {"client_id": "sq0idp-square-mirror"}, {"Authorization": "Client nope"}),
            ("POST", "/oauth2/revoke", {"client_id": "sq0idp-square-mirror"},
             {"Authorization": "Client sq0csp-emulator-secret"}),
            ("GET", "/v2/webhooks/subscriptions", None, {"Authorization": f"Bearer {emu.token}"}),
            ("GET", "/v2/webhooks/subscriptions/wbhk_nope", None, {"Authorization": f"Bearer {APP_TOKEN}"}),
            ("POST", "/v2/webhooks/subscriptions", {"subscription": {}}, {"Authorization": f"Bearer {APP_TOKEN}"}),
        ]
        for method, path, body, headers in calls:
            async with s.request(method, emu.base_url + path, json=body, headers=headers) as r:
                assert r.status in (400, 401, 404), (path, r.status)
                jsonschema.validate(await r.json(), error_schema, cls=jsonschema.Draft4Validator)
