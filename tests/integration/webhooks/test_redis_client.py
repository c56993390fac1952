"""The receiver's Redis client against a real Redis: replies, errors, timeouts, reconnects, databases."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
import redis.utils
from redis import exceptions as redis_exceptions

from webhooks.enqueue import redis_client


def test_redis_py_parses_replies_with_hiredis() -> None:
    assert redis.utils.HIREDIS_AVAILABLE  # the hiredis the project requires is one redis-py uses


async def test_concurrent_commands_each_get_their_own_reply(redis_url: str) -> None:
    client = redis_client(redis_url, 2.0)
    try:
        replies = await asyncio.gather(*(client.execute_command("ECHO", f"m{n}") for n in range(300)))
        assert replies == [f"m{n}".encode() for n in range(300)]
    finally:
        await client.aclose()


async def test_an_error_reply_raises_and_the_client_stays_usable(redis_url: str) -> None:
    client = redis_client(redis_url, 2.0)
    try:
        with pytest.raises(redis_exceptions.ResponseError):
            await client.execute_command("EVAL", "return redis.call('NOSUCHCOMMAND')", 0)
        assert await client.execute_command("ECHO", "after") == b"after"
    finally:
        await client.aclose()


async def test_after_a_timeout_a_late_reply_never_answers_a_later_command(redis_url: str) -> None:
    client = redis_client(redis_url, 2.0)
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await client.execute_command("BLPOP", "redis-client-test-never-pushed", 1)
        assert await client.execute_command("ECHO", "mine") == b"mine"
        await asyncio.sleep(1.0)  # the BLPOP's own reply (nil) would have arrived by now
        assert await client.execute_command("ECHO", "still mine") == b"still mine"
    finally:
        await client.aclose()


async def test_a_connection_killed_by_the_server_is_replaced_transparently(redis_url: str) -> None:
    client = redis_client(redis_url, 2.0)
    admin = aioredis.Redis.from_url(redis_url)
    try:
        client_id = await client.execute_command("CLIENT", "ID")
        assert await admin.execute_command("CLIENT", "KILL", "ID", client_id) == 1
        assert await client.execute_command("ECHO", "again") == b"again"
        assert await client.execute_command("CLIENT", "ID") != client_id
    finally:
        await client.aclose()
        await admin.aclose()


async def test_commands_run_in_the_database_the_url_names(redis_url: str) -> None:
    client = redis_client(redis_url, 2.0)
    admin = aioredis.Redis.from_url(redis_url)
    try:
        await client.execute_command("SET", "redis-client-test-key", "here")
        assert await admin.get("redis-client-test-key") == b"here"
        await admin.delete("redis-client-test-key")
    finally:
        await client.aclose()
        await admin.aclose()


async def test_an_unreachable_redis_fails_at_once() -> None:
    client = redis_client("redis://127.0.0.1:1/0", 0.5)
    try:
        with pytest.raises(redis_exceptions.ConnectionError):
            await client.ping()
    finally:
        await client.aclose()
