"""The per-seller budget: events first, then backfills, then lanes, each leaving a reserve to those before it; every
token counted by class."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from square_mirror.ratelimit import (
    BACKFILL_SPENDING,
    EVENT_SPENDING,
    LANE_SPENDING,
    RateLimiter,
    current_spend,
    read_usage,
    spending,
)
from square_mirror.settings import Secret
from square_mirror.square_api import RetryPolicy, SquareClient
from square_mirror.tokens import TokenSource
from tests.scripted_square import ScriptedSquare, json_reply


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


def slow_limiter(redis: Redis) -> RateLimiter:
    """Ten tokens that practically never refill during a test: every answer depends on the takes alone."""
    return RateLimiter(redis, rate=0.001, burst=10, lane_share=0.3)


async def test_lanes_stop_at_their_reserve_backfills_at_theirs_and_events_take_the_rest(redis: Redis) -> None:
    limiter = slow_limiter(redis)
    assert (limiter.lane_reserve, limiter.backfill_reserve) == (7, 2)
    assert [await limiter.take("M1", kind=LANE_SPENDING) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert await limiter.take("M1", kind=LANE_SPENDING) > 0  # 7 left: the lanes' reserve
    assert [await limiter.take("M1", kind=BACKFILL_SPENDING) for _ in range(5)] == [0.0] * 5
    assert await limiter.take("M1", kind=BACKFILL_SPENDING) > 0  # 2 left: the events' reserve
    assert [await limiter.take("M1") for _ in range(2)] == [0.0, 0.0]  # events: outside spending()
    assert await limiter.take("M1") > 0
    assert await limiter.take("M2", kind=LANE_SPENDING) == 0.0  # every seller has a bucket of its own


async def test_a_seller_s_usage_is_counted_by_class_and_only_when_a_token_was_taken(redis: Redis) -> None:
    limiter = slow_limiter(redis)
    for _ in range(5):
        await limiter.take("M1", kind=LANE_SPENDING)  # 3 taken, 2 refused
    for _ in range(6):
        await limiter.take("M1", kind=BACKFILL_SPENDING)  # 5 taken, 1 refused
    for _ in range(4):
        await limiter.take("M1", kind=EVENT_SPENDING)  # 2 taken, 2 refused
    await limiter.take("M2")
    usage = await read_usage(redis, ["M1", "M2", "M3"], minutes=1)
    assert usage == {"M1": {LANE_SPENDING: 3, BACKFILL_SPENDING: 5, EVENT_SPENDING: 2},
                     "M2": {LANE_SPENDING: 0, BACKFILL_SPENDING: 0, EVENT_SPENDING: 1},
                     "M3": {LANE_SPENDING: 0, BACKFILL_SPENDING: 0, EVENT_SPENDING: 0}}


def test_a_burst_of_one_reserves_nothing_so_lanes_can_still_run() -> None:
    assert RateLimiter(None, rate=1, burst=1, lane_share=0.3).lane_reserve == 0
    assert RateLimiter(None, rate=1, burst=1).backfill_reserve == 0
    assert RateLimiter(None, rate=1, burst=100).lane_reserve == 20  # no lane share: the backfill's reserve


def test_only_known_spending_classes_are_accepted() -> None:
    with pytest.raises(ValueError, match="spending class"), spending("cheap"):
        pass


async def test_concurrent_work_counts_its_own_requests_on_one_shared_client(
    square: tuple[ScriptedSquare, str], redis: Redis
) -> None:
    fake, url = square
    fake.script = [json_reply({"customer": {"id": "A", "version": 1}})] * 5
    limiter = RateLimiter(redis, rate=1000, burst=1000, lane_share=0.3)
    client = SquareClient(base_url=url, version="2025-08-20", tokens=TokenSource(single=Secret("tok-123456")),
                          retry=RetryPolicy(attempts=1), rate_limiter=limiter)

    async def work(kind: str, requests: int) -> int:
        with spending(kind) as spend:
            await asyncio.gather(*(client.retrieve_customer("M1", "A") for _ in range(requests)))
            assert current_spend() is spend
            return spend.requests

    async with client:
        counted = await asyncio.gather(work(LANE_SPENDING, 2), work(BACKFILL_SPENDING, 3))
    assert counted == [2, 3]
    assert current_spend() is None
    assert await read_usage(redis, ["M1"], minutes=1) == {"M1": {LANE_SPENDING: 2, BACKFILL_SPENDING: 3,
                                                                 EVENT_SPENDING: 0}}
