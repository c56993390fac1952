"""Graceful shutdown: stop accepting, finish the requests in flight (their events are queued and answered
200), then close Redis."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from square_mirror.embedded import free_port
from tests.integration.webhooks.support import (
    PrivateRedis,
    customer_event,
    queued_jobs,
    settings_for,
    signed_headers,
)
from webhooks.app import METRICS_KEY, create_app


async def test_in_flight_requests_finish_and_new_connections_are_refused() -> None:
    server = PrivateRedis()
    server.start()
    try:
        app = create_app(settings_for(server.url), redis_timeout=2.0)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=10)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        url = f"http://127.0.0.1:{port}/square/webhooks"
        admin = aioredis.Redis.from_url(server.url)
        async with aiohttp.ClientSession() as http:
            body = customer_event(1)
            # Hold the enqueue in Redis for a moment so the request is in flight when shutdown starts.
            await admin.execute_command("CLIENT", "PAUSE", 600, "ALL")
            request = asyncio.ensure_future(http.post(url, data=body, headers=signed_headers(body)))
            metrics = app[METRICS_KEY]
            for _ in range(200):
                if metrics.in_flight_count >= 1:
                    break
                await asyncio.sleep(0.01)
            assert metrics.in_flight_count == 1
            shutdown = asyncio.ensure_future(runner.cleanup())
            response = await request
            assert response.status == 200
            assert await response.text() == '{"status":"queued"}'
            response.release()
            await shutdown
            with pytest.raises(aiohttp.ClientConnectionError):
                await http.post(url, data=body, headers=signed_headers(body))
        await admin.aclose()
        assert [j.job_id for j in await queued_jobs(server.url)] == ["evt-00000001"]
    finally:
        server.close()


async def test_serve_freezes_what_lives_forever_raises_the_young_gc_threshold_and_stops_on_sigterm(
    redis_url: str,
) -> None:
    import gc
    import os
    import signal

    from square_mirror.embedded import tcp_reachable
    from webhooks.cli import GC_YOUNG_THRESHOLD, serve

    threshold = gc.get_threshold()
    port = free_port()
    serving = asyncio.ensure_future(serve(create_app(settings_for(redis_url)), "127.0.0.1", port))
    try:
        for _ in range(200):
            if tcp_reachable("127.0.0.1", port, 0.05):
                break
            await asyncio.sleep(0.01)
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *threshold[1:])
        assert gc.get_freeze_count() > 0
        os.kill(os.getpid(), signal.SIGTERM)  # handled by serve's own signal handler
        assert await asyncio.wait_for(serving, 15) == 0
        assert not tcp_reachable("127.0.0.1", port, 0.2)
    finally:
        serving.cancel()
        gc.unfreeze()
        gc.set_threshold(*threshold)
