"""Realism knobs applied to the public API: latency, random 5xx, per-seller rate limiting.

Admin endpoints are never affected, so tests can always observe and reset the emulator.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable

from .config import Knobs
from .errors import internal_error, rate_limited, service_unavailable


class TokenBucket:
    """Per-seller bucket: ``rate`` tokens per second, ``burst`` capacity."""

    __slots__ = ("stamp", "tokens")

    def __init__(self, burst: float) -> None:
        self.tokens = burst
        self.stamp = time.monotonic()

    def take(self, rate: float, burst: float) -> float | None:
        """Consume one token; return None if allowed, else seconds until one is available."""
        now = time.monotonic()
        self.tokens = min(burst, self.tokens + (now - self.stamp) * rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return None
        return (1.0 - self.tokens) / rate


class FaultInjector:
    def __init__(self, seed: int, knobs: Knobs) -> None:
        self.knobs = knobs
        self.rng = random.Random(f"faults:{seed}")
        self.buckets: dict[str, TokenBucket] = {}
        # How the latency is waited for: tests may wrap it to see which requests got which latency.
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    def reset(self, seed: int) -> None:
        self.rng = random.Random(f"faults:{seed}")
        self.buckets.clear()

    async def before(self, merchant_id: str, operation: str) -> None:
        """Raise the configured fault for this request, if any, after the configured latency."""
        k = self.knobs
        delay = k.latency_ms + k.endpoint_latency_ms.get(operation, 0.0)
        if k.jitter_ms:
            delay += self.rng.uniform(0, k.jitter_ms)
        if delay > 0:
            await self.sleep(delay / 1000.0)
        if k.rate_limit_rps > 0:
            burst = float(k.rate_limit_burst or k.rate_limit_rps)
            bucket = self.buckets.get(merchant_id)
            if bucket is None:
                bucket = self.buckets[merchant_id] = TokenBucket(burst)
            wait = bucket.take(k.rate_limit_rps, burst)
            if wait is not None:
                raise rate_limited(wait if k.retry_after else None)
        if k.error_429_rate or k.error_500_rate or k.error_503_rate:
            draw = self.rng.random()
            if draw < k.error_429_rate:
                raise rate_limited(1.0 if k.retry_after else None)
            draw -= k.error_429_rate
            if draw < k.error_500_rate:
                raise internal_error()
            draw -= k.error_500_rate
            if draw < k.error_503_rate:
                raise service_unavailable()
