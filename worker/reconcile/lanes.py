"""Reconcile lanes: what heals the mirror when webhooks cannot (or did not) tell.

Each lane runs for one merchant as one run in ``sync_runs`` (kind ``reconcile:<lane>``) under the same
per-(merchant, kind) lock as the backfill, and writes only through :mod:`worker.store` / :mod:`worker.sync`:

- ``incremental``: SearchCustomers on ``updated_at >= watermark - overlap``; an ``INVALID_CURSOR`` restarts the
  window; the watermark moves (to when the window began) only after a complete window.
- ``segments``: every segment's members through SearchCustomers ``segment_ids any [segment]``, diffed into the
  mirror (segment changes fire no webhook and bump no version: this is the only way they are ever seen); then
  every hidden profile is read by ID (:func:`refresh_hidden`), since no search can show it.
- ``groups``: ListCustomerGroups, then each group's members through SearchCustomers ``group_ids any [group]``;
  customers whose membership differs are re-fetched by ID; hidden profiles are read by ID unless the segments
  lane read them within the last interval.
  Neither lane reads a hidden profile's absence from a search as news (``square.customer_is_hidden``).
- ``events``: EnableEvents (only events that occur while enabled are searchable,
  :mod:`square_mirror.searchable_events`), then SearchEvents from the last processed event time (at most 28 days
  back, and never before events became searchable: the run counts what it cannot reach), each event queued for
  the event worker exactly like a webhook (job ID = event ID, so duplicates collapse; the worker deduplicates
  by event ID in ``webhook_events``): a receiver outage or a lost Redis queue heals itself.
- ``sweep``: a full listing plus deletion/merge inference (:func:`worker.backfill.backfill` of kind ``sweep``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from square_mirror import searchable_events
from square_mirror.constants import CUSTOMER_EVENT_TYPES, PROCESS_EVENT_JOB, QUEUE_NAME
from square_mirror.jobs import InvalidEnvelope, build_event_job
from square_mirror.logs import get_logger
from square_mirror.square_api import (
    BULK_RETRIEVE_LIMIT,
    CUSTOMERS_PAGE_LIMIT,
    EVENTS_PAGE_LIMIT,
    SquareInvalidRequest,
    SquareUnauthorized,
)
from worker import runs, store
from worker.backfill.partition import created_ms, rfc3339_ms
from worker.backfill.phases import SWEEP, backfill, list_all, sync_definitions
from worker.sync import Outcome, SyncContext, sync_customers, sync_missing_definitions, utcnow

log = get_logger(__name__)

LANES: Final = ("incremental", "segments", "groups", "events", "sweep")
EVENTS_RETENTION: Final = timedelta(days=28)
EVENTS_RETENTION_MARGIN: Final = timedelta(minutes=10)
MAX_WINDOW_RESTARTS: Final = 5
DEFINITION_CONCURRENCY: Final = 4
HIDDEN_REFRESH: Final = "hidden_refresh"  # sync_state lane: when the last complete refresh of hidden profiles began
HIDDEN_REFRESH_SHARE: Final = timedelta(minutes=5)  # the lanes' interval: a refresh this recent serves both


def rfc3339(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(value: str) -> datetime:
    dt = datetime.fromisoformat(value)
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def _sync(ctx: Mapping[str, Any]) -> SyncContext:
    sync = ctx.get("sync")
    if isinstance(sync, SyncContext):
        return sync
    return SyncContext(ctx["pool"], ctx["client"])


def _overlap(ctx: Mapping[str, Any]) -> timedelta:
    settings = ctx.get("settings")
    seconds = getattr(settings, "reconcile_overlap_seconds", 120.0)
    return timedelta(seconds=float(seconds))


async def search_all(sync: SyncContext, merchant_id: str, body: Mapping[str, Any], run: runs.Run,
                     on_page: Callable[[list[dict[str, Any]], datetime], Awaitable[None]]) -> None:
    """Every page of one SearchCustomers query sorted by ``CREATED_AT ASC``.

    An expired cursor (``INVALID_CURSOR``) restarts the same query narrowed to ``created_at`` from the last
    customer already handled (one millisecond earlier, inclusive-safe), so long windows still finish when
    cursors expire quickly; five restarts in a row without a new page end the run as failed.
    """
    query = dict(body.get("query") or {})
    cursor: str | None = None
    stalled = 0
    last_created: int | None = None
    request_body = dict(body)
    while True:
        request = dict(request_body)
        if cursor:
            request["cursor"] = cursor
        observed_at = utcnow()
        try:
            page = await sync.client.search_customers(merchant_id, request)
        except SquareInvalidRequest as exc:
            if cursor and "INVALID_CURSOR" in exc.codes and stalled < MAX_WINDOW_RESTARTS:
                stalled += 1
                run.add(cursor_restarts=1)
                cursor = None
                if last_created is not None:
                    flt = dict(query.get("filter") or {})
                    flt["created_at"] = {"start_at": rfc3339_ms(last_created - 1)}
                    request_body = {**body, "query": {**query, "filter": flt}}
                continue
            raise
        stalled = 0
        run.add(pages=1)
        customers = [c for c in page.get("customers") or [] if isinstance(c, dict) and isinstance(c.get("id"), str)]
        await on_page(customers, observed_at)
        if customers and customers[-1].get("created_at"):
            last_created = created_ms(customers[-1])
        cursor = page.get("cursor") or None
        if not cursor:
            return


# -- incremental --------------------------------------------------------------------------------------------

async def incremental(ctx: Mapping[str, Any], merchant_id: str, run: runs.Run) -> None:
    """One window of changes. A window cut short (time slice, crash, rate limit) is resumed by the next run from
    its last committed page (the same ``updated_at`` window narrowed by ``created_at``), so the watermark only
    moves once a whole window is in the mirror."""
    sync = _sync(ctx)
    previous = await runs.resumable_checkpoint(sync.pool, merchant_id, run.kind)
    if previous is not None and previous[1].get("phase") == "window":
        state = dict(previous[1])
        state["resumed_from"] = previous[0]
    else:
        watermark = await runs.get_watermark(sync.pool, merchant_id, "incremental")
        if watermark is None:
            watermark = await runs.last_succeeded_start(sync.pool, merchant_id, ("backfill", SWEEP))
        state = {"phase": "window", "window_began": rfc3339(utcnow()),
                 "window_start": rfc3339(watermark - _overlap(ctx)) if watermark is not None else None}
    query: dict[str, Any] = {"sort": {"field": "CREATED_AT", "order": "ASC"}}
    flt: dict[str, Any] = {}
    if state.get("window_start"):
        flt["updated_at"] = {"start_at": state["window_start"]}
    if state.get("after_ms") is not None:
        flt["created_at"] = {"start_at": rfc3339_ms(int(state["after_ms"]) - 1)}
    if flt:
        query["filter"] = flt
    await run.flush(checkpoint=state)

    async def write(customers: list[dict[str, Any]], observed_at: datetime) -> None:
        if not customers:
            return
        async with sync.pool.acquire() as conn, conn.transaction():
            written = await store.upsert_customers(conn, merchant_id, customers, observed_at, listed=True)
        run.add(listed=len(customers), upserted=len(written),
                stale_skipped=len({c["id"] for c in customers}) - len(written))
        await sync_missing_definitions(sync, merchant_id, customers)
        state["after_ms"] = created_ms(customers[-1])
        await run.flush(checkpoint=state, force=False)

    await search_all(sync, merchant_id, {"limit": CUSTOMERS_PAGE_LIMIT, "query": query}, run, write)
    await runs.set_watermark(sync.pool, merchant_id, "incremental", parse_time(state["window_began"]))
    state["phase"] = "done"
    state["watermark"] = state["window_began"]
    run.checkpoint = state


# -- segments and groups -------------------------------------------------------------------------------

async def _resume_done(sync: SyncContext, merchant_id: str, run: runs.Run, phase: str) -> set[str]:
    """Definitions already reconciled by an unfinished previous run of this lane (they are skipped)."""
    previous = await runs.resumable_checkpoint(sync.pool, merchant_id, run.kind)
    done: set[str] = set()
    if previous is not None and previous[1].get("phase") == phase:
        done = set(previous[1].get("done") or [])
        run.checkpoint["resumed_from"] = previous[0]
        if isinstance(previous[1].get("hidden_before"), str):
            run.checkpoint["hidden_before"] = previous[1]["hidden_before"]
    run.checkpoint.update(phase=phase, done=sorted(done))
    return done


async def _members(sync: SyncContext, merchant_id: str, run: runs.Run, field: str, definition_id: str) -> set[str]:
    members: set[str] = set()

    async def collect(customers: list[dict[str, Any]], _observed: datetime) -> None:
        members.update(c["id"] for c in customers)

    body = {"limit": CUSTOMERS_PAGE_LIMIT,
            "query": {"filter": {field: {"any": [definition_id]}}, "sort": {"field": "CREATED_AT", "order": "ASC"}}}
    await search_all(sync, merchant_id, body, run, collect)
    return members


# Stored members a search answer can speak for: live and not hidden (square.customer_is_hidden, the absence rule).
_LISTABLE_MEMBERS_SQL: Final = (
    "SELECT m.customer_id FROM square.{table} m JOIN square.customers c"
    " ON c.merchant_id = m.merchant_id AND c.id = m.customer_id AND c.deleted_at IS NULL"
    " AND NOT square.customer_is_hidden(c.given_name, c.family_name, c.company_name, c.email_address,"
    " c.phone_number, c.listed_at)"
    " WHERE m.merchant_id = $1 AND m.{key} = $2"
)


async def _refetch(sync: SyncContext, merchant_id: str, run: runs.Run, ids: Sequence[str],
                   count_as: str | None = None) -> None:
    """Bring these customers in line by ID (BulkRetrieveCustomers, 100 at a time): Square's answer decides."""
    semaphore = asyncio.Semaphore(DEFINITION_CONCURRENCY)

    async def one(chunk: Sequence[str]) -> None:
        async with semaphore:
            result = await sync_customers(sync, merchant_id, chunk)
        outcomes = list(result.outcomes.values())
        run.add(upserted=outcomes.count(Outcome.APPLIED), tombstoned=outcomes.count(Outcome.DELETED),
                merges=outcomes.count(Outcome.MERGED))
        if count_as is not None:
            run.add(**{count_as: len(chunk)})

    await asyncio.gather(*(one(ids[i:i + BULK_RETRIEVE_LIMIT]) for i in range(0, len(ids), BULK_RETRIEVE_LIMIT)))


async def refresh_hidden(sync: SyncContext, merchant_id: str, run: runs.Run, observed_before: datetime) -> None:
    """Read every live hidden profile not observed since ``observed_before`` by ID.

    No list or search shows hidden profiles (square.customer_is_hidden), so their group and segment changes,
    deletes and merges reach the mirror only through webhooks, the events replay and this refresh: one
    BulkRetrieveCustomers per 100 of them. The threshold is kept in the run's checkpoint, so a pass cut short by
    its time slice resumes with the profiles it has not read yet.
    """
    ids = await store.hidden_customers(sync.pool, merchant_id, observed_before)
    run.add(hidden_refreshed=0)
    await _refetch(sync, merchant_id, run, ids, "hidden_refreshed")
    await runs.set_watermark(sync.pool, merchant_id, HIDDEN_REFRESH, observed_before)


def _hidden_threshold(run: runs.Run, began: datetime) -> datetime:
    """The refresh threshold of this pass: its own start, or the one of the unfinished pass it resumes."""
    held = run.checkpoint.get("hidden_before")
    threshold = parse_time(held) if isinstance(held, str) else began
    run.checkpoint["hidden_before"] = rfc3339(threshold)
    return threshold


async def segments(ctx: Mapping[str, Any], merchant_id: str, run: runs.Run) -> None:
    sync = _sync(ctx)
    done = await _resume_done(sync, merchant_id, run, "segments")
    hidden_before = _hidden_threshold(run, utcnow())
    listed = await sync_definitions(sync, merchant_id, run)
    semaphore = asyncio.Semaphore(DEFINITION_CONCURRENCY)

    async def one(segment_id: str) -> None:
        async with semaphore:
            began = utcnow()
            try:
                members = await _members(sync, merchant_id, run, "segment_ids", segment_id)
            except SquareInvalidRequest as exc:
                if "BAD_REQUEST" in exc.codes:  # the segment disappeared since it was listed
                    run.add(segments_vanished=1)
                    return
                raise
            async with sync.pool.acquire() as conn, conn.transaction():
                diff = await store.replace_segment_members(conn, merchant_id, segment_id, sorted(members), began)
                # The diff skips customers written since `began` (fresher state wins), which includes customers
                # whose membership of another segment this lane changed a moment ago, and hidden ones (their
                # absence says nothing). Whatever still differs is re-fetched by ID below, so Square's answer
                # decides instead of waiting for the next run; hidden members are read by refresh_hidden.
                rows = await conn.fetch(_LISTABLE_MEMBERS_SQL.format(table="customer_segment_members",
                                                                     key="segment_id"), merchant_id, segment_id)
            run.add(segment_members_added=diff.added, segment_members_removed=diff.removed)
            refetch = sorted((members ^ {r["customer_id"] for r in rows}) | set(diff.unknown))
            await _refetch(sync, merchant_id, run, refetch, "refetched")
            done.add(segment_id)
            run.checkpoint["done"] = sorted(done)
            await run.flush(force=False)

    await asyncio.gather(*(one(sid) for sid in listed["segments"] if sid not in done))
    await refresh_hidden(sync, merchant_id, run, hidden_before)
    run.checkpoint["phase"] = "done"


async def groups(ctx: Mapping[str, Any], merchant_id: str, run: runs.Run) -> None:
    sync = _sync(ctx)
    done = await _resume_done(sync, merchant_id, run, "groups")
    began = utcnow()
    # Share the segments lane's refresh when it ran within one lane interval: profiles it read since need no
    # second read. Group changes also fire webhooks, so this lane is the backstop, not the only witness.
    shared = await runs.get_watermark(sync.pool, merchant_id, HIDDEN_REFRESH)
    hidden_before = _hidden_threshold(
        run, shared if shared is not None and began - shared <= HIDDEN_REFRESH_SHARE else began)
    listed = await sync_definitions(sync, merchant_id, run)
    semaphore = asyncio.Semaphore(DEFINITION_CONCURRENCY)

    async def one(group_id: str) -> None:
        async with semaphore:
            searched = utcnow()
            members = await _members(sync, merchant_id, run, "group_ids", group_id)
            await store.mark_listed(sync.pool, merchant_id, sorted(members), searched)
            rows = await sync.pool.fetch(_LISTABLE_MEMBERS_SQL.format(table="customer_group_members", key="group_id"),
                                         merchant_id, group_id)
            differ = sorted(members ^ {r["customer_id"] for r in rows})
            run.add(group_membership_differences=len(differ))
            await _refetch(sync, merchant_id, run, differ)
            done.add(group_id)
            run.checkpoint["done"] = sorted(done)
            await run.flush(force=False)

    await asyncio.gather(*(one(gid) for gid in listed["groups"] if gid not in done))
    await refresh_hidden(sync, merchant_id, run, hidden_before)
    run.checkpoint["phase"] = "done"


# -- events replay ------------------------------------------------------------------------------------------

EventHandler = Callable[[dict[str, Any]], Awaitable[bool]]


async def _event_handler(ctx: Mapping[str, Any], merchant_id: str) -> tuple[EventHandler, str]:
    """How replayed events reach the event worker: through arq exactly as the receiver queues them (inside the
    worker, or from the CLI when REDIS_URL is set), else applied here by ID (no worker, no Redis)."""
    arq_redis = ctx.get("arq_redis") or ctx.get("redis")
    if arq_redis is not None and hasattr(arq_redis, "enqueue_job"):
        async def enqueue(payload: dict[str, Any]) -> bool:
            job = await arq_redis.enqueue_job(PROCESS_EVENT_JOB, payload, _job_id=payload["event_id"],
                                              _queue_name=QUEUE_NAME)
            return job is not None

        return enqueue, "arq"
    sync = _sync(ctx)

    async def by_id(payload: dict[str, Any]) -> bool:
        """Without a worker: apply the merge lineage, then bring every named customer in line by ID."""
        ids = [payload["customer_id"]] if payload.get("customer_id") else []
        merge = (payload.get("event_context") or {}).get("merge")
        if isinstance(merge, dict) and isinstance(merge.get("to_customer_id"), str):
            sources = [s for s in merge.get("from_customer_ids") or [] if isinstance(s, str)]
            merged_at = parse_time(payload["created_at"]) if payload.get("created_at") else utcnow()
            async with sync.pool.acquire() as conn, conn.transaction():
                await store.apply_merge(conn, merchant_id, sources, merge["to_customer_id"], merged_at,
                                        source="events_api", event_id=payload["event_id"])
            ids.append(merge["to_customer_id"])
        if ids:
            await sync_customers(sync, merchant_id, ids)
        return True

    return by_id, "by_id"


# Webhook events older than this that SearchEvents did not return mean events were off for part of the window.
EVENTS_SEARCH_LAG: Final = timedelta(seconds=60)

_MISSING_FROM_SEARCH_SQL: Final = """
SELECT count(*) FROM square.webhook_events
WHERE merchant_id = $1 AND source = 'webhook' AND type = ANY ($2::text[])
  AND created_at >= $3 AND created_at < $4 AND NOT (event_id = ANY ($5::text[]))
"""


async def events(ctx: Mapping[str, Any], merchant_id: str, run: runs.Run) -> None:
    """Replay the window's events. Events are enabled first, every pass (one request): a seller or another app
    may have disabled them, and only events that occur while enabled are ever searchable."""
    sync = _sync(ctx)
    searchable = await searchable_events.enable(sync.pool, sync.client, merchant_id)
    now = utcnow()
    oldest = now - EVENTS_RETENTION + EVENTS_RETENTION_MARGIN
    watermark = await runs.get_watermark(sync.pool, merchant_id, "events")
    if watermark is None:  # events older than a completed listing are already reflected in the mirror
        watermark = await runs.last_succeeded_start(sync.pool, merchant_id, ("backfill", SWEEP))
    start = max(oldest, watermark - _overlap(ctx)) if watermark is not None else oldest
    handle, how = await _event_handler(ctx, merchant_id)
    run.checkpoint.update(window_start=rfc3339(start), delivery=how, searchable_since=rfc3339(searchable.since))
    needed_from = max(oldest, watermark) if watermark is not None else oldest  # the overlap is only a margin
    if needed_from < searchable.since:
        # Events from before then can never be replayed: only webhooks and the other lanes can have seen them.
        run.add(unsearchable_seconds=int((searchable.since - needed_from).total_seconds()))
        log.warning("events_window_before_searchable", merchant_id=merchant_id, window_start=rfc3339(needed_from),
                    searchable_since=rfc3339(searchable.since))
    query = {"filter": {"event_types": sorted(CUSTOMER_EVENT_TYPES), "merchant_ids": [merchant_id],
                        "created_at": {"start_at": rfc3339(start)}},
             "sort": {"field": "DEFAULT", "order": "ASC"}}
    cursor: str | None = None
    newest: datetime | None = None
    restarts = 0
    seen: set[str] = set()
    while True:
        body: dict[str, Any] = {"limit": EVENTS_PAGE_LIMIT, "query": query}
        if cursor:
            body["cursor"] = cursor
        try:
            page = await sync.client.search_events(merchant_id, body)
        except SquareInvalidRequest as exc:
            if cursor and "INVALID_CURSOR" in exc.codes and restarts < MAX_WINDOW_RESTARTS:
                restarts += 1
                run.add(cursor_restarts=1)
                cursor = None
                continue
            raise
        run.add(pages=1)
        for event in page.get("events") or []:
            if not isinstance(event, dict) or event.get("type") not in CUSTOMER_EVENT_TYPES:
                continue
            try:
                payload = build_event_job(event, received_at=rfc3339(utcnow()), source="events_api")
            except InvalidEnvelope as exc:
                run.add(errors=1)
                log.warning("replayed_event_invalid", merchant_id=merchant_id, error=str(exc))
                continue
            seen.add(payload["event_id"])
            queued = await handle(payload)
            run.add(events=1, events_queued=int(queued))
            if payload.get("created_at"):
                created = parse_time(payload["created_at"])
                newest = created if newest is None or created > newest else newest
        if newest is not None:  # events come oldest first: everything up to here was handed over
            await runs.set_watermark(sync.pool, merchant_id, "events", newest)
        await run.flush(force=False)
        cursor = page.get("cursor") or None
        if not cursor:
            break
    await _check_searchable(sync, merchant_id, run, max(start, searchable.since), now - EVENTS_SEARCH_LAG, seen)
    # The whole window was handed over: next time start from the newest event seen (or from now - overlap).
    await runs.set_watermark(sync.pool, merchant_id, "events", newest or now)


async def _check_searchable(sync: SyncContext, merchant_id: str, run: runs.Run, since: datetime, until: datetime,
                            seen: set[str]) -> None:
    """Events were off for part of the window when webhooks delivered events SearchEvents did not return: they
    have been enabled again at this pass's start, so the searchable period starts over from then."""
    if until <= since:
        return
    missing = int(await sync.pool.fetchval(_MISSING_FROM_SEARCH_SQL, merchant_id, sorted(CUSTOMER_EVENT_TYPES),
                                           since, until, sorted(seen)))
    if missing:
        run.add(events_missing_from_search=missing)
        restarted = await searchable_events.enable(sync.pool, sync.client, merchant_id, restarted=True)
        run.checkpoint["searchable_since"] = rfc3339(restarted.since)
        log.warning("events_found_disabled", merchant_id=merchant_id, missing=missing,
                    searchable_since=rfc3339(restarted.since))


# -- running a lane -----------------------------------------------------------------------------------------

Lane = Callable[[Mapping[str, Any], str, runs.Run], Awaitable[None]]
LANE_FUNCTIONS: Final[dict[str, Lane]] = {
    "incremental": incremental,
    "segments": segments,
    "groups": groups,
    "events": events,
}


async def run_lane(ctx: Mapping[str, Any], merchant_id: str, lane: str) -> runs.Run:
    """One lane for one merchant as one recorded run; Square errors end the run (recorded), not the caller."""
    sync = _sync(ctx)
    if lane == "sweep":
        settings = ctx.get("settings")
        return await backfill(sync, merchant_id, kind=SWEEP,
                              concurrency=int(getattr(settings, "backfill_concurrency", 8)))
    function = LANE_FUNCTIONS[lane]
    kind = f"reconcile:{lane}"
    async with runs.exclusive(sync.pool, merchant_id, kind):
        await store.ensure_merchant(sync.pool, merchant_id)
        run = await runs.start_run(sync.pool, merchant_id, kind)
        try:
            if lane != "events":  # that lane enables events at every pass
                await searchable_events.ensure_enabled(sync.pool, sync.client, merchant_id)
            await function(ctx, merchant_id, run)
        except Exception as exc:
            if isinstance(exc, SquareUnauthorized) and lane != "events":
                await store.set_merchant_auth(sync.pool, merchant_id, ok=False, error=str(exc))
            run.add(errors=1)
            if isinstance(exc, searchable_events.EventsRefused):
                run.add(events_refused=1)  # said once, when it was first refused (searchable_events.enable)
            else:
                log.error("lane_failed", merchant_id=merchant_id, lane=lane, error=str(exc),
                          error_type=type(exc).__name__)
            await run.finish(runs.status_for(exc, run.counts), error=f"{type(exc).__name__}: {exc}"[:2000])
            return run
        except BaseException as exc:
            await run.finish(runs.status_for(exc, run.counts), error=f"{type(exc).__name__}: cancelled")
            raise
        await run.finish(runs.status_for(None, run.counts))
        return run


__all__ = ["LANES", "list_all", "run_lane"]
