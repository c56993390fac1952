"""Bring custom attribute definitions and customers' values in line with Square by reading them.

Square has no bulk read of values: ListCustomerCustomAttributes reads one customer's values (100 a page), so the
callers choose whom to read (backfill and the reconcile lane find them with SearchCustomers' ``custom_attribute``
filter, the sweep reads the customers the mirror holds values for, a merge reads its target). A read is complete,
so what it no longer shows has ended; a customer Square no longer has has no values.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from square_mirror.errors import SquareNotFound
from square_mirror.logs import get_logger
from square_mirror.pagination import Pages
from square_mirror.square_api import SquareClient
from square_mirror.timefmt import utcnow
from worker import attribute_store
from worker.sync import LIST_MAX_RESTARTS, SyncContext

if TYPE_CHECKING:
    from worker.runs import Run

log = get_logger(__name__)

# Customers whose values are written per statement (their reads finish at different times; the earliest
# request time of a batch dates what it no longer shows).
WRITE_BATCH: Final = 200
Listing = list[dict[str, Any]] | None  # a customer's values, or None when Square no longer has the customer
Written = Callable[[list[str]], Awaitable[None]]  # told the customers of each committed batch


async def read_values(client: SquareClient, merchant_id: str, customer_id: str) -> tuple[Listing, int]:
    """All of one customer's values (None when the customer is gone) and the number of requests made."""
    pages = Pages(lambda cursor: client.list_customer_custom_attributes(merchant_id, customer_id, cursor=cursor),
                  max_restarts=LIST_MAX_RESTARTS)
    values: dict[str, dict[str, Any]] = {}
    calls = 0
    try:
        while not pages.done:
            calls += 1
            page = await pages.next()
            if page is None:  # the cursor expired: the listing starts over
                values.clear()
                continue
            for value in page.get("custom_attributes") or []:
                values[value["key"]] = value
    except SquareNotFound:
        return None, calls
    return list(values.values()), calls


@dataclass
class ValuesResult:
    customers: int = 0
    with_values: int = 0  # customers whose read showed at least one value
    written: int = 0
    ended: int = 0
    gone: list[str] = field(default_factory=list)  # customers Square answered NOT_FOUND for
    requests: int = 0


class _Writer:
    """Collects finished reads and writes them in batches, one statement pair per batch."""

    def __init__(self, ctx: SyncContext, merchant_id: str, result: ValuesResult, run: Run | None,
                 on_written: Written | None) -> None:
        self.ctx = ctx
        self.merchant_id = merchant_id
        self.result = result
        self.run = run
        self.on_written = on_written
        self.batch: list[tuple[str, Listing, datetime]] = []
        self.lock = asyncio.Lock()

    async def add(self, customer_id: str, listing: Listing, requested_at: datetime) -> None:
        self.batch.append((customer_id, listing, requested_at))
        if len(self.batch) >= WRITE_BATCH:
            await self.flush()

    async def flush(self) -> None:
        async with self.lock:
            batch, self.batch = self.batch, []
            if not batch:
                return
            observed_at = min(b[2] for b in batch)
            listings = {cid: listing for cid, listing, _ in batch if listing is not None}
            gone = [cid for cid, listing, _ in batch if listing is None]
            async with self.ctx.pool.acquire() as conn, conn.transaction():
                written, ended = await attribute_store.replace_values(conn, self.merchant_id, listings, observed_at)
                ended |= await attribute_store.end_values(conn, self.merchant_id, gone, observed_at)
            with_values = sum(1 for listing in listings.values() if listing)
            self.result.customers += len(batch)
            self.result.with_values += with_values
            self.result.written += len(written)
            self.result.ended += len(ended)
            self.result.gone.extend(gone)
            if self.run is not None:
                self.run.add(custom_attribute_customers=len(batch), custom_attribute_customers_with_values=with_values,
                             custom_attribute_values_written=len(written), custom_attribute_values_ended=len(ended))
            if self.on_written is not None:
                await self.on_written([cid for cid, _, _ in batch])


class _Source:
    """The customer IDs to read, shared by the readers: each ID is handed out once."""

    def __init__(self, customer_ids: Iterable[str] | AsyncIterator[str]) -> None:
        self._sync = iter(customer_ids) if isinstance(customer_ids, Iterable) else None
        self._async = customer_ids if isinstance(customer_ids, AsyncIterator) else None
        self._seen: set[str] = set()
        self._lock = asyncio.Lock()

    async def next(self) -> str | None:
        async with self._lock:  # one reader at a time waits for the next ID of an asynchronous source
            while True:
                if self._sync is not None:
                    customer_id = next(self._sync, None)
                else:
                    assert self._async is not None
                    customer_id = await anext(self._async, None)
                if customer_id is None or customer_id not in self._seen:
                    break
            if customer_id is not None:
                self._seen.add(customer_id)
            return customer_id


async def sync_values(ctx: SyncContext, merchant_id: str, customer_ids: Iterable[str] | AsyncIterator[str], *,
                      concurrency: int = 8, run: Run | None = None, on_written: Written | None = None) -> ValuesResult:
    """Read these customers' values from Square, ``concurrency`` at a time, and write what each read shows.

    ``customer_ids`` may be an asynchronous iterator (IDs handed in while the reads run, e.g. by searches); each
    customer is read once. ``on_written`` is told the customers of each batch once it is committed.
    """
    source = _Source(customer_ids)
    result = ValuesResult()
    writer = _Writer(ctx, merchant_id, result, run, on_written)

    async def reader() -> None:
        while (customer_id := await source.next()) is not None:
            requested_at = utcnow()
            listing, calls = await read_values(ctx.client, merchant_id, customer_id)
            result.requests += calls
            if run is not None:
                run.add(custom_attribute_reads=calls)
            await writer.add(customer_id, listing, requested_at)

    tasks = [asyncio.create_task(reader()) for _ in range(max(1, concurrency))]
    try:
        await asyncio.gather(*tasks)
    except Exception:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await writer.flush()  # keep what was read: a resumed backfill need not read it again
        raise
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    await writer.flush()
    return result


async def read_definitions(client: SquareClient, merchant_id: str) -> tuple[list[dict[str, Any]], int]:
    """Every definition this application can see, and the number of requests made."""
    pages = Pages(lambda cursor: client.list_custom_attribute_definitions(merchant_id, cursor=cursor),
                  max_restarts=LIST_MAX_RESTARTS)
    definitions: dict[str, dict[str, Any]] = {}
    calls = 0
    while not pages.done:
        calls += 1
        page = await pages.next()
        if page is None:
            definitions.clear()
            continue
        for definition in page.get("custom_attribute_definitions") or []:
            definitions[definition["key"]] = definition
    return list(definitions.values()), calls


@dataclass(frozen=True)
class DefinitionsResult:
    keys: list[str]  # every definition listed
    ended: set[str]  # definitions (and hence their values) ended because the listing no longer shows them
    requests: int


async def sync_definitions(ctx: SyncContext, merchant_id: str, run: Run | None = None) -> DefinitionsResult:
    """List the definitions completely, write them, end the ones no longer listed together with their values."""
    observed_at = utcnow()
    definitions, calls = await read_definitions(ctx.client, merchant_id)
    async with ctx.pool.acquire() as conn, conn.transaction():
        _, ended = await attribute_store.replace_definitions(conn, merchant_id, definitions, observed_at)
    if run is not None:
        run.add(custom_attribute_definitions=len(definitions), custom_attribute_definitions_ended=len(ended),
                custom_attribute_definition_pages=calls)
    if ended:
        log.info("custom_attribute_definitions_ended", merchant_id=merchant_id, count=len(ended))
    return DefinitionsResult(sorted(d["key"] for d in definitions), ended, calls)

