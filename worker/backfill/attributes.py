"""Backfill of customer custom attributes: the definitions, then the values of exactly the customers that have some.

Square has no bulk read of values: ListCustomerCustomAttributes reads one customer's values (100 a page). Reading
every customer would cost one request per customer, most of them answering ``{}``. Instead:

1. **Definitions**: ListCustomerCustomAttributeDefinitions, every page (:func:`worker.attribute_sync.sync_definitions`:
   the ones no longer listed end, with their values).
2. **Searches**: for each definition key, SearchCustomers with the ``custom_attribute`` filter on that key and an
   all-time ``updated_at`` range (FACTS-2 A.4: the filters of one query are ANDed, so one key per query; the
   matching customers come back without their values), following cursors (an expired cursor starts that key's
   search over). The union of the customers found is read.
3. **Reads**: each customer found is read once, with ListCustomerCustomAttributes, ``concurrency`` at a time, while
   the searches go on (:func:`worker.attribute_sync.sync_values`); a read is complete, so what it no longer shows
   ends.
4. **By ID** (:meth:`AttributeBackfill.by_id`, once the customer listing and inference are done): searches never
   return hidden (instant) profiles, so the hidden customers the mirror holds (:func:`worker.store.hidden_customers`)
   are read by ID; so are the customers the mirror holds live values for that no search found (their values were
   deleted in Square, or the customer was). In an empty mirror this costs one request per hidden customer.

Requests: one per definitions page, one per search page, one per customer with a value (plus the hidden ones and,
in a mirror that had values, the customers that lost theirs): never one per customer without values.

Checkpoint (``checkpoint["custom_attributes"]``): the keys whose search finished, the customers read (written), the
customers found but not read yet, and whether the searches and the reads by ID are done. A resumed run searches
only the unfinished keys and reads no customer twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Coroutine, Mapping
from datetime import timedelta
from typing import Any, Final

from square_mirror.errors import SquareInvalidRequest
from square_mirror.logs import get_logger
from square_mirror.pagination import Pages
from square_mirror.square_api import CUSTOMERS_PAGE_LIMIT
from square_mirror.timefmt import iso, utcnow
from worker import attribute_store, attribute_sync, runs, store
from worker.backfill.progress import Progress
from worker.sync import LIST_MAX_RESTARTS, SyncContext

log = get_logger(__name__)

SEARCH_START: Final = "1970-01-01T00:00:00Z"  # all time: every value has an updated_at after this
CHECKPOINT_EVERY: Final = 2.0  # seconds between checkpoint snapshots (each one lists every customer read)


def search_body(key: str, end_at: str) -> dict[str, Any]:
    """The customers holding a value for ``key``, updated at any time up to ``end_at`` (bounds inclusive)."""
    flt = {"key": key, "updated_at": {"start_at": SEARCH_START, "end_at": end_at}}
    return {"limit": CUSTOMERS_PAGE_LIMIT, "query": {"filter": {"custom_attribute": {"filters": [flt]}}}}


async def together(*coroutines: Coroutine[Any, Any, None]) -> None:
    """Run these at once; the first to fail cancels the others and its exception is raised as is."""
    tasks = [asyncio.create_task(c) for c in coroutines]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


class AttributeBackfill:
    """The custom-attribute part of one backfill run; its progress lives in ``checkpoint["custom_attributes"]``."""

    def __init__(self, ctx: SyncContext, merchant_id: str, run: runs.Run, checkpoint: dict[str, Any], *,
                 concurrency: int, search_concurrency: int, progress: Progress) -> None:
        self.ctx = ctx
        self.merchant_id = merchant_id
        self.run = run
        self.checkpoint = checkpoint
        self.concurrency = max(1, concurrency)
        self.search_concurrency = max(1, search_concurrency)
        self.progress = progress
        state: Mapping[str, Any] = checkpoint.get("custom_attributes") or {}
        self.searched = bool(state.get("searched"))
        self.by_id_done = bool(state.get("by_id_done"))
        self.keys_done: set[str] = set(state.get("keys_done") or ())
        self.read: set[str] = set(state.get("read") or ())
        # Every customer found (in the order found), read or not; a resumed run starts with the unread ones.
        self.found: dict[str, None] = dict.fromkeys(state.get("pending") or ())
        self.has_definitions = bool(state.get("has_definitions", True))
        # All time up to a day from now: one range for every page of a key's search (cursors belong to a query).
        self.end_at = iso(utcnow() + timedelta(days=1))
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._snapshot_at = -CHECKPOINT_EVERY

    # -- checkpoint ---------------------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {"searched": self.searched, "by_id_done": self.by_id_done, "has_definitions": self.has_definitions,
                "keys_done": sorted(self.keys_done), "read": list(self.read),
                "pending": [c for c in self.found if c not in self.read]}

    async def save(self, *, force: bool = True) -> None:
        """Write the checkpoint now (``force``), or after a batch of reads: the first at once, then every
        ``CHECKPOINT_EVERY`` seconds."""
        if not force:
            now = time.monotonic()
            if now - self._snapshot_at < CHECKPOINT_EVERY:
                return
            self._snapshot_at = now
        self.checkpoint["custom_attributes"] = self.snapshot()
        await self.run.flush(checkpoint=self.checkpoint)

    async def _written(self, customer_ids: list[str]) -> None:
        self.read.update(customer_ids)
        counts = self.run.counts
        self.progress.note(ca_searches=counts.get("custom_attribute_searches", 0),
                           ca_reads=counts.get("custom_attribute_reads", 0),
                           ca_customers=counts.get("custom_attribute_customers_with_values", 0))
        await self.save(force=False)

    # -- definitions, searches and reads ------------------------------------------------------------------------

    async def search_and_read(self) -> None:
        """Steps 1-3: list the definitions, search every key not searched yet, read each customer found once."""
        if self.searched:
            return
        definitions = await attribute_sync.sync_definitions(self.ctx, self.merchant_id, self.run)
        self.has_definitions = bool(definitions.keys)
        keys = [k for k in definitions.keys if k not in self.keys_done]
        for customer_id in self.found:
            if customer_id not in self.read:
                self._queue.put_nowait(customer_id)
        await self.save()
        await together(self._search_all(keys), self._read_found())
        self.searched = True
        await self.save()
        log.info("custom_attributes_searched", merchant_id=self.merchant_id, keys=len(definitions.keys),
                 customers=len(self.found))

    async def _search_all(self, keys: list[str]) -> None:
        semaphore = asyncio.Semaphore(self.search_concurrency)

        async def one(key: str) -> None:
            async with semaphore:
                await self._search(key)

        try:
            await together(*(one(k) for k in keys))
        finally:
            self._queue.put_nowait(None)  # no more customers: the readers finish what is queued

    async def _search(self, key: str) -> None:
        body = search_body(key, self.end_at)
        client, merchant_id = self.ctx.client, self.merchant_id

        async def fetch(cursor: str | None) -> dict[str, Any]:
            return await client.search_customers(merchant_id, {**body, "cursor": cursor} if cursor else body)

        pages = Pages(fetch, max_restarts=LIST_MAX_RESTARTS)
        while not pages.done:
            try:
                page = await pages.next()
            except SquareInvalidRequest:
                if await self._definition_gone(key):
                    break  # deleted meanwhile: so are its values (the definitions listing just ended them)
                raise
            finally:
                self.run.add(custom_attribute_searches=1)
            if page is None:  # the cursor expired: this key's search starts over (what it found stays found)
                self.run.add(cursor_restarts=1)
                continue
            for customer in page.get("customers") or []:
                customer_id = customer.get("id") if isinstance(customer, dict) else None
                if isinstance(customer_id, str) and customer_id not in self.found:
                    self.found[customer_id] = None
                    self._queue.put_nowait(customer_id)
            self.run.add(custom_attribute_search_hits=len(page.get("customers") or []))
        self.keys_done.add(key)

    async def _definition_gone(self, key: str) -> bool:
        """A search refused: is it because the key's definition was deleted since it was listed?"""
        definitions = await attribute_sync.sync_definitions(self.ctx, self.merchant_id, self.run)
        return key not in definitions.keys

    async def _queued(self) -> AsyncIterator[str]:
        while (customer_id := await self._queue.get()) is not None:
            if customer_id not in self.read:
                yield customer_id

    async def _read_found(self) -> None:
        await attribute_sync.sync_values(self.ctx, self.merchant_id, self._queued(), concurrency=self.concurrency,
                                         run=self.run, on_written=self._written)

    # -- by ID ----------------------------------------------------------------------------------------------------

    async def by_id(self) -> None:
        """Step 4, once the customer listing and inference are done: read by ID the hidden customers the mirror
        holds and the customers holding live values in the mirror that no search found."""
        if self.by_id_done:
            return
        hidden = await store.hidden_customers(self.ctx.pool, self.merchant_id, utcnow()) \
            if self.has_definitions else []
        holders = await attribute_store.value_holders(self.ctx.pool, self.merchant_id)
        hidden = [c for c in hidden if c not in self.read]
        hidden_set = set(hidden)
        rechecked = [c for c in holders if c not in self.read and c not in hidden_set]
        self.run.add(custom_attribute_hidden_reads=len(hidden), custom_attribute_rechecks=len(rechecked))
        await attribute_sync.sync_values(self.ctx, self.merchant_id, hidden + rechecked,
                                         concurrency=self.concurrency, run=self.run, on_written=self._written)
        self.by_id_done = True
        await self.save()
