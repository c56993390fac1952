"""End to end with the Square emulator: its signed deliveries are accepted and land in the queue exactly once
each, redeliveries included.

Written against the emulator's documented test interface (``emulator.testing.run_emulator()``, an async
context manager whose handle has ``subscribe(url, signature_key)`` and ``drain_webhooks()``); the events are
caused through the Square Customers API the emulator serves. Skipped until the emulator lands in this tree.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web

from square_mirror.embedded import free_port
from square_mirror.settings import Secret, Settings
from tests.integration.webhooks.support import queued_jobs
from webhooks.app import create_app

emulator_testing = pytest.importorskip("emulator.testing")

T = TypeVar("T")
KEY = "emulator-signature-key"


async def maybe_await(value: T | Awaitable[T]) -> T:
    if inspect.isawaitable(value):
        return await value
    return value


def attribute(handle: Any, *names: str) -> Any:
    for name in names:
        value = getattr(handle, name, None)
        if value:
            return value
    raise AssertionError(f"the emulator handle has none of {names}; update this test to its interface")


async def test_emulator_deliveries_land_in_the_queue_exactly_once_each(redis_url: str) -> None:
    port = free_port()
    notification_url = f"http://127.0.0.1:{port}/square/webhooks"
    settings = Settings(
        redis_url=Secret(redis_url),
        webhook_signature_keys=(Secret(KEY),),
        webhook_notification_url=notification_url,
    )
    app = create_app(settings)
    deliveries: list[tuple[bytes, dict[str, str], int]] = []

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        body = await request.read()  # cached: the receiver reads the same bytes
        response: web.StreamResponse = await handler(request)
        if request.path == settings.webhook_path:
            deliveries.append((body, dict(request.headers), response.status))
        return response

    app.middlewares.append(record)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with emulator_testing.run_emulator() as emu:
            await maybe_await(emu.subscribe(notification_url, KEY))
            base_url = str(attribute(emu, "base_url", "url")).rstrip("/")
            token = attribute(emu, "access_token", "token")
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            async with aiohttp.ClientSession(headers=headers) as square:
                ids = []
                for n in range(5):
                    async with square.post(
                        f"{base_url}/v2/customers", json={"given_name": f"Emu{n}", "idempotency_key": f"k{n}"}
                    ) as response:
                        assert response.status == 200, await response.text()
                        ids.append((await response.json())["customer"]["id"])
                async with square.put(f"{base_url}/v2/customers/{ids[0]}", json={"note": "updated"}) as response:
                    assert response.status == 200, await response.text()
                async with square.delete(f"{base_url}/v2/customers/{ids[1]}") as response:
                    assert response.status == 200, await response.text()
            await maybe_await(emu.drain_webhooks())

        assert deliveries, "the emulator delivered nothing"
        assert {status for _, _, status in deliveries} == {200}
        delivered_ids = {json.loads(body)["event_id"] for body, _, _ in deliveries}
        jobs = await queued_jobs(redis_url)
        assert sorted(j.job_id for j in jobs) == sorted(delivered_ids)
        assert {j.args[0]["type"] for j in jobs} >= {"customer.created", "customer.updated", "customer.deleted"}

        # Square redelivers at least once: every one of the emulator's signed deliveries again, as sent.
        async with aiohttp.ClientSession() as http:
            for body, sent_headers, _ in list(deliveries):
                keep = {k: v for k, v in sent_headers.items() if k.lower().startswith(("x-square", "content-type"))}
                async with http.post(notification_url, data=body, headers=keep) as response:
                    assert (response.status, await response.text()) == (200, '{"status":"duplicate"}')
        assert sorted(j.job_id for j in await queued_jobs(redis_url)) == sorted(delivered_ids)
    finally:
        await runner.cleanup()
