"""The Webhook Subscriptions API (FACTS-2 C): the application token only, CRUD and paging, delivery of every
authorized seller's events to an API subscription, key rotation (with and without overlap), test events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from square.utils.webhooks_helper import verify_signature

import emulator.clock
from emulator import EmulatorConfig
from emulator.testing import EmulatorHandle, ManualClock, run_emulator

APP = "app-token"
SUBS = "/v2/webhooks/subscriptions"


class Receiver:
    """Records headers and bodies; answers ``status``."""

    def __init__(self) -> None:
        self.raw: list[tuple[dict[str, str], bytes]] = []
        self.status = 200
        self.fail_first = 0
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.raw.append((dict(request.headers), await request.read()))
        if self.fail_first > 0:
            self.fail_first -= 1
            return web.Response(status=500)
        return web.Response(status=self.status)

    def events(self) -> list[dict[str, Any]]:
        return [orjson.loads(body) for _, body in self.raw]

    def signed_with(self, key: str) -> list[bool]:
        return [verify_signature(request_body=body.decode(), signature_header=h["x-square-hmacsha256-signature"],
                                 signature_key=key, notification_url=self.url) for h, body in self.raw]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rec.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/hook"  # type: ignore[union-attr]
    yield rec
    await runner.cleanup()


@pytest.fixture
async def emu(manual_clock: ManualClock) -> AsyncIterator[EmulatorHandle]:
    async with run_emulator(EmulatorConfig(seed=41, application_token=APP)) as handle:
        yield handle


async def call(emu: EmulatorHandle, method: str, path: str, json: Any = None, token: str = APP) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.request(method, emu.base_url + path, json=json,
                                                       headers={"Authorization": f"Bearer {token}"}) as r:
        return r.status, await r.json(content_type=None)


async def create(emu: EmulatorHandle, url: str, types: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    status, body = await call(emu, "POST", SUBS, {"subscription": {
        "event_types": types or ["customer.created", "customer.updated"], "notification_url": url, **extra}})
    assert status == 200, body
    sub: dict[str, Any] = body["subscription"]
    return sub


async def test_only_the_application_token_may_use_the_api(emu: EmulatorHandle) -> None:
    oauth = (await emu.connect_seller())["access_token"]
    for token in (emu.token, oauth):
        for method, path in (("GET", SUBS), ("GET", "/v2/webhooks/event-types"), ("POST", SUBS)):
            status, body = await call(emu, method, path, {}, token=token)
            assert status == 401 and body["errors"][0]["code"] == "INSUFFICIENT_SCOPES", (method, path, body)
            assert body["errors"][0]["category"] == "AUTHENTICATION_ERROR"
    status, body = await call(emu, "GET", SUBS, token="unknown")
    assert status == 401 and body["errors"][0]["code"] == "UNAUTHORIZED"
    assert (await call(emu, "GET", SUBS))[0] == 200
    # The application token still works nowhere else.
    assert (await call(emu, "GET", "/v2/customers"))[0] == 401


async def test_create_retrieve_update_delete(emu: EmulatorHandle, manual_clock: ManualClock) -> None:
    sub = await create(emu, "https://mirror.example/hooks", name="mirror")
    assert sub["id"].startswith("wbhk_") and sub["signature_key"] and sub["enabled"] is True
    assert sub["api_version"] == "2025-08-20" and sub["name"] == "mirror"
    assert emulator.clock.parse_rfc3339(sub["created_at"]) == pytest.approx(manual_clock.now, abs=0.01)
    status, got = await call(emu, "GET", f"{SUBS}/{sub['id']}")
    assert status == 200 and got["subscription"] == sub  # Retrieve includes the signature key
    manual_clock.advance(5)
    status, upd = await call(emu, "PUT", f"{SUBS}/{sub['id']}", {"subscription": {
        "enabled": False, "name": "renamed", "event_types": ["customer.deleted"],
        "notification_url": "https://mirror.example/v2", "api_version": "2024-01-18"}})
    assert status == 200 and "signature_key" not in upd["subscription"]
    assert {k: upd["subscription"][k] for k in ("enabled", "name", "event_types", "notification_url",
                                                 "api_version")} == {
        "enabled": False, "name": "renamed", "event_types": ["customer.deleted"],
        "notification_url": "https://mirror.example/v2", "api_version": "2024-01-18"}
    assert upd["subscription"]["updated_at"] != upd["subscription"]["created_at"]
    assert (await call(emu, "DELETE", f"{SUBS}/{sub['id']}")) == (200, {})
    status, body = await call(emu, "GET", f"{SUBS}/{sub['id']}")
    assert status == 404 and body["errors"][0]["code"] == "NOT_FOUND"
    assert (await call(emu, "DELETE", f"{SUBS}/{sub['id']}"))[0] == 404


async def test_create_validates_and_replays_its_idempotency_key(emu: EmulatorHandle) -> None:
    status, body = await call(emu, "POST", SUBS, {"subscription": {"event_types": ["customer.created"]}})
    assert status == 400 and body["errors"][0]["code"] == "MISSING_REQUIRED_PARAMETER"
    status, body = await call(emu, "POST", SUBS, {"subscription": {"event_types": ["payment.made"],
                                                                   "notification_url": "https://x.example/"}})
    assert status == 400 and body["errors"][0]["code"] == "INVALID_VALUE"
    status, body = await call(emu, "POST", SUBS, {"subscription": {"event_types": ["customer.created"],
                                                                   "notification_url": "not a url"}})
    assert status == 400
    status, body = await call(emu, "POST", SUBS, {"subscription": {"event_types": ["customer.created"],
                                                                   "notification_url": "https://x.example/",
                                                                   "colour": "red"}})
    assert status == 400 and body["errors"][0]["field"] == "colour"
    spec = {"idempotency_key": "once", "subscription": {"event_types": ["customer.created"],
                                                        "notification_url": "https://x.example/"}}
    first, second = await call(emu, "POST", SUBS, spec), await call(emu, "POST", SUBS, spec)
    assert first == second
    assert len((await call(emu, "GET", SUBS))[1]["subscriptions"]) == 1


async def test_list_pages_sorts_and_hides_disabled_ones(emu: EmulatorHandle, manual_clock: ManualClock) -> None:
    ids = []
    for i in range(5):
        ids.append((await create(emu, f"https://x.example/{i}", enabled=i != 2))["id"])
        manual_clock.advance(1)
    status, body = await call(emu, "GET", SUBS)
    assert [s["id"] for s in body["subscriptions"]] == [ids[0], ids[1], ids[3], ids[4]]
    assert all("signature_key" not in s for s in body["subscriptions"]) and "cursor" not in body
    seen: list[str] = []
    path = f"{SUBS}?include_disabled=true&sort_order=DESC&limit=2"
    while True:
        status, page = await call(emu, "GET", path)
        assert status == 200 and len(page["subscriptions"]) <= 2
        seen += [s["id"] for s in page["subscriptions"]]
        if not page.get("cursor"):
            break
        path = f"{SUBS}?include_disabled=true&sort_order=DESC&limit=2&cursor={page['cursor']}"
    assert seen == ids[::-1]
    status, page = await call(emu, "GET", f"{SUBS}?limit=2")
    status, body = await call(emu, "GET", f"{SUBS}?sort_order=DESC&limit=2&cursor={page['cursor']}")
    assert status == 400 and body["errors"][0]["code"] == "INVALID_CURSOR"
    assert (await call(emu, "GET", f"{SUBS}?limit=101"))[0] == 400
    assert (await call(emu, "GET", f"{SUBS}?sort_order=UP"))[0] == 400


async def test_api_subscription_gets_every_authorized_sellers_events_signed_with_its_key(
        emu: EmulatorHandle, receiver: Receiver) -> None:
    sub = await create(emu, receiver.url, ["customer.created"])
    reader = (await emu.connect_seller("MLREADER0001", scope="CUSTOMERS_READ CUSTOMERS_WRITE"))["access_token"]
    writer = (await emu.connect_seller("MLWRITER0001", scope="CUSTOMERS_WRITE"))["access_token"]
    for token in (emu.token, reader, writer):
        assert (await call(emu, "POST", "/v2/customers", {"given_name": "Hook"}, token=token))[0] == 200
    assert await emu.drain_webhooks(5)
    # The static seller and the seller that granted CUSTOMERS_READ; not the one that did not.
    assert sorted(e["merchant_id"] for e in receiver.events()) == sorted([emu.merchant_id, "MLREADER0001"])
    assert all(receiver.signed_with(sub["signature_key"]))
    deliveries = (await emu.admin("GET", "deliveries"))["deliveries"]
    assert {d["subscription_id"] for d in deliveries} == {sub["id"]}
    # Disabled: nothing more arrives. A revoked seller's events never arrive.
    await call(emu, "PUT", f"{SUBS}/{sub['id']}", {"subscription": {"enabled": False}})
    await call(emu, "POST", "/v2/customers", {"given_name": "Quiet"}, token=emu.token)
    await call(emu, "PUT", f"{SUBS}/{sub['id']}", {"subscription": {"enabled": True}})
    await emu.admin("POST", "sellers/MLREADER0001/revoke-authorization", {})
    await emu.admin("POST", "instant-profiles", {"merchant_id": "MLREADER0001"})  # fires customer.created
    assert await emu.drain_webhooks(5)
    assert len(receiver.raw) == 2


async def test_api_subscription_deliveries_are_retried_like_any_other(emu: EmulatorHandle,
                                                                      receiver: Receiver) -> None:
    await emu.set_faults(webhook_retry_scale=0.001)
    await create(emu, receiver.url, ["customer.created"])
    receiver.fail_first = 1
    await call(emu, "POST", "/v2/customers", {"given_name": "Retry"}, token=emu.token)
    assert await emu.drain_webhooks(5)
    assert len(receiver.raw) == 2 and receiver.raw[1][0]["square-retry-number"] == "1"
    assert (await emu.admin("GET", "deliveries"))["deliveries"][0]["status"] == "delivered"


async def test_key_rotation_signs_with_the_new_key_at_once_by_default(emu: EmulatorHandle,
                                                                      receiver: Receiver) -> None:
    sub = await create(emu, receiver.url, ["customer.created"])
    status, body = await call(emu, "POST", f"{SUBS}/{sub['id']}/signature-key", {"idempotency_key": "r1"})
    assert status == 200 and body["signature_key"] != sub["signature_key"]
    assert await call(emu, "POST", f"{SUBS}/{sub['id']}/signature-key", {"idempotency_key": "r1"}) == (200, body)
    assert (await call(emu, "GET", f"{SUBS}/{sub['id']}"))[1]["subscription"]["signature_key"] == body["signature_key"]
    await call(emu, "POST", "/v2/customers", {"given_name": "K"}, token=emu.token)
    assert await emu.drain_webhooks(5)
    assert receiver.signed_with(body["signature_key"]) == [True]
    assert receiver.signed_with(sub["signature_key"]) == [False]


async def test_key_rotation_overlap_keeps_the_old_key_signing_for_a_while(
        emu: EmulatorHandle, receiver: Receiver, manual_clock: ManualClock) -> None:
    await emu.set_faults(signature_key_overlap_seconds=3600)
    sub = await create(emu, receiver.url, ["customer.created"])
    new_key = (await call(emu, "POST", f"{SUBS}/{sub['id']}/signature-key", {}))[1]["signature_key"]
    await call(emu, "POST", "/v2/customers", {"given_name": "Old"}, token=emu.token)
    assert await emu.drain_webhooks(5)
    manual_clock.advance(3600)
    await call(emu, "POST", "/v2/customers", {"given_name": "New"}, token=emu.token)
    assert await emu.drain_webhooks(5)
    assert receiver.signed_with(sub["signature_key"]) == [True, False]
    assert receiver.signed_with(new_key) == [False, True]


async def test_test_sends_a_signed_event_and_reports_the_status_code(emu: EmulatorHandle,
                                                                     receiver: Receiver) -> None:
    sub = await create(emu, receiver.url, ["customer.created", "oauth.authorization.revoked"])
    receiver.status = 418
    status, body = await call(emu, "POST", f"{SUBS}/{sub['id']}/test", {"event_type": "oauth.authorization.revoked"})
    assert status == 200
    result = body["subscription_test_result"]
    assert result["status_code"] == 418 and orjson.loads(result["payload"]) == receiver.events()[0]
    assert receiver.events()[0]["type"] == "oauth.authorization.revoked"
    assert receiver.signed_with(sub["signature_key"]) == [True]
    status, body = await call(emu, "POST", f"{SUBS}/{sub['id']}/test", {})
    assert status == 200 and receiver.events()[1]["type"] == "customer.created"
    status, body = await call(emu, "POST", f"{SUBS}/{sub['id']}/test", {"event_type": "customer.deleted"})
    assert status == 400 and body["errors"][0]["field"] == "event_type"
    assert (await emu.admin("GET", "deliveries"))["deliveries"] == []  # tests are not deliveries


async def test_test_reports_no_status_code_when_the_url_is_unreachable(emu: EmulatorHandle) -> None:
    sub = await create(emu, "http://127.0.0.1:9/unreachable", ["customer.created"])
    status, body = await call(emu, "POST", f"{SUBS}/{sub['id']}/test", {})
    assert status == 200 and "status_code" not in body["subscription_test_result"]


async def test_event_types_lists_the_supported_types_by_api_version(emu: EmulatorHandle) -> None:
    status, body = await call(emu, "GET", "/v2/webhooks/event-types")
    assert status == 200
    assert {"customer.created", "customer.custom_attribute.visible.updated",
            "oauth.authorization.revoked"} <= set(body["event_types"])
    meta = {m["event_type"]: m for m in body["metadata"]}
    assert meta["oauth.authorization.revoked"] == {"event_type": "oauth.authorization.revoked",
                                                   "api_version_introduced": "2020-08-26", "release_status": "PUBLIC"}
    assert meta["customer.custom_attribute.updated"]["release_status"] == "DEPRECATED"
    status, old = await call(emu, "GET", "/v2/webhooks/event-types?api_version=2021-01-01")
    assert old["event_types"] == ["oauth.authorization.revoked"]


async def test_go_style_timestamps_knob(emu: EmulatorHandle) -> None:
    await emu.set_faults(subscription_timestamp_format="go")
    sub = await create(emu, "https://x.example/")
    assert sub["created_at"].endswith(" +0000 UTC") and len(sub["created_at"]) == len("2022-01-10 23:29:48 +0000 UTC")


async def test_admin_subscriptions_are_unchanged_and_invisible_to_the_api(emu: EmulatorHandle,
                                                                          receiver: Receiver) -> None:
    admin = (await emu.subscribe(receiver.url, "admin-key"))["subscriptions"][0]
    assert admin["merchant_id"] == emu.merchant_id and "oauth.authorization.revoked" in admin["event_types"]
    api = await create(emu, "https://x.example/")
    assert [s["id"] for s in (await call(emu, "GET", SUBS))[1]["subscriptions"]] == [api["id"]]
    assert (await call(emu, "GET", f"{SUBS}/{admin['id']}"))[0] == 404
    listed = (await emu.admin("GET", "subscriptions"))["subscriptions"]
    assert [s["id"] for s in listed] == [admin["id"], api["id"]] and listed[1]["merchant_id"] is None


async def test_snapshot_keeps_api_subscriptions(emu: EmulatorHandle) -> None:
    sub = await create(emu, "https://x.example/", name="kept")
    snap = await emu.admin("POST", "snapshot", {})
    await emu.admin("POST", "reset")
    assert (await call(emu, "GET", SUBS))[1] == {}
    await emu.admin("POST", "restore", snap)
    assert (await call(emu, "GET", f"{SUBS}/{sub['id']}"))[1]["subscription"] == sub
