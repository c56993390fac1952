"""A per-seller request budget shared by every process through Redis.

Square rate-limits per seller and does not publish the numbers, so a fleet of workers and a backfill must
share one budget per merchant instead of each process storming the seller on its own. A token bucket in a
Lua script (atomic, using Redis' clock so hosts with skewed clocks agree) answers "go now" or "wait N ms".

Three classes of spending share each seller's bucket, because a seller's event lag matters more than how soon its
backfill ends, and that more than how soon a reconcile lane does:
- ``events`` (the event jobs, and any request made outside :func:`spending`) take a token whenever one is there;
- ``backfill`` takes one only while the bucket keeps :data:`~square_mirror.constants.BACKFILL_EVENT_RESERVE` of
  the burst after it, so a backfill never empties the bucket under the seller's events;
- ``lanes`` takes one only while the bucket keeps ``(1 - lane_share)`` of the burst (at least the backfill's
  reserve), so the lanes get what the events and the backfill leave.

Every token taken is also counted per seller, class and minute (:data:`USAGE_KEY`, kept for
:data:`USAGE_MINUTES` minutes), which is what the budget scheduler (worker/reconcile/scheduler.py) reads to know
what events and backfills used and what the lanes already spent. :func:`spending` names the class of the work
running in the current task and counts that work's own requests (concurrent runs in one process each count
their own).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:  # only the type: a run without REDIS_URL never pays for importing redis
    from redis.asyncio import Redis

from square_mirror.constants import BACKFILL_EVENT_RESERVE, RATE_LIMIT_KEY, USAGE_KEY, USAGE_MINUTES

EVENT_SPENDING: Final = "events"  # event jobs and anything else outside spending(): first served
BACKFILL_SPENDING: Final = "backfill"  # backfill runs: above the events' reserve
LANE_SPENDING: Final = "lanes"  # the reconcile lanes (the sweep included): above the lanes' reserve
SPENDING_CLASSES: Final = (EVENT_SPENDING, BACKFILL_SPENDING, LANE_SPENDING)

# KEYS[1] the bucket, KEYS[2] the usage hash; ARGV rate, burst, cost, reserve (tokens this class must leave),
# class, minutes kept. Returns the milliseconds to wait (0: taken and counted).
_BUCKET_SCRIPT: Final = """
local key = KEYS[1]
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local reserve = tonumber(ARGV[4])
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
if tokens - cost >= reserve then
  tokens = tokens - cost
  local minute = math.floor(now / 60000)
  local kept = tonumber(ARGV[6])
  redis.call('HINCRBY', KEYS[2], minute .. ':' .. ARGV[5], cost)
  redis.call('HDEL', KEYS[2], (minute - kept) .. ':events', (minute - kept) .. ':backfill', (minute - kept) .. ':lanes')
  redis.call('PEXPIRE', KEYS[2], kept * 60000)
else
  wait = math.ceil((cost + reserve - tokens) * 1000.0 / rate)
end
redis.call('HSET', key, 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', key, math.ceil(burst * 1000.0 / rate) + 1000)
return wait
"""


@dataclass(slots=True)
class Spend:
    """One piece of work's requests (a lane pass, a backfill run) and the class they are charged to."""

    kind: str = EVENT_SPENDING
    requests: int = 0


_SPEND: ContextVar[Spend | None] = ContextVar("square_mirror_spend", default=None)


@contextmanager
def spending(kind: str = EVENT_SPENDING) -> Iterator[Spend]:
    """Charge the Square requests made by the current task (and the tasks it starts) to ``kind`` and count them.

    A context variable, not the client's total, because one process runs many passes at once on one client."""
    if kind not in SPENDING_CLASSES:
        raise ValueError(f"unknown spending class {kind!r}")
    spend = Spend(kind)
    token = _SPEND.set(spend)
    try:
        yield spend
    finally:
        _SPEND.reset(token)


def current_spend() -> Spend | None:
    """The work the current task's requests are charged to (None: not inside :func:`spending`: ``other``)."""
    return _SPEND.get()


class RateLimiter:
    """Token bucket per merchant: ``rate`` requests per second with bursts of ``burst``. rate <= 0 disables it.

    ``lane_share``: the lanes' share of the budget; the lanes leave ``(1 - lane_share) x burst`` tokens to the
    others, a backfill leaves :data:`BACKFILL_EVENT_RESERVE` x burst to the events (each at least one token, and
    never the whole burst)."""

    def __init__(self, redis: Redis | None, *, rate: float, burst: int | None = None,
                 lane_share: float = 1.0) -> None:
        self.redis = redis
        self.rate = rate
        self.burst = burst if burst is not None else max(1, int(rate))
        most = self.burst - 1  # a burst of 1 leaves nothing to reserve
        self.backfill_reserve = min(most, max(1, round(BACKFILL_EVENT_RESERVE * self.burst)))
        lanes = 0 if lane_share >= 1.0 else max(1, round((1.0 - lane_share) * self.burst))
        self.lane_reserve = min(most, max(lanes, self.backfill_reserve))
        self._reserves = {EVENT_SPENDING: 0, BACKFILL_SPENDING: self.backfill_reserve, LANE_SPENDING: self.lane_reserve}
        self._script: Any = redis.register_script(_BUCKET_SCRIPT) if redis is not None and rate > 0 else None

    @property
    def enabled(self) -> bool:
        return self._script is not None

    async def take(self, merchant_id: str, cost: int = 1, kind: str = EVENT_SPENDING) -> float:
        """Take ``cost`` tokens of class ``kind`` now if the bucket allows: 0.0, else the seconds to wait first."""
        if self._script is None:
            return 0.0
        reserve = self._reserves[kind]
        wait_ms = int(await self._script(keys=[RATE_LIMIT_KEY + merchant_id, USAGE_KEY + merchant_id],
                                         args=[self.rate, self.burst, cost, reserve, kind, USAGE_MINUTES]))
        return max(0, wait_ms) / 1000.0

    async def acquire(self, merchant_id: str, cost: int = 1, kind: str = EVENT_SPENDING) -> float:
        """Wait until the merchant's budget allows ``cost`` requests of class ``kind``; returns the seconds spent
        waiting."""
        waited = 0.0
        while True:
            wait = await self.take(merchant_id, cost, kind)
            if wait <= 0:
                return waited
            delay = min(wait, 5.0)
            waited += delay
            await asyncio.sleep(delay)

async def read_usage(redis: Redis, merchant_ids: Sequence[str], minutes: int) -> dict[str, dict[str, int]]:
    """Requests each seller's bucket gave out in the last ``minutes`` whole minutes and the current one, by class
    (``events``, ``backfill``, ``lanes``); by Redis' clock, the one the bucket counts by. At most
    :data:`USAGE_MINUTES` back."""
    seconds, _micros = await redis.time()
    now_minute = int(seconds) // 60
    first = now_minute - min(minutes, USAGE_MINUTES - 1)
    async with redis.pipeline(transaction=False) as pipe:
        for merchant_id in merchant_ids:
            pipe.hgetall(USAGE_KEY + merchant_id)
        answers = await pipe.execute()
    usage: dict[str, dict[str, int]] = {}
    for merchant_id, fields in zip(merchant_ids, answers, strict=True):
        spent = dict.fromkeys(SPENDING_CLASSES, 0)
        for name, count in fields.items():
            minute, _, kind = (name.decode() if isinstance(name, bytes) else name).partition(":")
            if kind in spent and int(minute) >= first:
                spent[kind] += int(count)
        usage[merchant_id] = spent
    return usage
