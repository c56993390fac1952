"""The receiver's lean Redis connection against a real Redis: order, errors, resets, reconnects, databases."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from redis import exceptions as redis_exceptions

from webhooks.redis_connection import RedisConnection


async def test_concurrent_commands_pipeline_on_one_connection_and_each_gets_its_own_reply(redis_url: str) -> None:
    conn = RedisConnection.from_url(redis_url)
    try:
        client_id = await conn.execute_idempotent("CLIENT", "ID")
        replies = await asyncio.gather(*(conn.execute_idempotent("ECHO", f"m{n}") for n in range(300)))
        assert replies == [f"m{n}".encode() for n in range(300)]
        assert await conn.execute_idempotent("CLIENT", "ID") == client_id  # one socket served them all
    finally:
        await conn.close()


async def test_an_error_reply_raises_and_the_connection_stays_usable(redis_url: str) -> None:
    conn = RedisConnection.from_url(redis_url)
    try:
        with pytest.raises(redis_exceptions.ResponseError):
            await conn.execute_idempotent("EVAL", "return redis.call('NOSUCHCOMMAND')", 0)
        assert await conn.execute_idempotent("ECHO", "after") == b"after"
    finally:
        await conn.close()


async def test_after_a_timeout_and_reset_a_late_reply_never_answers_a_later_command(redis_url: str) -> None:
    conn = RedisConnection.from_url(redis_url)
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await conn.execute_idempotent("BLPOP", "redis-connection-test-never-pushed", 1)
        conn.reset()
        assert await conn.execute_idempotent("ECHO", "mine") == b"mine"
    finally:
        await conn.close()


async def test_a_connection_killed_by_the_server_is_replaced_transparently(redis_url: str) -> None:
    conn = RedisConnection.from_url(redis_url)
    admin = aioredis.Redis.from_url(redis_url)
    try:
        client_id = await conn.execute_idempotent("CLIENT", "ID")
        assert await admin.execute_command("CLIENT", "KILL", "ID", client_id) == 1
        assert await conn.execute_idempotent("ECHO", "again") == b"again"
        assert await conn.execute_idempotent("CLIENT", "ID") != client_id
    finally:
        await conn.close()
        await admin.aclose()


async def test_commands_run_in_the_database_the_url_names(redis_url: str) -> None:
    conn = RedisConnection.from_url(redis_url)
    admin = aioredis.Redis.from_url(redis_url)
    try:
        await conn.execute_idempotent("SET", "redis-connection-test-key", "here")
        assert await admin.get("redis-connection-test-key") == b"here"
        await admin.delete("redis-connection-test-key")
    finally:
        await conn.close()
        await admin.aclose()


async def test_an_unreachable_redis_fails_within_the_timeout() -> None:
    conn = RedisConnection("127.0.0.1", 1, timeout=0.5)
    with pytest.raises(ConnectionRefusedError):
        await conn.execute_idempotent("PING")
