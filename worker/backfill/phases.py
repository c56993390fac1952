"""Backfill: a complete, fast, resumable copy of one seller's directory, with deletes and merges inferred.

Phases, each recorded in the run's checkpoint (``square.sync_runs.checkpoint``):

1. ``definitions``: ListCustomerGroups and ListCustomerSegments, every page; definitions are upserted and, once
   the listing is complete, the ones Square no longer lists are tombstoned.
2. ``customers``: the customer space is split into ``created_at`` ranges (:mod:`worker.backfill.partition`) fetched
   concurrently with SearchCustomers (sort ``CREATED_AT ASC``, 100 per page). Every page is written at once
   through :func:`worker.store.upsert_customers` (version guard, tombstones final) with ``observed_at`` = when
   its request was sent. A partition's checkpoint is the ``created_at`` of the last customer of its last
   committed page, never a cursor (cursors expire): a resumed run restarts each unfinished partition from
   there and skips finished ones. An ``INVALID_CURSOR`` restarts the partition from the same place.
3. ``inference``: mirror rows still live but not observed since the listing began (the listing did not return
   them) are checked by ID with :func:`worker.sync.sync_customers`: NOT_FOUND -> tombstone, another ID -> merge
   recorded, still there (instant profiles, index lag) -> kept. Listing alone never tombstones a customer.
4. ``custom_attributes`` (:mod:`worker.backfill.attributes`): their definitions, the searches for the customers
   holding values and the reads of those customers run *while* phase 2 lists (at high latency the listing leaves
   the connection and the CPU mostly idle); once inference is done, the hidden customers and those holding values
   no search found are read by ID. Its own progress is ``checkpoint["custom_attributes"]``.

A run that ends any other way than completing phase 4 is not ``succeeded`` (see :func:`worker.runs.status_for`).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final

from square_mirror import searchable_events
from square_mirror.logs import get_logger
from square_mirror.pagination import Pages
from square_mirror.ratelimit import BACKFILL_SPENDING, LANE_SPENDING, Spend, spending
from square_mirror.square_api import BULK_RETRIEVE_LIMIT, CUSTOMERS_PAGE_LIMIT
from square_mirror.timefmt import iso, require_time, utcnow
from worker import runs, store
from worker.backfill.attributes import AttributeBackfill, together
from worker.backfill.partition import Partition, Planner, created_ms, plan_partitions
from worker.backfill.progress import Progress, Reporter
from worker.outcome import Outcome
from worker.queries import queries
from worker.sync import SyncContext, sync_customers, sync_definitions

log = get_logger(__name__)

BACKFILL: Final = "backfill"
SWEEP: Final = "sweep"
CHECKPOINT_VERSION: Final = 1
INFERENCE_BATCH: Final = 1000
# Pages of one partition written (queued or running) at once while its next page is fetched. With one, a page
# waited for its predecessor's commit before being queued, so the writers found ~2 pages queued and wrote
# ~200 customers per statement; each statement costs Postgres ~4 ms of fixed CPU (planning, triggers,
# commit), ~15% of its total at that size. Deeper pipelines queue enough for 1000.
WRITE_DEPTH: Final = 3
# Customers per upsert statement (pages queued together are written together).
WRITE_BATCH_ROWS: Final = 1000
# Customers whose custom attributes are read at once (BACKFILL_CUSTOM_ATTRIBUTE_CONCURRENCY): one request each.
ATTRIBUTE_CONCURRENCY: Final = 256
ProgressFactory = Callable[[str, str], Reporter | None]


# -- customers ------------------------------------------------------------------------------------------------

def search_body(part: Partition) -> dict[str, Any]:
    query: dict[str, Any] = {"sort": {"field": "CREATED_AT", "order": "ASC"}}
    time_range = part.time_range()
    if time_range:
        query["filter"] = {"created_at": time_range}
    return {"limit": CUSTOMERS_PAGE_LIMIT, "query": query}


class PageWriter:
    """Writes pages handed in by concurrent fetchers, several pages per statement when they queue up.

    Each :meth:`write` returns only once its page is committed (so a partition's checkpoint never runs ahead of
    the database). Pages waiting together are written in one upsert with the earliest of their observation
    times (conservative: the state is at least that fresh), up to ``max_rows`` customers per statement.
    """

    def __init__(self, ctx: SyncContext, merchant_id: str, *, writers: int = 2, max_rows: int = 500) -> None:
        self.ctx = ctx
        self.merchant_id = merchant_id
        self.max_rows = max_rows
        self._queue: asyncio.Queue[tuple[list[dict[str, Any]], datetime, asyncio.Future[set[str]]]] = asyncio.Queue()
        self._tasks = [asyncio.create_task(self._loop(), name=f"backfill-writer-{i}") for i in range(writers)]
        self.statements = 0

    async def write(self, customers: list[dict[str, Any]], observed_at: datetime) -> set[str]:
        future: asyncio.Future[set[str]] = asyncio.get_running_loop().create_future()
        await self._queue.put((customers, observed_at, future))
        return await future

    async def _loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            rows = len(batch[0][0])
            while rows < self.max_rows and not self._queue.empty():
                item = self._queue.get_nowait()
                batch.append(item)
                rows += len(item[0])
            try:
                customers = [c for page, _, _ in batch for c in page]
                observed_at = min(o for _, o, _ in batch)
                async with self.ctx.pool.acquire() as conn, conn.transaction():
                    # Asynchronous commit: no WAL flush per page. Safe for the checkpoint: the run's checkpoint update
                    # is a synchronous commit, which flushes the WAL up to and including these pages first.
                    # (Every pool connection re-plans each statement: square_mirror.db.SERVER_SETTINGS.)
                    await conn.execute("SET LOCAL synchronous_commit = off")
                    written = await store.upsert_customers(conn, self.merchant_id, customers, observed_at,
                                                           listed=True)
                self.statements += 1
            except Exception as exc:
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for page, _, future in batch:
                if not future.done():
                    future.set_result({c["id"] for c in page} & written)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class Listing:
    """Fetch every partition, ``concurrency`` at a time, writing each page as it arrives."""

    def __init__(self, ctx: SyncContext, merchant_id: str, run: runs.Run, planner: Planner, *, concurrency: int,
                 progress: Progress, checkpoint: Callable[[], dict[str, Any]]) -> None:
        self.ctx = ctx
        self.merchant_id = merchant_id
        self.run = run
        self.planner = planner
        self.concurrency = max(1, concurrency)
        self.progress = progress
        self._checkpoint = checkpoint

    async def execute(self) -> None:
        self.writer = PageWriter(self.ctx, self.merchant_id, writers=2, max_rows=WRITE_BATCH_ROWS)
        tasks = [asyncio.create_task(self._worker(), name=f"backfill-partition-{i}") for i in range(self.concurrency)]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        finally:
            await self.writer.close()
            self.run.counts["write_statements"] = self.run.counts.get("write_statements", 0) + self.writer.statements
            await self.run.flush(checkpoint=self._checkpoint())

    async def _worker(self) -> None:
        while True:
            part = self.planner.take()
            if part is None:
                return
            try:
                await self._fetch(part)
            finally:
                part.active = False

    async def _fetch(self, part: Partition) -> None:
        """Page through one partition. The writes of up to ``WRITE_DEPTH`` pages overlap the request for the next
        one; the partition's position (its checkpoint) moves only once a page's write committed, page by page in
        order (a later page committed first moves nothing until the earlier one has committed too)."""
        client, mid = self.ctx.client, self.merchant_id
        writes = _PartitionWrites(self, part)
        body = search_body(part)

        async def fetch(cursor: str | None) -> dict[str, Any]:
            request = dict(body)
            if cursor:
                request["cursor"] = cursor
            return await client.search_customers(mid, request)

        pages = Pages(fetch)
        try:
            while True:
                if part.restart:  # the planner split this partition: continue from pos with the narrower range
                    await writes.settle()
                    part.restart = False
                    pages.restart()
                    body = search_body(part)
                if not pages.cursor:
                    await writes.settle()  # pos is the committed position: the test below and a new query start there
                    if part.pos is not None and part.end is not None and part.pos >= part.end:
                        part.done = True  # already read past the (narrowed) end
                        return
                began = time.perf_counter()
                page = await pages.next()
                if page is None:  # the cursor expired: continue from the committed position
                    self.run.add(cursor_restarts=1)
                    log.info("backfill_cursor_expired", merchant_id=mid, partition=part.describe())
                    await writes.settle()
                    body = search_body(part)
                    continue
                self.run.add(fetch_ms=round((time.perf_counter() - began) * 1000))
                await writes.settle(keep=WRITE_DEPTH - 1)  # at most WRITE_DEPTH pages of this partition being written
                writes.write([c for c in page.get("customers") or []
                              if isinstance(c, dict) and isinstance(c.get("id"), str)], pages.requested_at)
                if pages.done:
                    await writes.settle()
                    part.done = True  # a finished partition is checkpointed at once: a resumed run never redoes it
                    await self.run.flush(checkpoint=self._checkpoint())
                    return
                await self.run.flush(checkpoint=self._checkpoint(), force=False)
        finally:
            writes.cancel()


class _PartitionWrites:
    """The page writes of one partition still pending, oldest first; settling them advances its position."""

    def __init__(self, listing: Listing, part: Partition) -> None:
        self.listing = listing
        self.part = part
        self.pending: deque[tuple[asyncio.Task[set[str]], list[dict[str, Any]], float]] = deque()

    def write(self, customers: list[dict[str, Any]], observed_at: datetime) -> None:
        if customers:
            task = asyncio.create_task(self.listing.writer.write(customers, observed_at))
            self.pending.append((task, customers, time.perf_counter()))
        else:
            self.listing.run.add(pages=1)

    async def settle(self, keep: int = 0) -> None:
        """Wait for the oldest pending writes until at most ``keep`` remain, advancing the position."""
        run = self.listing.run
        while len(self.pending) > keep:
            task, customers, queued = self.pending[0]
            written = await task
            self.pending.popleft()
            unique = len({c["id"] for c in customers})
            run.add(pages=1, listed=len(customers), upserted=len(written), stale_skipped=unique - len(written),
                    write_ms=round((time.perf_counter() - queued) * 1000))
            self.part.advance(created_ms(customers[-1]), len(customers))
            self.listing.progress.advance(len(customers), pages=run.counts["pages"])

    def cancel(self) -> None:
        for task, _, _ in self.pending:
            if not task.done():
                task.cancel()


async def probe(ctx: SyncContext, merchant_id: str, run: runs.Run) -> tuple[int | None, int | None, int | None]:
    """(first created_at ms, last created_at ms, count) of the listable customers, in two requests."""
    sort = {"field": "CREATED_AT", "order": "ASC"}
    first = await ctx.client.search_customers(merchant_id, {"limit": 1, "count": True, "query": {"sort": sort}})
    last = await ctx.client.search_customers(
        merchant_id, {"limit": 1, "query": {"sort": {"field": "CREATED_AT", "order": "DESC"}}})
    run.add(pages=2)
    total = first.get("count")
    firsts, lasts = first.get("customers") or [], last.get("customers") or []
    if not firsts or not lasts:
        return None, None, int(total) if isinstance(total, int) else 0
    return created_ms(firsts[0]), created_ms(lasts[0]), int(total) if isinstance(total, int) else None


# -- inference ------------------------------------------------------------------------------------------------

async def infer_deletions(ctx: SyncContext, merchant_id: str, run: runs.Run, listing_started_at: datetime, *,
                          concurrency: int, after: str = "",
                          on_batch: Callable[[str], Awaitable[None]] | None = None) -> None:
    """Check by ID every live mirror row the listing did not observe: tombstone, merge or keep."""
    semaphore = asyncio.Semaphore(max(1, concurrency))

    async def check(ids: Sequence[str]) -> None:
        async with semaphore:
            result = await sync_customers(ctx, merchant_id, ids)
        outcomes = list(result.outcomes.values())
        run.add(checked=len(ids), tombstoned=outcomes.count(Outcome.DELETED), merges=outcomes.count(Outcome.MERGED),
                kept=outcomes.count(Outcome.APPLIED) + outcomes.count(Outcome.STALE), retrieve_calls=result.api_calls)

    while True:
        rows = await ctx.pool.fetch(
            queries.get("unobserved_live_customers"),
            merchant_id, listing_started_at, after, INFERENCE_BATCH,
        )
        if not rows:
            return
        ids = [r["id"] for r in rows]
        chunks = [ids[i:i + BULK_RETRIEVE_LIMIT] for i in range(0, len(ids), BULK_RETRIEVE_LIMIT)]
        await asyncio.gather(*(check(chunk) for chunk in chunks))
        after = ids[-1]
        if on_batch is not None:
            await on_batch(after)


# -- the run ------------------------------------------------------------------------------------------------

async def backfill(
    ctx: SyncContext,
    merchant_id: str,
    *,
    full: bool = False,
    concurrency: int = 8,
    attribute_concurrency: int = ATTRIBUTE_CONCURRENCY,
    kind: str = BACKFILL,
    reporter: ProgressFactory | None = None,
    log_every: float = 10.0,
) -> runs.Run:
    """One complete backfill (or sweep) of one merchant, recorded in ``sync_runs``; resumes an unfinished one.

    ``full`` ignores any checkpoint and starts a new complete listing. Square errors end the run with the
    status :func:`worker.runs.status_for` gives (the run is returned, the error is not raised); cancellation
    records ``interrupted`` and propagates. Raises :class:`worker.runs.RunBusy` if the same run is in progress.
    """
    # this run's own requests (others run on the same client at the same time); a sweep's are the lanes'
    with spending(LANE_SPENDING if kind == SWEEP else BACKFILL_SPENDING) as spend:
        return await _recorded_backfill(ctx, merchant_id, spend, full=full, concurrency=concurrency,
                                        attribute_concurrency=attribute_concurrency, kind=kind, reporter=reporter,
                                        log_every=log_every)


async def _recorded_backfill(ctx: SyncContext, merchant_id: str, spend: Spend, *, full: bool, concurrency: int,
                             attribute_concurrency: int, kind: str, reporter: ProgressFactory | None,
                             log_every: float) -> runs.Run:
    checkpoint: dict[str, Any] = {}
    requests_before = 0

    async def prepare() -> dict[str, Any]:
        nonlocal requests_before
        previous = None if full else await runs.resumable_checkpoint(ctx.pool, merchant_id, kind)
        if previous is not None and previous[1].get("v") == CHECKPOINT_VERSION:
            checkpoint.update(previous[1])
            checkpoint["resumed_from"] = previous[0]
        # As early as possible: events that occur before this are never searchable (square_mirror.searchable_events).
        await searchable_events.ensure_enabled(ctx.pool, ctx.client, merchant_id)
        requests_before = spend.requests
        return checkpoint

    async with runs.recorded(ctx.pool, merchant_id, kind, prepare=prepare, locks=ctx.locks) as run:
        bar = reporter(f"{kind} {merchant_id}", merchant_id) if reporter is not None else None
        progress = Progress(label=kind, merchant_id=merchant_id, reporter=bar, log_every=log_every)
        try:
            attributes = AttributeBackfill(ctx, merchant_id, run, checkpoint, concurrency=attribute_concurrency,
                                           search_concurrency=concurrency, progress=progress)
            await _run_phases(ctx, merchant_id, run, checkpoint, concurrency=concurrency, progress=progress,
                              attributes=attributes)
        finally:
            progress.close()
            progress.log_line(f"{kind}_progress_final")
            # square_requests: the listing's (the backfill's figure); requests: the whole pass's (its cost)
            run.counts["square_requests"] = spend.requests - requests_before
            run.counts["requests"] = spend.requests
    return run


async def _run_phases(ctx: SyncContext, merchant_id: str, run: runs.Run, checkpoint: dict[str, Any], *,
                      concurrency: int, progress: Progress, attributes: AttributeBackfill) -> None:
    checkpoint.setdefault("v", CHECKPOINT_VERSION)
    checkpoint["phase"] = checkpoint.get("phase") or "definitions"
    await sync_definitions(ctx, merchant_id, run)

    if checkpoint["phase"] in ("definitions", "customers"):
        await _list_customers(ctx, merchant_id, run, checkpoint, concurrency=concurrency, progress=progress,
                              attributes=attributes)
        checkpoint["phase"] = "inference"
        checkpoint.setdefault("inference_after", "")
        await run.flush(checkpoint=checkpoint)

    if checkpoint["phase"] == "inference":
        started = require_time(checkpoint["listing_started_at"])

        async def saved(after: str) -> None:
            checkpoint["inference_after"] = after
            await run.flush(checkpoint=checkpoint, force=False)

        await infer_deletions(ctx, merchant_id, run, started, concurrency=concurrency,
                              after=checkpoint.get("inference_after", ""), on_batch=saved)
        checkpoint["phase"] = "custom_attributes"
        await run.flush(checkpoint=checkpoint)

    if checkpoint["phase"] == "custom_attributes":
        await attributes.search_and_read()  # done already unless the run that listed was interrupted first
        await attributes.by_id()
        checkpoint["phase"] = "done"
        await run.flush(checkpoint=checkpoint)
    await store.set_merchant_auth(ctx.pool, merchant_id, ok=True)


async def _list_customers(ctx: SyncContext, merchant_id: str, run: runs.Run, checkpoint: dict[str, Any], *,
                          concurrency: int, progress: Progress, attributes: AttributeBackfill) -> None:
    """Phase 2, and phase 4's searches and reads beside it."""
    if "listing_started_at" not in checkpoint:
        checkpoint["listing_started_at"] = iso(utcnow())
    checkpoint["phase"] = "customers"
    if "partitions" in checkpoint:
        planner = Planner.from_checkpoint(checkpoint["partitions"], checkpoint.get("bounds"))
        log.info("backfill_resumed", merchant_id=merchant_id, run_id=run.run_id,
                 resumed_from=checkpoint.get("resumed_from"), remaining=planner.remaining())
    else:
        lo, hi, total = await probe(ctx, merchant_id, run)
        checkpoint["total"] = total
        planner = Planner(plan_partitions(lo, hi, total, concurrency), (lo, hi))
    progress.set_total(checkpoint.get("total"))

    def snapshot() -> dict[str, Any]:
        checkpoint["partitions"] = planner.to_checkpoint()
        checkpoint["bounds"] = list(planner.bounds) if planner.bounds else None
        return checkpoint

    await run.flush(checkpoint=snapshot())
    listing = Listing(ctx, merchant_id, run, planner, concurrency=concurrency, progress=progress,
                      checkpoint=snapshot)
    await together(listing.execute(), attributes.search_and_read())
    if not planner.complete():
        raise RuntimeError("listing ended with unfinished partitions")


# Square requests of a run by endpoint, from its counts (summarize): the count each endpoint's requests add to.
REQUEST_COUNTS: Final = {
    "ListCustomerCustomAttributeDefinitions": "custom_attribute_definition_pages",
    "SearchCustomers (custom_attribute filter)": "custom_attribute_searches",
    "ListCustomerCustomAttributes": "custom_attribute_reads",
}


def summarize(run: runs.Run) -> Mapping[str, Any]:
    summary: dict[str, Any] = {"merchant_id": run.merchant_id, "kind": run.kind, "run_id": run.run_id,
                               "status": run.status, "counts": run.counts, "error": run.error}
    if "custom_attribute_definition_pages" in run.counts:
        counts = run.counts
        summary["custom_attributes"] = {
            "requests": {endpoint: counts.get(name, 0) for endpoint, name in REQUEST_COUNTS.items()},
            "definitions": counts.get("custom_attribute_definitions", 0),
            "customers_read": counts.get("custom_attribute_customers", 0),
            "customers_with_values": counts.get("custom_attribute_customers_with_values", 0),
            "values_written": counts.get("custom_attribute_values_written", 0),
            "values_ended": counts.get("custom_attribute_values_ended", 0),
        }
    return summary
