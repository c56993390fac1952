"""Graceful shutdown: stop accepting, finish the requests in flight (their events are queued and answered
200), then close Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from square_mirror.embedded import free_port, tcp_reachable
from tests.factories import signed_headers, webhook_body
from tests.integration.webhooks.support import (
    PrivateRedis,
    queued_jobs,
    settings_for,
)
from webhooks.app import METRICS_KEY, create_app


async def _poll(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Wait until ``condition()`` holds; the deadline only fails something that never happens."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, f"{what}: not within {timeout:.0f} s"
        await asyncio.sleep(0.01)


async def test_in_flight_requests_finish_and_new_connections_are_refused() -> None:
    server = PrivateRedis()
    server.start()
    try:
        # The enqueue is held in Redis until the test lets it go: a Redis timeout far longer than the test.
        app = create_app(settings_for(server.url), redis_timeout=120.0)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=60)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        url = f"http://127.0.0.1:{port}/square/webhooks"
        admin = aioredis.Redis.from_url(server.url)
        async with aiohttp.ClientSession() as http:
            body = webhook_body(1)
            # Hold the enqueue in Redis (writes wait until UNPAUSE) so the request is in flight when shutdown
            # starts, and let it go only once shutdown has stopped accepting (a 600 ms pause raced this).
            await admin.execute_command("CLIENT", "PAUSE", 600_000, "WRITE")
            try:
                request = asyncio.ensure_future(http.post(url, data=body, headers=signed_headers(body)))
                metrics = app[METRICS_KEY]
                await _poll(lambda: metrics.in_flight_count >= 1, "the request never reached the handler")
                assert metrics.in_flight_count == 1
                shutdown = asyncio.ensure_future(runner.cleanup())
                await _poll(lambda: not tcp_reachable("127.0.0.1", port, 0.2), "shutdown never stopped accepting")
                assert not request.done()  # still waiting for Redis while shutdown is under way
            finally:
                await admin.execute_command("CLIENT", "UNPAUSE")
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

    from webhooks.cli import GC_YOUNG_THRESHOLD, serve

    threshold = gc.get_threshold()
    gc.unfreeze()  # so the freeze seen below is serve's
    port = free_port()
    serving = asyncio.ensure_future(serve(create_app(settings_for(redis_url)), "127.0.0.1", port))
    try:
        # serve freezes the heap, raises the threshold and installs its SIGTERM handler in one step, one loop
        # iteration after it starts listening: wait for the freeze, not for the port (a SIGTERM before the handler
        # would kill the test process; a fixed number of tries could also run out on a loaded machine).
        await _poll(lambda: gc.get_freeze_count() > 0 or serving.done(), "serve never froze the heap")
        assert not serving.done(), serving.result()
        assert tcp_reachable("127.0.0.1", port, 5.0)
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *threshold[1:])
        os.kill(os.getpid(), signal.SIGTERM)  # handled by serve's own signal handler
        assert await asyncio.wait_for(serving, 15) == 0
        assert not tcp_reachable("127.0.0.1", port, 0.2)
    finally:
        serving.cancel()
        gc.unfreeze()
        gc.set_threshold(*threshold)
