"""Webhook delivery: envelope, payload rules, SDK signature check, retries, faults, Events API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from square.utils.webhooks_helper import verify_signature

from emulator import EmulatorConfig
from emulator.testing import EmulatorHandle, run_emulator

KEY = "test-signature-key"


class Receiver:
    """A real HTTP endpoint that records what it gets and can fail the first N requests."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.fail_first = 0
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.received.append((dict(request.headers), body))
        if self.fail_first > 0:
            self.fail_first -= 1
            return web.Response(status=500)
        return web.Response(status=200)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    rec.url = f"http://127.0.0.1:{port}/hook"
    yield rec
    await runner.cleanup()


@pytest.fixture
async def emu(receiver: Receiver) -> AsyncIterator[EmulatorHandle]:
    async with run_emulator(EmulatorConfig(seed=3)) as handle:
        await handle.subscribe(receiver.url, KEY, notification_url="https://mirror.example/square/webhooks")
        await handle.set_faults(webhook_retry_scale=0.001)
        yield handle


async def call(emu: EmulatorHandle, method: str, path: str, json: Any = None) -> Any:
    async with aiohttp.ClientSession() as s, s.request(method, emu.base_url + path, json=json,
                                                       headers={"Authorization": f"Bearer {emu.token}"}) as r:
        return await r.json()


def events(receiver: Receiver) -> list[dict[str, Any]]:
    return [orjson.loads(body) for _, body in receiver.received]


async def test_each_mutation_sends_signed_square_envelope(emu: EmulatorHandle, receiver: Receiver) -> None:
    seg = (await emu.admin("POST", "segments", {"name": "S"}))["segment"]["id"]
    c = (await call(emu, "POST", "/v2/customers", {"given_name": "W", "email_address": "w@example.com"}))["customer"]
    await emu.admin("PUT", f"segments/{seg}/members/{c['id']}")
    g = (await call(emu, "POST", "/v2/customers/groups", {"group": {"name": "G"}}))["group"]["id"]
    await call(emu, "PUT", f"/v2/customers/{c['id']}/groups/{g}")
    await call(emu, "DELETE", f"/v2/customers/{c['id']}")
    assert await emu.drain_webhooks(5)
    order = {"customer.created": 0, "customer.updated": 1, "customer.deleted": 2}
    got = sorted(events(receiver), key=lambda e: order[e["type"]])  # delivery order is not guaranteed
    assert [e["type"] for e in got] == ["customer.created", "customer.updated", "customer.deleted"]
    for headers, body in receiver.received:
        assert verify_signature(request_body=body.decode(), signature_header=headers["x-square-hmacsha256-signature"],
                                signature_key=KEY, notification_url="https://mirror.example/square/webhooks")
        assert "square-initial-delivery-timestamp" in headers and "square-retry-number" not in headers
    created, updated, deleted = got
    assert set(created) == {"merchant_id", "type", "event_id", "created_at", "data"}
    assert created["merchant_id"] == emu.merchant_id
    assert created["data"]["type"] == "customer" and created["data"]["id"] == c["id"]
    assert "segment_ids" not in updated["data"]["object"]["customer"]
    assert updated["data"]["object"]["customer"]["group_ids"] == [g]
    assert deleted["data"]["deleted"] is True and "group_ids" not in deleted["data"]["object"]["customer"]


async def test_merge_fires_created_and_one_deleted_per_source_with_context(emu: EmulatorHandle,
                                                                           receiver: Receiver) -> None:
    a = (await call(emu, "POST", "/v2/customers", {"given_name": "A"}))["customer"]["id"]
    b = (await call(emu, "POST", "/v2/customers", {"given_name": "B"}))["customer"]["id"]
    await emu.drain_webhooks(5)
    receiver.received.clear()
    new = (await emu.merge([a, b]))["customer"]["id"]
    await emu.drain_webhooks(5)
    got = events(receiver)
    assert sorted(e["type"] for e in got) == ["customer.created", "customer.deleted", "customer.deleted"]
    for e in got:
        assert e["data"]["object"]["event_context"] == {"merge": {"from_customer_ids": [a, b],
                                                                  "to_customer_id": new}}
    assert {e["data"]["id"] for e in got if e["type"] == "customer.deleted"} == {a, b}


async def test_non_2xx_is_retried_with_retry_headers(emu: EmulatorHandle, receiver: Receiver) -> None:
    receiver.fail_first = 2
    await call(emu, "POST", "/v2/customers", {"given_name": "R"})
    assert await emu.drain_webhooks(10)
    assert len(receiver.received) == 3
    assert receiver.received[1][0]["square-retry-number"] == "1"
    assert receiver.received[2][0]["square-retry-reason"] == "http_error"
    ids = {orjson.loads(b)["event_id"] for _, b in receiver.received}
    assert len(ids) == 1
    log = (await emu.admin("GET", "deliveries"))["deliveries"]
    assert log[-1]["status"] == "delivered" and log[-1]["attempt"] == 3


async def test_delivery_faults_are_deterministic_under_seed(emu: EmulatorHandle, receiver: Receiver) -> None:
    await emu.set_faults(webhook_duplicate_rate=0.5, webhook_loss_rate=0.2, webhook_reorder_rate=0.5,
                         webhook_reorder_max_delay_seconds=0.05)
    for i in range(20):
        await call(emu, "POST", "/v2/customers", {"given_name": f"F{i}"})
    await emu.drain_webhooks(10)
    log = (await emu.admin("GET", "deliveries"))["deliveries"]
    statuses = [(d["event_id"], d["copy"], d["status"]) for d in log]
    assert any(s == "lost" for *_, s in statuses) and any(c == 1 for _, c, _ in statuses)
    delivered = sum(1 for *_, s in statuses if s == "delivered")
    assert len(receiver.received) == delivered


async def test_search_events_returns_recorded_events_with_filters(emu: EmulatorHandle) -> None:
    assert await call(emu, "PUT", "/v2/events/enable") == {}
    c = (await call(emu, "POST", "/v2/customers", {"given_name": "E"}))["customer"]
    await call(emu, "PUT", f"/v2/customers/{c['id']}", {"nickname": "e"})
    body = await call(emu, "POST", "/v2/events", {"query": {"filter": {"event_types": ["customer.updated"]}}})
    assert [e["type"] for e in body["events"]] == ["customer.updated"]
    assert body["metadata"][0]["event_id"] == body["events"][0]["event_id"]
    page = await call(emu, "POST", "/v2/events", {"limit": 1, "query": {"sort": {"order": "ASC"}}})
    assert page["events"][0]["type"] == "customer.created" and page["cursor"]
    nxt = await call(emu, "POST", "/v2/events", {"limit": 1, "cursor": page["cursor"],
                                                 "query": {"sort": {"order": "ASC"}}})
    assert nxt["events"][0]["type"] == "customer.updated" and "cursor" not in nxt


async def test_cli_style_config_subscription_reaches_every_seller(receiver: Receiver) -> None:
    from emulator import SubscriptionSpec

    cfg = EmulatorConfig(sellers={"M1": "t1", "M2": "t2"},
                         subscriptions=[SubscriptionSpec(url=receiver.url, signature_key=KEY)])
    async with run_emulator(cfg) as emu:
        for token in ("t1", "t2"):
            async with aiohttp.ClientSession() as s:
                await s.post(emu.base_url + "/v2/customers", json={"given_name": "x"},
                             headers={"Authorization": f"Bearer {token}"})
        await emu.drain_webhooks(5)
        await asyncio.sleep(0)
    assert sorted(e["merchant_id"] for e in events(receiver)) == ["M1", "M2"]


async def test_latest_version_only_drops_superseded_pending_deliveries(emu: EmulatorHandle,
                                                                       receiver: Receiver) -> None:
    c = (await call(emu, "POST", "/v2/customers", {"given_name": "V"}))["customer"]
    await emu.drain_webhooks(5)
    receiver.received.clear()
    await emu.set_faults(webhook_latest_version_only=True, webhook_reorder_rate=1.0,
                         webhook_reorder_max_delay_seconds=0.2)
    for n in range(4):
        await call(emu, "PUT", f"/v2/customers/{c['id']}", {"nickname": f"n{n}"})
    await emu.drain_webhooks(5)
    versions = [e["data"]["object"]["customer"]["version"] for e in events(receiver)]
    assert versions == [4]
    log = (await emu.admin("GET", "deliveries"))["deliveries"]
    assert sum(1 for d in log if d["status"] == "superseded") == 3


async def test_search_events_desc_paging_is_stable_while_events_arrive(emu: EmulatorHandle) -> None:
    await call(emu, "PUT", "/v2/events/enable")
    for n in range(5):
        await call(emu, "POST", "/v2/customers", {"given_name": f"P{n}"})
    first = await call(emu, "POST", "/v2/events", {"limit": 2})
    await call(emu, "POST", "/v2/customers", {"given_name": "Newer"})  # lands before page 1, not in page 2
    seen = [e["event_id"] for e in first["events"]]
    cursor = first["cursor"]
    while cursor:
        page = await call(emu, "POST", "/v2/events", {"limit": 2, "cursor": cursor})
        seen += [e["event_id"] for e in page["events"]]
        cursor = page.get("cursor")
    assert len(seen) == len(set(seen)) == 5
