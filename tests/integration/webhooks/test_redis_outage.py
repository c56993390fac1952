"""Redis stopped, hung or slow: 503 well within Square's 10 s, never a 200 for an event that is not queued,
and back to 200 by itself once Redis is back, with nothing queued twice.

These tests run a redis-server of their own (or a TCP black hole): the shared Redis is never stopped or paused.
No test measures how long an answer took: every request must be answered before Square would give up (a
deadline only a receiver that ignores its Redis timeout misses), and the bound the enqueuer's watchdog keeps is
checked with a clock the test moves.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
import redis.asyncio as aioredis

from tests.factories import signed_headers, webhook_body
from tests.integration.webhooks.support import (
    PrivateRedis,
    Receiver,
    blackhole_server,
    queued_jobs,
    running_receiver,
    settings_for,
)
from webhooks.enqueue import BatchEnqueuer, QueueUnavailable, redis_client

TIMEOUT = 1.0  # the receiver's Redis timeout in these tests (2 s in production)
SQUARE_GIVES_UP = 10.0  # seconds Square waits for an answer to a delivery


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


async def deliver(http: aiohttp.ClientSession, receiver: Receiver, n: int) -> tuple[int, str]:
    """Status and body of one delivery, which must be answered before Square gives up on it."""
    body = webhook_body(n)
    try:
        async with asyncio.timeout(SQUARE_GIVES_UP):
            async with http.post(receiver.url, data=body, headers=signed_headers(body)) as response:
                return response.status, await response.text()
    except TimeoutError:
        raise AssertionError(f"delivery {n} not answered within Square's {SQUARE_GIVES_UP:.0f} s") from None


async def status_of(http: aiohttp.ClientSession, url: str) -> int:
    try:
        async with asyncio.timeout(SQUARE_GIVES_UP):
            async with http.get(url) as response:
                return response.status
    except TimeoutError:
        raise AssertionError(f"{url} not answered within {SQUARE_GIVES_UP:.0f} s") from None


async def test_redis_stopped_mid_run_gives_503_then_200_again_and_nothing_twice(
    private_redis: PrivateRedis, http: aiohttp.ClientSession
) -> None:
    async with running_receiver(settings_for(private_redis.url), redis_timeout=TIMEOUT) as receiver:
        before = await asyncio.gather(*(deliver(http, receiver, n) for n in range(10)))
        assert [s for s, _ in before] == [200] * 10

        await asyncio.to_thread(private_redis.stop)
        during = await asyncio.gather(*(deliver(http, receiver, n) for n in [*range(10, 20), *range(5)]))
        assert [s for s, _ in during] == [503] * 15
        assert await status_of(http, receiver.base + "/readyz") == 503
        assert await status_of(http, receiver.base + "/healthz") == 200

        await asyncio.to_thread(private_redis.start)
        assert await status_of(http, receiver.base + "/readyz") == 200
        after = await asyncio.gather(*(deliver(http, receiver, n) for n in range(20)))
        assert [s for s, _ in after] == [200] * 20
        assert sorted(text for _, text in after) == ['{"status":"duplicate"}'] * 10 + ['{"status":"queued"}'] * 10

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
            # Requests behind a hung flush are never sent; they get their 503 too (how soon: the next test).
            results = await asyncio.gather(*(deliver(http, receiver, n) for n in range(40)))
            assert [s for s, _ in results] == [503] * 40
            assert await status_of(http, receiver.base + "/readyz") == 503
            assert await status_of(http, receiver.base + "/healthz") == 200


class MovedClock:
    """The enqueuer's clock, moved only by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _settled(*futures: asyncio.Future[bool], timeout: float = 30.0) -> None:
    """Poll until every future is done (the watchdog ticks every quarter second); the deadline only fails a
    watchdog that never expires them."""
    async with asyncio.timeout(timeout):
        while not all(f.done() for f in futures):
            await asyncio.sleep(0.01)


async def test_a_job_behind_a_hung_flush_expires_counted_from_its_own_arrival() -> None:
    """The watchdog's bound: each job fails ``timeout`` after it arrived, whether it was sent or is still waiting
    behind a hung flush; none waits for the hung flush to time out first and then for its own timeout. The
    enqueuer's clock is the test's, and the flush's own timeout is too long to ever fire here: only the watchdog
    can fail these jobs, and only when the test's clock says they expired."""
    timeout = 3600.0
    clock = MovedClock()
    async with blackhole_server() as port:
        redis = redis_client(f"redis://127.0.0.1:{port}/0", timeout)
        enqueuer = BatchEnqueuer(redis, timeout=timeout, clock=clock)
        jobs: list[asyncio.Future[bool]] = []
        try:
            jobs.append(sent := asyncio.ensure_future(enqueuer.enqueue("evt-sent", {"n": 1})))  # its flush hangs
            await asyncio.sleep(0)
            clock.now += 100
            jobs.append(behind := asyncio.ensure_future(enqueuer.enqueue("evt-behind", {"n": 2})))  # waits behind it
            await asyncio.sleep(0)
            clock.now += timeout - 100  # the first job's deadline, 100 s before the second one's
            await _settled(sent)
            error = sent.exception()
            assert isinstance(error, QueueUnavailable) and error.reason == "timeout"
            # The tick that expired the first job looked at the second and left it: still waiting.
            assert not behind.done()
            clock.now += 100
            await _settled(behind)
            error = behind.exception()
            assert isinstance(error, QueueUnavailable) and error.reason == "timeout"
        finally:
            for job in jobs:
                job.cancel()  # (already answered unless the test failed) so close() never sends them again
            await redis.connection_pool.disconnect()  # fails the hung flush, so close() does not wait for it
            await enqueuer.close()
            await redis.aclose()


async def test_a_slow_redis_gives_503_and_the_retry_is_a_200(
    private_redis: PrivateRedis, http: aiohttp.ClientSession
) -> None:
    """A 503 for an event Redis ended up storing is allowed (Square retries, the retry is a duplicate);
    a 200 for an event Redis did not store is not."""
    admin = aioredis.Redis.from_url(private_redis.url)
    async with running_receiver(settings_for(private_redis.url), redis_timeout=TIMEOUT) as receiver:
        assert (await deliver(http, receiver, 0))[0] == 200  # connections are warm
        # Writes (EVAL included) wait until the test lifts the pause: only the receiver's timeout can answer this
        # delivery, and the retry comes only after Redis is back (no fixed pause racing a sleep).
        await admin.execute_command("CLIENT", "PAUSE", 600_000, "WRITE")
        try:
            status, _ = await deliver(http, receiver, 1)
            assert status == 503
        finally:
            await admin.execute_command("CLIENT", "UNPAUSE")
        status, text = await deliver(http, receiver, 1)
        assert status == 200
        assert text in ('{"status":"queued"}', '{"status":"duplicate"}')
    await admin.aclose()
    assert sorted(j.job_id for j in await queued_jobs(private_redis.url)) == ["evt-00000000", "evt-00000001"]
