"""Redis stopped, hung or slow: 503 well within Square's 10 s, never a 200 for an event that is not queued,
and back to 200 by itself once Redis is back, with nothing queued twice.

These tests run a redis-server of their own (or a TCP black hole): the shared Redis is never stopped or paused.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
import redis.asyncio as aioredis

from tests.integration.webhooks.support import (
    PrivateRedis,
    Receiver,
    blackhole_server,
    customer_event,
    queued_jobs,
    running_receiver,
    settings_for,
    signed_headers,
)

TIMEOUT = 1.0  # the receiver's Redis timeout in these tests (2 s in production)


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    server.start()
    yield server
    server.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def deliver(http: aiohttp.ClientSession, receiver: Receiver, n: int) -> tuple[int, str, float]:
    body = customer_event(n)
    started = time.monotonic()
    async with http.post(receiver.url, data=body, headers=signed_headers(body)) as response:
        return response.status, await response.text(), time.monotonic() - started


async def status_of(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(url) as response:
        return response.status


async def test_redis_stopped_mid_run_gives_503_then_200_again_and_nothing_twice(
    private_redis: PrivateRedis, http: aiohttp.ClientSession
) -> None:
    async with running_receiver(settings_for(private_redis.url), redis_timeout=TIMEOUT) as receiver:
        before = await asyncio.gather(*(deliver(http, receiver, n) for n in range(10)))
        assert [s for s, _, _ in before] == [200] * 10

        await asyncio.to_thread(private_redis.stop)
        during = await asyncio.gather(*(deliver(http, receiver, n) for n in [*range(10, 20), *range(5)]))
        assert [s for s, _, _ in during] == [503] * 15
        assert max(elapsed for _, _, elapsed in during) < TIMEOUT + 1.5
        assert await status_of(http, receiver.base + "/readyz") == 503
        assert await status_of(http, receiver.base + "/healthz") == 200

        await asyncio.to_thread(private_redis.start)
        assert await status_of(http, receiver.base + "/readyz") == 200
        after = await asyncio.gather(*(deliver(http, receiver, n) for n in range(20)))
        assert [s for s, _, _ in after] == [200] * 20
        assert sorted(text for _, text, _ in after) == ['{"status":"duplicate"}'] * 10 + ['{"status":"queued"}'] * 10

        async with http.get(receiver.base + "/metrics") as response:
            metrics = await response.text()
    assert 'square_mirror_webhook_requests_total{event_type="customer.updated",outcome="unavailable"} 15.0' in metrics
    assert 'square_mirror_webhook_enqueue_failures_total{event_type="customer.updated",reason="connection"} 15.0' in (
        metrics
    )
    jobs = await queued_jobs(private_redis.url)
    assert sorted(j.job_id for j in jobs) == sorted(f"evt-{n:08d}" for n in range(20))


async def test_the_receiver_starts_while_redis_is_down_and_recovers(http: aiohttp.ClientSession) -> None:
    server = PrivateRedis()  # port reserved, server not started yet
    try:
        async with running_receiver(settings_for(server.url), redis_timeout=TIMEOUT) as receiver:
            assert (await deliver(http, receiver, 1))[0] == 503
            assert await status_of(http, receiver.base + "/readyz") == 503
            await asyncio.to_thread(server.start)
            assert (await deliver(http, receiver, 1))[0] == 200
        assert [j.job_id for j in await queued_jobs(server.url)] == ["evt-00000001"]
    finally:
        server.close()


async def test_a_hung_redis_gives_503_within_the_timeout(http: aiohttp.ClientSession) -> None:
    async with blackhole_server() as port:
        settings = settings_for(f"redis://127.0.0.1:{port}/0")
        async with running_receiver(settings, redis_timeout=TIMEOUT) as receiver:
            # Requests behind a hung flush are never sent; they are bounded by the same timeout, counted from
            # their arrival (under 2 x TIMEOUT: none waits for the hung flush to time out and then for its own).
            results = await asyncio.gather(*(deliver(http, receiver, n) for n in range(40)))
            assert [s for s, _, _ in results] == [503] * 40
            assert max(elapsed for _, _, elapsed in results) < TIMEOUT + 0.9
            started = time.monotonic()
            assert await status_of(http, receiver.base + "/readyz") == 503
            assert time.monotonic() - started < TIMEOUT + 1.5
            assert await status_of(http, receiver.base + "/healthz") == 200


async def test_a_slow_redis_gives_503_and_the_retry_is_a_200(
    private_redis: PrivateRedis, http: aiohttp.ClientSession
) -> None:
    """A 503 for an event Redis ended up storing is allowed (Square retries, the retry is a duplicate);
    a 200 for an event Redis did not store is not."""
    admin = aioredis.Redis.from_url(private_redis.url)
    async with running_receiver(settings_for(private_redis.url), redis_timeout=TIMEOUT) as receiver:
        assert (await deliver(http, receiver, 0))[0] == 200  # connections are warm
        await admin.execute_command("CLIENT", "PAUSE", int((TIMEOUT + 1.0) * 1000), "ALL")
        status, _, elapsed = await deliver(http, receiver, 1)
        assert status == 503
        assert elapsed < TIMEOUT + 1.5
        await asyncio.sleep(1.2)  # the pause ends
        status, text, _ = await deliver(http, receiver, 1)
        assert status == 200
        assert text in ('{"status":"queued"}', '{"status":"duplicate"}')
    await admin.aclose()
    assert sorted(j.job_id for j in await queued_jobs(private_redis.url)) == ["evt-00000000", "evt-00000001"]
