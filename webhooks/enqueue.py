"""The enqueue path: arq jobs written in batches, one Redis round trip for many concurrent requests.

One ``ArqRedis.enqueue_job`` per request costs a WATCH/EXISTS/MULTI/EXEC conversation (several round trips)
and caps the receiver at about 1.8k events/s. Here each request adds its job to a pending list and awaits a
future; a flush takes everything pending and runs one Lua script that does, for every job and atomically,
exactly what arq's ``enqueue_job`` does: skip it when ``arq:job:<id>`` or ``arq:result:<id>`` exists
(queued, running or result kept), else ``PSETEX`` the serialized job and ``ZADD`` it to the queue. A future
resolves only from Redis's reply, so a request can answer 200 only after Redis acknowledged its job.

A flush starts as soon as a job is pending and fewer than ``max_in_flight`` flushes are running, so a lone
request never waits for a timer; under load, requests that arrive during a round trip share the next one.
One flush at a time is the default (``MAX_IN_FLIGHT``): in bench/webhooks.py it cost less CPU per event and
queued more events per second than two (twice the events per round trip, half the per-flush work per event;
the figures are in docs/performance.md).

Commands go through redis-py (:func:`redis_client`). Every flush is bounded by ``timeout``, and a watchdog
fails jobs that waited ``timeout`` without being sent (the flush slots stuck): a stopped or hung Redis gives
503 well within Square's 10 s. A failed job was either never sent, or sent without a reply in time and possibly
stored: harmless, since Square retries and the retry is then a duplicate. What never happens is a 200 without
Redis's acknowledgement.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from arq.constants import expires_extra_ms, job_key_prefix, result_key_prefix
from redis import exceptions as redis_exceptions
from redis.asyncio import Redis

from square_mirror.constants import PROCESS_EVENT_JOB, QUEUE_NAME
from square_mirror.logs import get_logger
from square_mirror.queue import redis_settings, serialize_job
from webhooks.metrics import WebhookMetrics

_log = get_logger(__name__)

MAX_IN_FLIGHT: Final = 1  # concurrent flushes (Redis round trips) by default; see the module docstring

# KEYS: [queue]; ARGV: [expires_ms, score, job_key_prefix, result_key_prefix, job_id_1, job_1, job_id_2, ...]
# Returns one integer per job: 1 = queued now, 0 = already queued, running or kept (arq's enqueue_job -> None).
# The job and result keys are built here from the prefixes: two arguments per job instead of five, because
# packing the command's arguments is a large part of the receiver's CPU per event. All jobs of a batch share
# one score (the flush time): they arrived within one round trip of each other.
ENQUEUE_BATCH_LUA: Final = """
local queue = KEYS[1]
local expires_ms = ARGV[1]
local score = ARGV[2]
local job_prefix = ARGV[3]
local result_prefix = ARGV[4]
local replies = {}
for a = 5, #ARGV, 2 do
  local job_id = ARGV[a]
  local job_key = job_prefix .. job_id
  if redis.call('EXISTS', job_key, result_prefix .. job_id) == 0 then
    redis.call('PSETEX', job_key, expires_ms, ARGV[a + 1])
    redis.call('ZADD', queue, score, job_id)
    replies[#replies + 1] = 1
  else
    replies[#replies + 1] = 0
  end
end
return replies
"""


class QueueUnavailable(Exception):
    """Redis did not acknowledge the enqueue (stopped, unreachable, slow or closing); answer 503."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class _Pending:
    job_id: str
    data: bytes
    queued_at: float  # the enqueuer's clock (time.monotonic) when the request handed it over
    future: asyncio.Future[bool]


def redis_client(url: str, timeout: float) -> Redis:
    """The receiver's Redis client (the enqueue path and /readyz), from a redis:// or rediss:// URL.

    It connects on first use, so the receiver starts while Redis is down; ``timeout`` bounds a connect, and
    callers bound every command (a stopped or hung Redis must give a 503, not a hung request). redis-py drops
    a connection whose command was interrupted (a timeout) or failed on the socket, so a late reply can never
    answer a later command, and replaces a connection Redis closed meanwhile when it is next taken from the
    pool. With hiredis installed, redis-py parses replies with it.
    """
    rs = redis_settings(url)
    return Redis(host=str(rs.host), port=rs.port, db=rs.database, username=rs.username, password=rs.password,
                 ssl=bool(rs.ssl), ssl_check_hostname=True, socket_connect_timeout=timeout)


def encode_job(payload: Mapping[str, Any], enqueue_time_ms: int, function: str = PROCESS_EVENT_JOB) -> bytes:
    """The bytes arq's Worker reads for ``process_event(payload)`` (or ``function``), exactly as ``enqueue_job``
    writes them.

    arq's ``serialize_job`` builds this same dict (job try, function, args, kwargs, enqueue time); building it
    here saves a copy of the payload and a call layer per request. A test checks both agree byte for byte.
    """
    return serialize_job({"t": None, "f": function, "a": [payload], "k": {}, "et": enqueue_time_ms})


class BatchEnqueuer:
    """Queues ``process_event`` jobs, pipelining the enqueues of concurrent requests into one round trip."""

    def __init__(
        self,
        redis: Redis,
        *,
        queue_name: str = QUEUE_NAME,
        timeout: float = 2.0,
        max_batch: int = 256,
        max_in_flight: int = MAX_IN_FLIGHT,
        expires_ms: int = expires_extra_ms,
        metrics: WebhookMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._clock = clock  # when jobs arrive and expire (the watchdog's); tests pass a clock they move
        self._queue_name = queue_name
        self._timeout = timeout
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._expires_ms = expires_ms
        self._metrics = metrics
        self._pending: deque[_Pending] = deque()  # not sent yet
        self._unanswered: deque[_Pending] = deque()  # every job in arrival order until answered or expired
        self._flushes: set[asyncio.Task[None]] = set()
        self._closed = False
        self._watchdog: asyncio.Task[None] | None = None

    async def enqueue(self, job_id: str, payload: Mapping[str, Any]) -> bool:
        """Queue one job; True if it is new, False if a job with this ID is already queued, running or kept.

        Raises :class:`QueueUnavailable` unless Redis acknowledged in time.
        """
        if self._closed:
            raise QueueUnavailable("closing")
        now_ms = int(time.time() * 1000)
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        item = _Pending(job_id, encode_job(payload, now_ms), self._clock(), future)
        self._pending.append(item)
        self._unanswered.append(item)
        self._start_flushes()
        if self._watchdog is None:
            self._watchdog = asyncio.create_task(self._expire_pending())
        return await future

    async def enqueue_one(self, job_id: str, function: str, payload: Mapping[str, Any], *, expires_ms: int) -> bool:
        """Queue one job of ``function`` at once, outside the batches, kept at most ``expires_ms`` while it waits (arq
        drops a job whose key expired): for the rare jobs whose payload should not outlive its use (the OAuth
        redirect's code). True if new, False if a job with this ID is queued or running; bounded by ``timeout``.
        """
        if self._closed:
            raise QueueUnavailable("closing")
        now_ms = int(time.time() * 1000)
        try:
            async with asyncio.timeout(self._timeout):
                replies = await self._redis.execute_command(  # type: ignore[no-untyped-call]
                    "EVAL", ENQUEUE_BATCH_LUA, 1, self._queue_name, expires_ms, now_ms, job_key_prefix,
                    result_key_prefix, job_id, encode_job(payload, now_ms, function))
        except Exception as exc:
            raise QueueUnavailable(_failure_reason(exc)) from None
        if not isinstance(replies, list) or len(replies) != 1:
            raise QueueUnavailable("redis_error")
        return int(replies[0]) == 1

    async def close(self) -> None:
        """Refuse new jobs and wait for the flushes in flight, so every answered request got its reply."""
        self._closed = True
        while self._flushes or self._pending:
            if self._flushes:
                await asyncio.gather(*self._flushes, return_exceptions=True)
            else:
                self._start_flushes()
                await asyncio.sleep(0)
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
            self._watchdog = None

    async def _expire_pending(self) -> None:
        """Fail every job still unanswered ``timeout`` after its request handed it over, sent or not.

        One timer for all requests instead of one per request (an asyncio.timeout per request costs more than
        the HMAC check). Jobs are checked in arrival order, so each tick looks only at the expired ones and the
        answered ones in front of them. A job failed here while its flush is still running may yet be stored;
        that flush's reply is then ignored.
        """
        tick = min(0.25, self._timeout / 4)
        unanswered = self._unanswered
        while True:
            await asyncio.sleep(tick)
            deadline = self._clock() - self._timeout
            while unanswered and (unanswered[0].future.done() or unanswered[0].queued_at <= deadline):
                item = unanswered.popleft()
                if not item.future.done():
                    item.future.set_exception(QueueUnavailable("timeout"))

    def _forget_answered(self) -> None:
        """Drop answered jobs from the watchdog's list now rather than at its next tick.

        Held until the tick, a quarter second of jobs outlived the cyclic collector's youngest generation:
        every collection traversed them and promoted them, which cost the receiver about 3 us per request.
        """
        unanswered = self._unanswered
        while unanswered and unanswered[0].future.done():
            unanswered.popleft()

    def _start_flushes(self) -> None:
        while self._pending and len(self._flushes) < self._max_in_flight:
            batch: list[_Pending] = []
            while self._pending and len(batch) < self._max_batch:
                item = self._pending.popleft()
                if not item.future.done():  # its request already gave up: do not send it
                    batch.append(item)
            if not batch:
                return
            task = asyncio.create_task(self._flush(batch))
            self._flushes.add(task)
            task.add_done_callback(self._flush_done)

    def _flush_done(self, task: asyncio.Task[None]) -> None:
        self._flushes.discard(task)
        self._start_flushes()

    async def _flush(self, batch: list[_Pending]) -> None:
        args: list[str | bytes | int] = [
            self._expires_ms, int(time.time() * 1000), job_key_prefix, result_key_prefix
        ]
        for item in batch:
            args.append(item.job_id)
            args.append(item.data)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._timeout):
                # EVAL, not EVALSHA: Redis caches the compiled script either way, and a Redis restarted
                # empty can never answer NOSCRIPT.
                # redis-py types eval()'s arguments as str and leaves execute_command untyped.
                replies = await self._redis.execute_command(  # type: ignore[no-untyped-call]
                    "EVAL", ENQUEUE_BATCH_LUA, 1, self._queue_name, *args
                )
            if not isinstance(replies, list) or len(replies) != len(batch):
                raise QueueUnavailable("redis_error")  # not the reply the script returns
        except Exception as exc:  # every failure fails the batch: none of these requests may answer 200
            reason = _failure_reason(exc)
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(QueueUnavailable(reason))
            self._observe(len(batch), started)
            self._forget_answered()
            if reason == "error":
                _log.error("enqueue_failed_unexpectedly", batch=len(batch), error=type(exc).__name__)
            return
        for item, reply in zip(batch, replies, strict=True):
            if not item.future.done():
                item.future.set_result(int(reply) == 1)
        self._observe(len(batch), started)
        self._forget_answered()

    def _observe(self, size: int, started: float) -> None:
        if self._metrics is not None:
            self._metrics.enqueue_batch_size.observe(size)
            self._metrics.enqueue_seconds.observe(time.perf_counter() - started)


def _failure_reason(exc: BaseException) -> str:
    """A short, bounded label for the enqueue-failure metric and the log (never the message: it may hold a URL)."""
    if isinstance(exc, QueueUnavailable):
        return exc.reason
    if isinstance(exc, TimeoutError | redis_exceptions.TimeoutError):
        return "timeout"
    if isinstance(exc, redis_exceptions.ConnectionError | OSError):
        return "connection"
    return "redis_error" if isinstance(exc, redis_exceptions.RedisError) else "error"
