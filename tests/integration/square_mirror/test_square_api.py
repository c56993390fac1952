"""The Square client against a real HTTP server that misbehaves on purpose."""

from __future__ import annotations

import time
from typing import Any

import pytest
from redis.asyncio import Redis

from square_mirror.ratelimit import RateLimiter
from square_mirror.settings import Secret
from square_mirror.square_api import (
    RetryPolicy,
    SquareBadResponse,
    SquareClient,
    SquareInvalidRequest,
    SquareRateLimited,
    SquareUnauthorized,
    SquareUnavailable,
    parse_retry_after,
)
from square_mirror.tokens import TokenSource
from tests.scripted_square import Responder, ScriptedSquare, json_reply, raw_reply


def make_client(base_url: str, **kw: Any) -> SquareClient:
    return SquareClient(
        base_url=base_url, version="2025-08-20", tokens=TokenSource(single=Secret("tok-123456")),
        retry=RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05, deadline=10), **kw,
    )


async def test_sends_bearer_token_and_pinned_version(square: tuple[ScriptedSquare, str]) -> None:
    fake, url = square
    fake.script = [json_reply({"customer": {"id": "A", "version": 1}})]
    async with make_client(url) as client:
        assert await client.retrieve_customer("M", "A") == {"id": "A", "version": 1}
    headers = fake.requests[0]["headers"]
    assert headers["Authorization"] == "Bearer tok-123456"
    assert headers["Square-Version"] == "2025-08-20"
    assert fake.requests[0]["path"] == "/v2/customers/A"


async def test_not_found_is_none(square: tuple[ScriptedSquare, str]) -> None:
    fake, url = square
    fake.script = [json_reply({"errors": [{"code": "NOT_FOUND", "category": "INVALID_REQUEST_ERROR",
                                          "detail": "Customer with ID `A` not found."}]}, status=404)]
    async with make_client(url) as client:
        assert await client.retrieve_customer("M", "A") is None


async def test_retries_429_and_5xx_then_succeeds(square: tuple[ScriptedSquare, str]) -> None:
    fake, url = square
    fake.script = [
        json_reply({"errors": [{"code": "RATE_LIMITED", "category": "RATE_LIMIT_ERROR"}]}, status=429,
                   headers={"Retry-After": "0"}),
        json_reply({"errors": [{"code": "INTERNAL_SERVER_ERROR", "category": "API_ERROR"}]}, status=500),
        raw_reply(b"<html>502 Bad Gateway</html>", status=502, content_type="text/html"),
        json_reply({"customer": {"id": "A", "version": 2}}),
    ]
    async with make_client(url) as client:
        assert (await client.retrieve_customer("M", "A") or {})["version"] == 2
    assert len(fake.requests) == 4


async def test_retry_after_is_honoured(square: tuple[ScriptedSquare, str]) -> None:
    fake, url = square
    fake.script = [json_reply({"errors": [{"code": "RATE_LIMITED", "category": "RATE_LIMIT_ERROR"}]}, status=429,
                              headers={"Retry-After": "0.3"}),
                   json_reply({"customer": {"id": "A", "version": 0}})]
    started = time.monotonic()
    async with make_client(url) as client:
        await client.retrieve_customer("M", "A")
    assert time.monotonic() - started >= 0.3


async def test_persistent_rate_limit_raises_after_the_attempts(square: tuple[ScriptedSquare, str]) -> None:
    fake, url = square
    fake.script = [json_reply({"errors": [{"code": "RATE_LIMITED", "category": "RATE_LIMIT_ERROR"}]}, status=429)] * 4
    async with make_client(url) as client:
        with pytest.raises(SquareRateLimited):
            await client.retrieve_customer("M", "A")
    assert len(fake.requests) == 4


async def test_unauthorized_is_not_retried_and_reported(square: tuple[ScriptedSquare, str]) -> None:
    fake, url = square
    fake.script = [json_reply({"errors": [{"code": "UNAUTHORIZED", "category": "AUTHENTICATION_ERROR"}]}, status=401)]
    reported: list[tuple[str, str]] = []

    async def hook(merchant_id: str, message: str) -> None:
        reported.append((merchant_id, message))

    async with make_client(url, on_unauthorized=hook) as client:
        with pytest.raises(SquareUnauthorized):
            await client.retrieve_customer("M1", "A")
    assert len(fake.requests) == 1
    assert reported[0][0] == "M1"
    assert "tok-123456" not in reported[0][1]


@pytest.mark.parametrize(
    "reply",
    [
        raw_reply(b'{"customer": {"id": "A"', content_type="application/json"),  # truncated
        raw_reply(b"<html>Service temporarily unavailable</html>", content_type="text/html"),  # HTML with 200
        json_reply({"errors": [{"code": "INTERNAL_SERVER_ERROR", "category": "API_ERROR"}]}),  # 200 with errors
        json_reply(["not", "an", "object"]),
    ],
)
async def test_malformed_answers_become_bad_response_errors(
    square: tuple[ScriptedSquare, str], reply: Responder
) -> None:
    fake, url = square
    fake.script = [reply] * 4
    async with make_client(url) as client:
        with pytest.raises(SquareBadResponse):
            await client.retrieve_customer("M", "A")


async def test_invalid_request_is_not_retried(square: tuple[ScriptedSquare, str]) -> None:
    fake, url = square
    fake.script = [json_reply({"errors": [{"code": "INVALID_CURSOR", "category": "INVALID_REQUEST_ERROR"}]}, 400)]
    async with make_client(url) as client:
        with pytest.raises(SquareInvalidRequest) as info:
            await client.search_customers("M", {"cursor": "old"})
    assert info.value.codes == ["INVALID_CURSOR"]
    assert len(fake.requests) == 1


async def test_unreachable_square_is_unavailable() -> None:
    from square_mirror.embedded import free_port

    async with make_client(f"http://127.0.0.1:{free_port()}") as client:
        with pytest.raises(SquareUnavailable):
            await client.retrieve_customer("M", "A")


async def test_bulk_retrieve_maps_items_and_not_found(square: tuple[ScriptedSquare, str]) -> None:
    fake, url = square
    fake.script = [json_reply({"responses": {
        "A": {"customer": {"id": "A", "version": 3}},
        "B": {"errors": [{"code": "NOT_FOUND", "category": "INVALID_REQUEST_ERROR",
                          "detail": "Customer with ID `B` not found."}]},
    }})]
    async with make_client(url) as client:
        result = await client.bulk_retrieve_customers("M", ["A", "B"])
    assert result == {"A": {"id": "A", "version": 3}, "B": None}
    assert fake.requests[0]["body"] == {"customer_ids": ["A", "B"]}


def test_retry_after_parsing() -> None:
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("1000") == 60.0
    assert parse_retry_after("garbage") is None
    assert parse_retry_after(None) is None


async def test_rate_limiter_is_shared_through_redis(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    first, second = RateLimiter(redis, rate=20, burst=5), RateLimiter(redis, rate=20, burst=5)
    started = time.monotonic()
    for limiter in (first, second) * 5:  # 10 requests against one budget: 5 burst + 5 at 20/s
        await limiter.acquire("M1")
    elapsed = time.monotonic() - started
    await first.acquire("OTHER")  # another merchant has its own budget
    await redis.aclose()
    assert elapsed >= 0.2


@pytest.mark.parametrize(
    ("field", "value"),
    [("given_name", {"text": "x"}), ("version", "seven"), ("created_at", "yesterday"), ("group_ids", "G1"),
     ("address", "1 Main St"), ("preferences", {"email_unsubscribed": "no"})],
)
async def test_customers_of_the_wrong_shape_are_bad_responses_naming_the_field(
    square: tuple[ScriptedSquare, str], field: str, value: Any
) -> None:
    fake, url = square
    customer = {"id": "A", "version": 1, "created_at": "2024-01-01T00:00:00Z", field: value}
    fake.script = [json_reply({"customer": customer}), json_reply({"customers": [customer]}),
                   json_reply({"responses": {"A": {"customer": customer}, "B": {"customer": {**customer, "id": "B"}}}})]
    async with make_client(url) as client:
        for call in (client.retrieve_customer("M", "A"), client.search_customers("M", {}),
                     client.bulk_retrieve_customers("M", ["A", "B"])):
            with pytest.raises(SquareBadResponse, match=field.split(".")[0]):
                await call


async def test_a_listed_customer_without_created_at_or_a_page_that_is_not_a_list_is_a_bad_response(
    square: tuple[ScriptedSquare, str]
) -> None:
    fake, url = square
    fake.script = [json_reply({"customers": [{"id": "A", "version": 1}]}), json_reply({"customers": "A"}),
                   json_reply({"groups": [{"id": "G", "name": {"x": 1}}]})]
    async with make_client(url) as client:
        with pytest.raises(SquareBadResponse, match="created_at"):
            await client.search_customers("M", {})
        with pytest.raises(SquareBadResponse, match="not a list"):
            await client.list_customers("M")
        with pytest.raises(SquareBadResponse, match="name"):
            await client.list_groups("M")
