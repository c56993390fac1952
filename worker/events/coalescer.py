"""Fetch coalescing: concurrent jobs' customer IDs become one BulkRetrieveCustomers call of up to 100 IDs.

A job asks for one customer. The ID joins the merchant's pending batch, which is sent after a short window
(a few ms) or as soon as it holds 100 IDs, as ONE :func:`worker.sync.sync_customers` call (fetch, merge
redirects, confirmed NOT_FOUNDs, version-guarded upsert, missing definitions). Every waiting job gets its own
ID's outcome. At most ``max_in_flight`` batches per merchant run at once (full batches excepted): under load,
IDs keep gathering while earlier batches are out, so batches grow with the load instead of the call count.

Jobs for a customer whose fetch is already in flight share it, but only if what it brought back is at least
as new as their event: a fetch that left before the event's change was committed cannot answer for it, so
such a job joins the next batch instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import asyncpg

from square_mirror.logs import get_logger
from square_mirror.square_api import BULK_RETRIEVE_LIMIT, SquareRateLimited, SquareUnauthorized, SquareUnavailable
from worker.metrics import FETCH_BATCH_SIZE, FETCHES
from worker.sync import Outcome, SyncContext, SyncResult, sync_customers

log = get_logger(__name__)

MAX_ROUNDS: Final = 3
# Failures that concern the whole batch alike (Square or Postgres unavailable, token rejected): no splitting.
_SHARED_FAILURES: Final = (SquareUnavailable, SquareRateLimited, SquareUnauthorized, TimeoutError, OSError,
                           asyncpg.exceptions.InterfaceError, asyncpg.exceptions.InternalClientError,
                           asyncpg.exceptions.DeadlockDetectedError,
                           asyncpg.exceptions.TooManyConnectionsError, asyncpg.exceptions.CannotConnectNowError)

SyncFunction = Callable[[SyncContext, str, list[str]], Awaitable[SyncResult]]
MerchantHook = Callable[[str], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Fetched:
    """What Square said about one requested ID, as written by the batch."""

    outcome: Outcome  # APPLIED, STALE (the mirror already held this or newer), DELETED, MERGED
    version: int | None  # version of the profile Square returned (None when deleted)
    merged_into: str | None = None

    def answers(self, min_version: int | None) -> bool:
        if self.outcome in (Outcome.DELETED, Outcome.MERGED) or min_version is None:
            return True
        return self.version is not None and self.version >= min_version


class FetchCoalescer:
    def __init__(
        self,
        sync: SyncContext,
        *,
        window: float = 0.005,
        max_batch: int = BULK_RETRIEVE_LIMIT,
        max_in_flight: int = 4,
        on_success: MerchantHook | None = None,
        sync_function: SyncFunction | None = None,
    ) -> None:
        self.sync = sync
        self.window = max(0.0, window)
        self.max_batch = max(1, min(max_batch, BULK_RETRIEVE_LIMIT))
        self.max_in_flight = max(1, max_in_flight)
        self.on_success = on_success
        self._sync_function: SyncFunction = sync_function or sync_customers
        self._pending: dict[str, dict[str, asyncio.Future[Fetched]]] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._inflight: dict[tuple[str, str], asyncio.Future[Fetched]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._running: dict[str, int] = {}  # merchant -> batches in flight
        self._due: set[str] = set()  # merchants whose window passed while max_in_flight batches were out
        self.batches = 0
        self.ids_fetched = 0
        self._closed = False

    async def fetch(self, merchant_id: str, customer_id: str, min_version: int | None = None) -> Fetched:
        """Sync one customer through a shared batch; the answer is at least as new as ``min_version``."""
        result: Fetched | None = None
        for _ in range(MAX_ROUNDS):
            future = self._inflight.get((merchant_id, customer_id))
            if future is None:
                future = self._join(merchant_id, customer_id)
            result = await asyncio.shield(future)
            if result.answers(min_version):
                return result
        assert result is not None
        log.warning("fetch_behind_event", merchant_id=merchant_id, customer_id=customer_id,
                    fetched_version=result.version, event_version=min_version)
        return result

    def _join(self, merchant_id: str, customer_id: str) -> asyncio.Future[Fetched]:
        if self._closed:
            raise RuntimeError("fetch coalescer is closed")
        loop = asyncio.get_running_loop()
        batch = self._pending.get(merchant_id)
        if batch is None:
            batch = self._pending[merchant_id] = {}
            self._timers[merchant_id] = loop.call_later(self.window, self._window_passed, merchant_id)
        future = batch.get(customer_id)
        if future is None:
            future = batch[customer_id] = loop.create_future()
            future.add_done_callback(_consume_exception)
        if len(batch) >= self.max_batch:
            self._flush(merchant_id)
        return future

    def _window_passed(self, merchant_id: str) -> None:
        self._timers.pop(merchant_id, None)
        if self._running.get(merchant_id, 0) >= self.max_in_flight:
            self._due.add(merchant_id)  # sent when a batch in flight comes back
        else:
            self._flush(merchant_id)

    def _flush(self, merchant_id: str) -> None:
        self._due.discard(merchant_id)
        timer = self._timers.pop(merchant_id, None)
        if timer is not None:
            timer.cancel()
        batch = self._pending.pop(merchant_id, None)
        if not batch:
            return
        for customer_id, future in batch.items():
            self._inflight[(merchant_id, customer_id)] = future
        self._running[merchant_id] = self._running.get(merchant_id, 0) + 1
        task = asyncio.get_running_loop().create_task(self._run(merchant_id, batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _t: self._batch_done(merchant_id))

    def _batch_done(self, merchant_id: str) -> None:
        left = self._running.get(merchant_id, 1) - 1
        if left > 0:
            self._running[merchant_id] = left
        else:
            self._running.pop(merchant_id, None)
        if merchant_id in self._due:
            self._flush(merchant_id)

    async def _run(self, merchant_id: str, batch: dict[str, asyncio.Future[Fetched]]) -> None:
        ids = list(batch)
        FETCH_BATCH_SIZE.observe(len(ids))
        self.batches += 1
        self.ids_fetched += len(ids)
        try:
            try:
                result = await self._sync_function(self.sync, merchant_id, ids)
            except _SHARED_FAILURES:
                raise
            except Exception as exc:
                if len(ids) == 1:
                    raise
                # Something about one ID (an item error, a value Postgres refuses) must not fail its neighbours:
                # each ID alone, so only the culprit's jobs see the error.
                log.warning("fetch_batch_split", merchant_id=merchant_id, ids=len(ids), error=type(exc).__name__)
                await asyncio.gather(*(self._run_alone(merchant_id, cid, batch[cid]) for cid in ids))
                return
        except BaseException as exc:
            FETCHES.labels("error").inc()
            for future in batch.values():
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception) else RuntimeError("fetch cancelled"))
            if not isinstance(exc, Exception):
                raise
            return
        finally:
            for customer_id, future in batch.items():
                if self._inflight.get((merchant_id, customer_id)) is future:
                    del self._inflight[(merchant_id, customer_id)]
        FETCHES.labels("ok").inc()
        if self.on_success is not None:
            try:
                await self.on_success(merchant_id)
            except Exception as exc:
                log.warning("merchant_ok_hook_failed", merchant_id=merchant_id, error=type(exc).__name__)
        for customer_id, future in batch.items():
            _resolve(future, customer_id, result)

    async def _run_alone(self, merchant_id: str, customer_id: str, future: asyncio.Future[Fetched]) -> None:
        try:
            result = await self._sync_function(self.sync, merchant_id, [customer_id])
        except Exception as exc:
            FETCHES.labels("error").inc()
            if not future.done():
                future.set_exception(exc)
            return
        FETCHES.labels("ok").inc()
        _resolve(future, customer_id, result)

    async def close(self) -> None:
        """Send what is pending and wait for every batch in flight."""
        for merchant_id in list(self._pending):
            self._flush(merchant_id)
        self._closed = True
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def _resolve(future: asyncio.Future[Fetched], customer_id: str, result: SyncResult) -> None:
    if not future.done():
        future.set_result(Fetched(
            outcome=result.outcomes.get(customer_id, Outcome.STALE),
            version=result.versions.get(customer_id),
            merged_into=result.merged_into.get(customer_id),
        ))


def _consume_exception(future: asyncio.Future[Fetched]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved here so a batch whose waiters all left does not log "never retrieved"
