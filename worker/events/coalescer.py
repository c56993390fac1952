"""Fetch coalescing: concurrent jobs' customer IDs become one BulkRetrieveCustomers call of up to 100 IDs.

A job asks for one customer. The ID joins its merchant's pending batch (one :class:`MicroBatcher` per
merchant), which is sent after a short window (a few ms) or as soon as it holds 100 IDs, as ONE
:func:`worker.sync.sync_customers` call (fetch, merge redirects, confirmed NOT_FOUNDs, version-guarded upsert,
missing definitions). Every waiting job gets its own ID's outcome. At most ``max_in_flight`` batches per
merchant run at once (full batches excepted): under load, IDs keep gathering while earlier batches are out,
so batches grow with the load instead of the call count. With a per-seller rate (SQUARE_MAX_REQUESTS_PER_SECOND),
a seller's batches that are not full start at most :data:`~square_mirror.constants.EVENT_FETCH_SHARE` x its rate
times a second: a seller with a flood of edits waits a little longer for fuller batches (at 10 requests/s, at most
0.2 s), so its events cannot take the whole budget its backfill and lanes also need.

Jobs for a customer whose fetch is already in flight share it, but only if what it brought back is at least
as new as their event: a fetch that left before the event's change was committed cannot answer for it, so
such a job joins the next batch instead.

A failure that concerns the whole batch (:func:`square_mirror.retry.is_shared_failure`) fails every job in it;
any other is retried ID by ID, so only the culprit's jobs see it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from square_mirror.logs import get_logger
from square_mirror.retry import is_shared_failure
from square_mirror.square_api import BULK_RETRIEVE_LIMIT
from worker.events.batching import MicroBatcher
from worker.metrics import FETCH_BATCH_SIZE, FETCHES
from worker.outcome import Outcome
from worker.sync import SyncContext, SyncResult, sync_customers

log = get_logger(__name__)

MAX_ROUNDS: Final = 3

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
    """Syncs customers by ID for concurrent jobs, one shared batch per merchant at a time."""

    def __init__(
        self,
        sync: SyncContext,
        *,
        window: float = 0.005,
        max_batch: int = BULK_RETRIEVE_LIMIT,
        max_in_flight: int = 4,
        min_interval: float = 0.0,
        on_success: MerchantHook | None = None,
        sync_function: SyncFunction | None = None,
    ) -> None:
        self.sync = sync
        self.window = max(0.0, window)
        self.max_batch = max(1, min(max_batch, BULK_RETRIEVE_LIMIT))
        self.max_in_flight = max(1, max_in_flight)
        self.min_interval = max(0.0, min_interval)
        self.on_success = on_success
        self._sync_function: SyncFunction = sync_function or sync_customers
        self._batchers: dict[str, MicroBatcher[str, None, Fetched]] = {}
        self._closed = False

    async def fetch(self, merchant_id: str, customer_id: str, min_version: int | None = None) -> Fetched:
        """Sync one customer through a shared batch; the answer is at least as new as ``min_version``."""
        result: Fetched | None = None
        for _ in range(MAX_ROUNDS):
            batcher = self._batcher(merchant_id)
            future = batcher.running(customer_id) or batcher.join(customer_id, None)
            result = await asyncio.shield(future)
            if result.answers(min_version):
                return result
        assert result is not None
        log.warning("fetch_behind_event", merchant_id=merchant_id, customer_id=customer_id,
                    fetched_version=result.version, event_version=min_version)
        return result

    def _batcher(self, merchant_id: str) -> MicroBatcher[str, None, Fetched]:
        if self._closed:
            raise RuntimeError("fetch coalescer is closed")
        batcher = self._batchers.get(merchant_id)
        if batcher is None:
            async def run(items: dict[str, None]) -> dict[str, Fetched | BaseException]:
                return await self._run(merchant_id, list(items))

            batcher = self._batchers[merchant_id] = MicroBatcher(
                run, window=self.window, max_batch=self.max_batch, max_in_flight=self.max_in_flight,
                min_interval=self.min_interval)
        return batcher

    async def _run(self, merchant_id: str, ids: list[str]) -> dict[str, Fetched | BaseException]:
        FETCH_BATCH_SIZE.observe(len(ids))
        try:
            result = await self._sync_function(self.sync, merchant_id, ids)
        except Exception as exc:
            if is_shared_failure(exc) or len(ids) == 1:
                FETCHES.labels("error").inc()
                raise
            # Something about one ID (an item error, a value Postgres refuses) must not fail its neighbours:
            # each ID alone, so only the culprit's jobs see the error.
            log.warning("fetch_batch_split", merchant_id=merchant_id, ids=len(ids), error=type(exc).__name__)
            alone = await asyncio.gather(*(self._run_alone(merchant_id, cid) for cid in ids))
            return dict(zip(ids, alone, strict=True))
        except BaseException:
            FETCHES.labels("error").inc()
            raise
        FETCHES.labels("ok").inc()
        if self.on_success is not None:
            try:
                await self.on_success(merchant_id)
            except Exception as exc:
                log.warning("merchant_ok_hook_failed", merchant_id=merchant_id, error=type(exc).__name__)
        return {cid: _fetched(cid, result) for cid in ids}

    async def _run_alone(self, merchant_id: str, customer_id: str) -> Fetched | BaseException:
        try:
            result = await self._sync_function(self.sync, merchant_id, [customer_id])
        except Exception as exc:
            FETCHES.labels("error").inc()
            return exc
        FETCHES.labels("ok").inc()
        return _fetched(customer_id, result)

    async def close(self) -> None:
        """Send what is pending and wait for every batch in flight."""
        self._closed = True
        await asyncio.gather(*(batcher.close() for batcher in self._batchers.values()))


def _fetched(customer_id: str, result: SyncResult) -> Fetched:
    return Fetched(
        outcome=result.outcomes.get(customer_id, Outcome.STALE),
        version=result.versions.get(customer_id),
        merged_into=result.merged_into.get(customer_id),
    )
