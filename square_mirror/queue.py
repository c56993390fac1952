"""How jobs are written to and read from Redis: the arq connection settings and the job serializer.

Both sides of the queue import these, so a job the receiver writes is always one the worker can read.
JSON (orjson) instead of arq's default pickle: a job read from Redis can then never execute code, and the
payloads stay inspectable with redis-cli.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

import orjson
from arq.connections import RedisSettings
from redis import exceptions as redis_exceptions
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

# How long an arq client (the worker's poll loop, the reconcile CLI, redrive) rides out Redis being unreachable
# before a command fails: about 30 s of retries, backoff 0.05 s doubling to 1 s. Without it arq's poll loop
# dies on the first ConnectionError and takes the worker process with it (found by the chaos run).
REDIS_COMMAND_RETRIES = 40


def serialize_job(value: dict[str, Any]) -> bytes:
    return orjson.dumps(value)


def deserialize_job(data: bytes) -> dict[str, Any]:
    value: dict[str, Any] = orjson.loads(data)
    return value


def redis_settings(url: str, *, conn_timeout: int = 2, conn_retries: int = 3) -> RedisSettings:
    """arq's RedisSettings from a redis:// or rediss:// URL (arq's own from_dsn drops some parts)."""
    parts = urlsplit(url)
    database = 0
    if parts.path and parts.path != "/":
        database = int(parts.path.lstrip("/"))
    return RedisSettings(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 6379,
        database=database,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        ssl=parts.scheme == "rediss",
        conn_timeout=conn_timeout,
        conn_retries=conn_retries,
        conn_retry_delay=1,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), REDIS_COMMAND_RETRIES,
                    supported_errors=(redis_exceptions.ConnectionError, redis_exceptions.TimeoutError)),
        # Added to the retry's errors by redis-py; OSError because a refused connect reaches the retry as the
        # socket's own error, before redis-py wraps it.
        retry_on_error=[redis_exceptions.ConnectionError, redis_exceptions.TimeoutError, OSError],
    )
