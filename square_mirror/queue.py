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
    )
