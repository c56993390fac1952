"""A per-seller request budget shared by every process through Redis.

Square rate-limits per seller and does not publish the numbers, so a fleet of workers and a backfill must
share one budget per merchant instead of each process storming the seller on its own. A token bucket in a
Lua script (atomic, using Redis' clock so hosts with skewed clocks agree) answers "go now" or "wait N ms".
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:  # only the type: a run without REDIS_URL never pays for importing redis
    from redis.asyncio import Redis

from square_mirror.constants import RATE_LIMIT_KEY

_BUCKET_SCRIPT: Final = """
local key = KEYS[1]
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HMGET', key, 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate / 1000.0)
local wait = 0
if tokens >= cost then
  tokens = tokens - cost
else
  wait = math.ceil((cost - tokens) * 1000.0 / rate)
end
redis.call('HSET', key, 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', key, math.ceil(burst * 1000.0 / rate) + 1000)
return wait
"""


class RateLimiter:
    """Token bucket per merchant: ``rate`` requests per second with bursts of ``burst``. rate <= 0 disables it."""

    def __init__(self, redis: Redis | None, *, rate: float, burst: int | None = None) -> None:
        self.redis = redis
        self.rate = rate
        self.burst = burst if burst is not None else max(1, int(rate))
        self._script: Any = redis.register_script(_BUCKET_SCRIPT) if redis is not None and rate > 0 else None

    @property
    def enabled(self) -> bool:
        return self._script is not None

    async def acquire(self, merchant_id: str, cost: int = 1) -> float:
        """Wait until the merchant's budget allows ``cost`` requests; returns the seconds spent waiting."""
        if self._script is None:
            return 0.0
        waited = 0.0
        while True:
            wait_ms = int(await self._script(keys=[RATE_LIMIT_KEY + merchant_id], args=[self.rate, self.burst, cost]))
            if wait_ms <= 0:
                return waited
            delay = min(wait_ms / 1000.0, 5.0)
            waited += delay
            await asyncio.sleep(delay)
