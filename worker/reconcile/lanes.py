"""Reconcile lanes: what heals the mirror when webhooks cannot (or did not) tell.

Each lane runs for one merchant as one run in ``sync_runs`` (kind ``reconcile:<lane>``, :func:`worker.runs.recorded`)
under the same per-(merchant, kind) lock as the backfill, and writes only through :mod:`worker.store` /
:mod:`worker.sync`:

- ``incremental``: SearchCustomers on ``updated_at >= watermark - overlap``; an ``INVALID_CURSOR`` restarts the
  window; the watermark moves (to when the window began) only after a complete window.
- ``segments``: every segment's members through SearchCustomers ``segment_ids any [segment]``, diffed into the
  mirror (segment changes fire no webhook and bump no version: this is the only way they are ever seen); then
  every hidden profile is read by ID (:func:`refresh_hidden`), since no search can show it.
- ``groups``: ListCustomerGroups, then each group's members through SearchCustomers ``group_ids any [group]``;
  customers whose membership differs are re-fetched by ID; hidden profiles are read by ID unless the segments
  lane read them within the last interval. Both are one membership lane (:func:`memberships`), which differs
  per kind in one step (:data:`SEGMENTS`, :data:`GROUPS`).
  Neither lane reads a hidden profile's absence from a search as news (``square.customer_is_hidden``).
- ``events``: EnableEvents (only events that occur while enabled are searchable,
  :mod:`square_mirror.searchable_events`), then SearchEvents from the last processed event time (at most 28 days
  back, and never before events became searchable: the run counts what it cannot reach), each event queued for
  the event worker exactly like a webhook (job ID = event ID, so duplicates collapse; the worker deduplicates
  by event ID in ``webhook_events``): a receiver outage or a lost Redis queue heals itself.
- ``custom_attributes``: re-lists the custom attribute definitions (one no longer listed ends, with its values),
  then finds, key by key, the customers whose value changed since the watermark minus the overlap (SearchCustomers'
  ``custom_attribute`` filter on ``updated_at``) and reads their values again. A deleted value leaves nothing to
  search for: the sweep reads every customer the mirror holds values for.
- ``sweep``: a full listing plus deletion/merge inference (:func:`worker.backfill.backfill` of kind ``sweep``).

Lanes take the :class:`worker.context.WorkerContext`; their arq jobs are worker/reconcile/jobs.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from square_mirror import searchable_events
from square_mirror.constants import (
    CUSTOM_ATTRIBUTE_DEFINITION_EVENT_TYPES,
    CUSTOM_ATTRIBUTE_EVENT_TYPES,
    LANE_TARGET_SECONDS,
    PROCESS_EVENT_JOB,
    QUEUE_NAME,
    SYNCED_EVENT_TYPES,
)
from square_mirror.errors import SquareInvalidRequest
from square_mirror.jobs import EventJob, InvalidEnvelope, build_event_job, read_event_job
from square_mirror.logs import get_logger
from square_mirror.pagination import Pages
from square_mirror.ratelimit import LANE_SPENDING, spending
from square_mirror.square_api import BULK_RETRIEVE_LIMIT, CUSTOMERS_PAGE_LIMIT, EVENTS_PAGE_LIMIT
from square_mirror.timefmt import parse_time, require_time, rfc3339, rfc3339_ms, utcnow
from worker import attribute_sync, runs, store
from worker.backfill.partition import created_ms
from worker.backfill.phases import SWEEP, backfill
from worker.context import WorkerContext
from worker.outcome import Outcome
from worker.queries import queries
from worker.sync import SyncContext, sync_customers, sync_definitions, sync_missing_definitions

log = get_logger(__name__)

LANES: Final = tuple(LANE_TARGET_SECONDS)  # incremental, segments, groups, events, custom_attributes, sweep
EVENTS_RETENTION: Final = timedelta(days=28)
EVENTS_RETENTION_MARGIN: Final = timedelta(minutes=10)
EVENTS_MAX_RESTARTS: Final = 5  # one window of events: an expired cursor starts it over, five times at most
DEFINITION_CONCURRENCY: Final = 4
HIDDEN_REFRESH: Final = "hidden_refresh"  # sync_state lane: when the last complete refresh of hidden profiles began
HIDDEN_REFRESH_SHARE: Final = timedelta(minutes=5)  # the lanes' interval: a refresh this recent serves both

OnPage = Callable[[list[dict[str, Any]], datetime], Awaitable[None]]


def lane_kind(lane: str) -> str:
    """The run kind of a lane in ``square.sync_runs`` (the sweep is a backfill of kind ``sweep``)."""
    return SWEEP if lane == "sweep" else f"reconcile:{lane}"


async def search_all(sync: SyncContext, merchant_id: str, body: Mapping[str, Any], run: runs.Run,
                     on_page: OnPage) -> None:
    """Every page of one SearchCustomers query sorted by ``CREATED_AT ASC``.

    An expired cursor restarts the same query narrowed to ``created_at`` from the last customer already handled
    (one millisecond earlier, inclusive-safe), so long windows still finish when cursors expire quickly.
    """
    query = dict(body.get("query") or {})
    last_created: int | None = None
    request_body = dict(body)

    async def fetch(cursor: str | None) -> dict[str, Any]:
        request = dict(request_body)
        if cursor:
            request["cursor"] = cursor
        return await sync.client.search_customers(merchant_id, request)

    pages = Pages(fetch)
    while not pages.done:
        page = await pages.next()
        if page is None:
            run.add(cursor_restarts=1)
            if last_created is not None:
                flt = dict(query.get("filter") or {})
                flt["created_at"] = {"start_at": rfc3339_ms(last_created - 1)}
                request_body = {**body, "query": {**query, "filter": flt}}
            continue
        run.add(pages=1)
        customers = [c for c in page.get("customers") or [] if isinstance(c, dict) and isinstance(c.get("id"), str)]
        await on_page(customers, pages.requested_at)
        if customers and customers[-1].get("created_at"):
            last_created = created_ms(customers[-1])


# -- incremental --------------------------------------------------------------------------------------------

async def incremental(wc: WorkerContext, merchant_id: str, run: runs.Run) -> None:
    """One window of changes. A window cut short (time slice, crash, rate limit) is resumed by the next run from
    its last committed page (the same ``updated_at`` window narrowed by ``created_at``), so the watermark only
    moves once a whole window is in the mirror."""
    sync = wc.sync
    previous = await runs.resumable_checkpoint(sync.pool, merchant_id, run.kind)
    if previous is not None and previous[1].get("phase") == "window":
        state = dict(previous[1])
        state["resumed_from"] = previous[0]
    else:
        watermark = await runs.get_watermark(sync.pool, merchant_id, "incremental")
        if watermark is None:
            watermark = await runs.last_succeeded_start(sync.pool, merchant_id, ("backfill", SWEEP))
        overlap = timedelta(seconds=wc.settings.reconcile_overlap_seconds)
        state = {"phase": "window", "window_began": rfc3339(utcnow()),
                 "window_start": rfc3339(watermark - overlap) if watermark is not None else None}
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
    await runs.set_watermark(sync.pool, merchant_id, "incremental", require_time(state["window_began"]))
    state["phase"] = "done"
    state["watermark"] = state["window_began"]
    run.checkpoint = state


# -- segments and groups: one membership lane ---------------------------------------------------------------

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
    threshold = parse_time(held) if isinstance(held, str) else None
    threshold = threshold or began
    run.checkpoint["hidden_before"] = rfc3339(threshold)
    return threshold


# The one step where the kinds differ: what a definition's listed members change in the mirror, and which
# customers must then be read by ID. Arguments: sync, merchant, definition ID, listed members, when the search
# began, the run.
MemberDiff = Callable[[SyncContext, str, str, set[str], datetime, runs.Run], Awaitable[list[str]]]


async def _diff_segment(sync: SyncContext, merchant_id: str, segment_id: str, members: set[str], began: datetime,
                        run: runs.Run) -> list[str]:
    """Segment changes bump no version and fire no webhook: the listing is applied to the mirror directly."""
    async with sync.pool.acquire() as conn, conn.transaction():
        diff = await store.replace_segment_members(conn, merchant_id, segment_id, sorted(members), began)
        # The diff skips customers written since `began` (fresher state wins), which includes customers whose
        # membership of another segment this lane changed a moment ago, and hidden ones (their absence says
        # nothing). Whatever still differs is re-fetched by ID, so Square's answer decides instead of waiting for
        # the next run; hidden members are read by refresh_hidden.
        rows = await conn.fetch(queries.get("listable_members", "segments"),
                                merchant_id, segment_id)
    run.add(segment_members_added=diff.added, segment_members_removed=diff.removed)
    return sorted((members ^ {r["customer_id"] for r in rows}) | set(diff.unknown))


async def _diff_group(sync: SyncContext, merchant_id: str, group_id: str, members: set[str], began: datetime,
                      run: runs.Run) -> list[str]:
    """Group changes bump the customer's version: whoever differs is re-fetched by ID, nothing else is written."""
    await store.mark_listed(sync.pool, merchant_id, sorted(members), began)
    rows = await sync.pool.fetch(queries.get("listable_members", "groups"),
                                 merchant_id, group_id)
    differ = sorted(members ^ {r["customer_id"] for r in rows})
    run.add(group_membership_differences=len(differ))
    return differ


@dataclass(frozen=True)
class Membership:
    """How the membership lane treats one kind of definition."""

    kind: str  # the sync_definitions key, and the checkpoint's phase
    search_field: str  # the SearchCustomers filter naming a definition's members
    diff: MemberDiff
    refetch_counter: str | None  # the run count of customers re-fetched after the diff, if counted
    vanished_counter: str | None  # a definition gone since it was listed answers BAD_REQUEST: counted, skipped
    shares_hidden_refresh: bool  # a recent refresh of hidden profiles by the other lane serves this one too


SEGMENTS: Final = Membership("segments", "segment_ids", _diff_segment, refetch_counter="refetched",
                             vanished_counter="segments_vanished", shares_hidden_refresh=False)
# Group changes also fire webhooks, so this lane is the backstop, not the only witness: it shares the segments
# lane's refresh of hidden profiles when that ran within one lane interval.
GROUPS: Final = Membership("groups", "group_ids", _diff_group, refetch_counter=None, vanished_counter=None,
                           shares_hidden_refresh=True)


async def memberships(wc: WorkerContext, merchant_id: str, run: runs.Run, membership: Membership) -> None:
    """Every definition's members listed and brought into the mirror, then every hidden profile read by ID."""
    sync = wc.sync
    done = await _resume_done(sync, merchant_id, run, membership.kind)
    began = utcnow()
    shared = await runs.get_watermark(sync.pool, merchant_id, HIDDEN_REFRESH) \
        if membership.shares_hidden_refresh else None
    hidden_before = _hidden_threshold(
        run, shared if shared is not None and began - shared <= HIDDEN_REFRESH_SHARE else began)
    listed = await sync_definitions(sync, merchant_id, run)
    semaphore = asyncio.Semaphore(DEFINITION_CONCURRENCY)

    async def one(definition_id: str) -> None:
        async with semaphore:
            searched = utcnow()
            try:
                members = await _members(sync, merchant_id, run, membership.search_field, definition_id)
            except SquareInvalidRequest as exc:
                if membership.vanished_counter is not None and "BAD_REQUEST" in exc.codes:
                    run.add(**{membership.vanished_counter: 1})  # the definition disappeared since it was listed
                    return
                raise
            refetch = await membership.diff(sync, merchant_id, definition_id, members, searched, run)
            await _refetch(sync, merchant_id, run, refetch, membership.refetch_counter)
            done.add(definition_id)
            run.checkpoint["done"] = sorted(done)
            await run.flush(force=False)

    await asyncio.gather(*(one(d) for d in listed[membership.kind] if d not in done))
    await refresh_hidden(sync, merchant_id, run, hidden_before)
    run.checkpoint["phase"] = "done"


async def segments(wc: WorkerContext, merchant_id: str, run: runs.Run) -> None:
    await memberships(wc, merchant_id, run, SEGMENTS)


async def groups(wc: WorkerContext, merchant_id: str, run: runs.Run) -> None:
    await memberships(wc, merchant_id, run, GROUPS)


# -- custom attributes --------------------------------------------------------------------------------------

ALL_TIME: Final = "1970-01-01T00:00:00Z"


def custom_attribute_search(key: str, start_at: str) -> dict[str, Any]:
    """SearchCustomers for the customers whose value of ``key`` changed at or after ``start_at`` (inclusive)."""
    return {"limit": CUSTOMERS_PAGE_LIMIT,
            "query": {"filter": {"custom_attribute": {"filters": [{"key": key, "updated_at": {"start_at": start_at}}]}},
                      "sort": {"field": "CREATED_AT", "order": "ASC"}}}


async def custom_attributes(wc: WorkerContext, merchant_id: str, run: runs.Run) -> None:
    """Definitions, then the values changed since the watermark (all of them on the first pass). The watermark
    moves to when this pass began, and only once every key's search and every read is written."""
    sync = wc.sync
    began = utcnow()
    definitions = await attribute_sync.sync_definitions(sync, merchant_id, run)
    watermark = await runs.get_watermark(sync.pool, merchant_id, "custom_attributes")
    if watermark is None:
        watermark = await runs.last_succeeded_start(sync.pool, merchant_id, ("backfill", SWEEP))
    overlap = timedelta(seconds=wc.settings.reconcile_overlap_seconds)
    start_at = rfc3339(watermark - overlap) if watermark is not None else ALL_TIME
    run.checkpoint.update(window_start=start_at)
    changed: dict[str, None] = {}

    async def collect(customers: list[dict[str, Any]], _observed_at: datetime) -> None:
        changed.update(dict.fromkeys(c["id"] for c in customers))

    for key in definitions.keys:
        await search_all(sync, merchant_id, custom_attribute_search(key, start_at), run, collect)
    # sync_values counts the reads into the run (custom_attribute_reads, _customers, _values_written, _values_ended).
    await attribute_sync.sync_values(sync, merchant_id, changed, run=run,
                                     concurrency=wc.settings.backfill_concurrency)
    await runs.set_watermark(sync.pool, merchant_id, "custom_attributes", began)


# -- events replay ------------------------------------------------------------------------------------------

EventHandler = Callable[[dict[str, Any], EventJob], Awaitable[bool]]


def _event_handler(wc: WorkerContext, merchant_id: str) -> tuple[EventHandler, str]:
    """How replayed events reach the event worker: through arq exactly as the receiver queues them (inside the
    worker, or from the CLI when REDIS_URL is set), else applied here by ID (no worker, no Redis)."""
    arq_redis = wc.arq_redis
    if arq_redis is not None:
        async def enqueue(payload: dict[str, Any], job: EventJob) -> bool:
            queued = await arq_redis.enqueue_job(PROCESS_EVENT_JOB, payload, _job_id=job.event_id,
                                                 _queue_name=QUEUE_NAME)
            return queued is not None

        return enqueue, "arq"
    sync = wc.sync

    async def by_id(_payload: dict[str, Any], job: EventJob) -> bool:
        """Without a worker: apply the merge lineage, then bring every named customer in line by ID (for a
        custom-attribute event, its customer's values; for a definition event, the definitions)."""
        if job.type in CUSTOM_ATTRIBUTE_DEFINITION_EVENT_TYPES:
            await attribute_sync.sync_definitions(sync, merchant_id)
            return True
        if job.type in CUSTOM_ATTRIBUTE_EVENT_TYPES:
            await attribute_sync.sync_values(sync, merchant_id, [job.customer_id] if job.customer_id else [])
            return True
        ids = [job.customer_id] if job.customer_id else []
        if job.merge is not None:
            sources, target = job.merge
            merged_at = parse_time(job.created_at) or utcnow()
            async with sync.pool.acquire() as conn, conn.transaction():
                await store.apply_merge(conn, merchant_id, sources, target, merged_at,
                                        source=store.MergeSource.EVENTS_API, event_id=job.event_id)
            ids.append(target)
        if ids:
            await sync_customers(sync, merchant_id, ids)
        return True

    return by_id, "by_id"


# Webhook events older than this that SearchEvents did not return mean events were off for part of the window.
EVENTS_SEARCH_LAG: Final = timedelta(seconds=60)


async def events(wc: WorkerContext, merchant_id: str, run: runs.Run) -> None:
    """Replay the window's events. Events are enabled first, every pass (one request): a seller or another app
    may have disabled them, and only events that occur while enabled are ever searchable."""
    sync = wc.sync
    searchable = await searchable_events.enable(sync.pool, sync.client, merchant_id)
    now = utcnow()
    oldest = now - EVENTS_RETENTION + EVENTS_RETENTION_MARGIN
    watermark = await runs.get_watermark(sync.pool, merchant_id, "events")
    if watermark is None:  # events older than a completed listing are already reflected in the mirror
        watermark = await runs.last_succeeded_start(sync.pool, merchant_id, ("backfill", SWEEP))
    overlap = timedelta(seconds=wc.settings.reconcile_overlap_seconds)
    start = max(oldest, watermark - overlap) if watermark is not None else oldest
    handle, how = _event_handler(wc, merchant_id)
    run.checkpoint.update(window_start=rfc3339(start), delivery=how, searchable_since=rfc3339(searchable.since))
    needed_from = max(oldest, watermark) if watermark is not None else oldest  # the overlap is only a margin
    if needed_from < searchable.since:
        # Events from before then can never be replayed: only webhooks and the other lanes can have seen them.
        run.add(unsearchable_seconds=int((searchable.since - needed_from).total_seconds()))
        log.warning("events_window_before_searchable", merchant_id=merchant_id, window_start=rfc3339(needed_from),
                    searchable_since=rfc3339(searchable.since))
    query = {"filter": {"event_types": sorted(SYNCED_EVENT_TYPES), "merchant_ids": [merchant_id],
                        "created_at": {"start_at": rfc3339(start)}},
             "sort": {"field": "DEFAULT", "order": "ASC"}}

    async def fetch(cursor: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {"limit": EVENTS_PAGE_LIMIT, "query": query}
        if cursor:
            body["cursor"] = cursor
        return await sync.client.search_events(merchant_id, body)

    newest: datetime | None = None
    seen: set[str] = set()
    pages = Pages(fetch, max_restarts=EVENTS_MAX_RESTARTS)
    while not pages.done:
        page = await pages.next()
        if page is None:
            run.add(cursor_restarts=1)
            continue
        run.add(pages=1)
        for event in page.get("events") or []:
            if not isinstance(event, dict) or event.get("type") not in SYNCED_EVENT_TYPES:
                continue
            try:
                payload = build_event_job(event, received_at=rfc3339(utcnow()), source="events_api")
                job = read_event_job(payload)
            except InvalidEnvelope as exc:
                run.add(errors=1)
                log.warning("replayed_event_invalid", merchant_id=merchant_id, error=str(exc))
                continue
            seen.add(job.event_id)
            queued = await handle(payload, job)
            run.add(events=1, events_queued=int(queued))
            created = parse_time(job.created_at)
            if created is not None:
                newest = created if newest is None or created > newest else newest
        if newest is not None:  # events come oldest first: everything up to here was handed over
            await runs.set_watermark(sync.pool, merchant_id, "events", newest)
        await run.flush(force=False)
    await _check_searchable(sync, merchant_id, run, max(start, searchable.since), now - EVENTS_SEARCH_LAG, seen)
    # The whole window was handed over: next time start from the newest event seen (or from now - overlap).
    await runs.set_watermark(sync.pool, merchant_id, "events", newest or now)


async def _check_searchable(sync: SyncContext, merchant_id: str, run: runs.Run, since: datetime, until: datetime,
                            seen: set[str]) -> None:
    """Events were off for part of the window when webhooks delivered events SearchEvents did not return: they
    have been enabled again at this pass's start, so the searchable period starts over from then."""
    if until <= since:
        return
    missing = int(await sync.pool.fetchval(queries.get("missing_from_search"), merchant_id,
                                           sorted(SYNCED_EVENT_TYPES), since, until, sorted(seen)))
    if missing:
        run.add(events_missing_from_search=missing)
        restarted = await searchable_events.enable(sync.pool, sync.client, merchant_id, restarted=True)
        run.checkpoint["searchable_since"] = rfc3339(restarted.since)
        log.warning("events_found_disabled", merchant_id=merchant_id, missing=missing,
                    searchable_since=rfc3339(restarted.since))


# -- running a lane -----------------------------------------------------------------------------------------

Lane = Callable[[WorkerContext, str, runs.Run], Awaitable[None]]
LANE_FUNCTIONS: Final[dict[str, Lane]] = {
    "incremental": incremental,
    "segments": segments,
    "groups": groups,
    "events": events,
    "custom_attributes": custom_attributes,
}


def _quiet_refusal(run: runs.Run, exc: Exception) -> bool:
    if isinstance(exc, searchable_events.EventsRefused):
        run.add(events_refused=1)  # said once, when it was first refused (searchable_events.enable)
        return True
    return False


async def run_lane(wc: WorkerContext, merchant_id: str, lane: str) -> runs.Run:
    """One lane for one merchant as one recorded run; Square errors end the run (recorded), not the caller."""
    sync = wc.sync
    if lane == "sweep":
        return await backfill(sync, merchant_id, kind=SWEEP, concurrency=wc.settings.backfill_concurrency,
                              attribute_concurrency=wc.settings.backfill_custom_attribute_concurrency)
    function = LANE_FUNCTIONS[lane]
    # The Events API refuses OAuth tokens: its refusal says nothing about the merchant's token (never unauthorized).
    with spending(LANE_SPENDING) as spend:  # the pass's own requests: its cost, which the budget scheduler reads
        async with runs.recorded(sync.pool, merchant_id, lane_kind(lane), on_error=_quiet_refusal,
                                 marks_unauthorized=lane != "events", locks=sync.locks) as run:
            try:
                if lane != "events":  # that lane enables events at every pass
                    await searchable_events.ensure_enabled(sync.pool, sync.client, merchant_id)
                await function(wc, merchant_id, run)
            finally:
                run.add(requests=spend.requests)
    return run
