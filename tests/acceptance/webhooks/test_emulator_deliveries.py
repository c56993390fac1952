"""End to end with the Square emulator: its signed deliveries are accepted and land in the queue exactly once
each, duplicates included.

Uses the emulator's test interface (``emulator.testing.run_emulator()``: ``base_url``, ``token``,
``subscribe()``, ``set_faults()``, ``merge()``, ``drain_webhooks()``); events are caused through the Square
Customers API it serves. Skipped while the emulator is not in this tree.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from square_mirror.embedded import free_port
from square_mirror.settings import Secret, Settings
from tests.integration.webhooks.support import queued_jobs
from webhooks.app import create_app

emulator_testing = pytest.importorskip("emulator.testing")

KEY = "emulator-signature-key"
Delivery = tuple[bytes, dict[str, str], int, str]  # body, headers, status, response body


async def _receiver_recording(
    settings: Settings, port: int, deliveries: list[Delivery]
) -> web.AppRunner:
    """The real receiver on a real port, with a middleware that notes what the emulator sent and got."""
    app = create_app(settings)

    @web.middleware
    async def record(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        body = await request.read()  # cached: the receiver reads the same bytes
        response = await handler(request)
        if request.path == settings.webhook_path:
            text = response.body.decode() if isinstance(response, web.Response) and response.body else ""
            deliveries.append((body, dict(request.headers), response.status, text))
        return response

    app.middlewares.append(record)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


async def _square(session: aiohttp.ClientSession, method: str, url: str, body: Any = None) -> Any:
    async with session.request(method, url, json=body) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def test_emulator_deliveries_land_in_the_queue_exactly_once_each(redis_url: str) -> None:
    port = free_port()
    notification_url = f"http://127.0.0.1:{port}/square/webhooks"
    settings = Settings(
        redis_url=Secret(redis_url),
        webhook_signature_keys=(Secret(KEY),),
        webhook_notification_url=notification_url,
    )
    deliveries: list[Delivery] = []
    runner = await _receiver_recording(settings, port, deliveries)
    try:
        async with emulator_testing.run_emulator() as emu:
            await emu.subscribe(notification_url, KEY)
            await emu.set_faults(webhook_duplicate_rate=1.0)  # every event delivered twice
            headers = {"Authorization": f"Bearer {emu.token}", "Square-Version": "2025-08-20"}
            async with aiohttp.ClientSession(headers=headers) as square:
                ids = []
                for n in range(4):
                    created = await _square(
                        square, "POST", f"{emu.base_url}/v2/customers",
                        {"given_name": f"Emu{n}", "email_address": f"emu{n}@example.com", "idempotency_key": f"k{n}"},
                    )
                    ids.append(created["customer"]["id"])
                await _square(square, "PUT", f"{emu.base_url}/v2/customers/{ids[0]}", {"note": "updated"})
                await _square(square, "DELETE", f"{emu.base_url}/v2/customers/{ids[1]}")
            merged = await emu.merge([ids[2], ids[3]])
            assert await emu.drain_webhooks()

        assert deliveries, "the emulator delivered nothing"
        assert {status for _, _, status, _ in deliveries} == {200}
        event_ids = [json.loads(body)["event_id"] for body, _, _, _ in deliveries]
        distinct = set(event_ids)
        assert len(event_ids) > len(distinct), "the duplicate fault should have redelivered events"
        answers = [text for _, _, _, text in deliveries]
        assert answers.count('{"status":"queued"}') == len(distinct)
        jobs = await queued_jobs(redis_url)
        assert sorted(j.job_id for j in jobs) == sorted(distinct)
        payloads = [j.args[0] for j in jobs]
        assert {p["type"] for p in payloads} == {"customer.created", "customer.updated", "customer.deleted"}
        merge_contexts = [p["event_context"] for p in payloads if p["event_context"]]
        assert merge_contexts, "the merge's events should carry event_context.merge"
        for context in merge_contexts:
            assert context["merge"]["to_customer_id"] == merged["customer"]["id"]
            assert sorted(context["merge"]["from_customer_ids"]) == sorted([ids[2], ids[3]])
        assert not any("example.com" in json.dumps(p) for p in payloads)  # no PII in Redis

        # Square redelivers at least once: every signed delivery again, byte for byte, is a no-op.
        async with aiohttp.ClientSession() as http:
            for body, sent_headers, _, _ in deliveries[:10]:
                keep = {k: v for k, v in sent_headers.items() if k.lower() in ("content-type",
                                                                                "x-square-hmacsha256-signature")}
                async with http.post(notification_url, data=body, headers=keep) as response:
                    assert (response.status, await response.text()) == (200, '{"status":"duplicate"}')
        assert sorted(j.job_id for j in await queued_jobs(redis_url)) == sorted(distinct)
    finally:
        await runner.cleanup()
