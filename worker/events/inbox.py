"""The inbox (``square.webhook_events``): first sight, duplicates, outcomes, and what redrive re-enqueues.

An event row is written the first time any run sees the event and counts every run in ``attempts``. A row
with ``processed_at`` set is finished: a later run is a duplicate and changes nothing. A row without it (a run
crashed, or is waiting on a retry) is processed again. ``payload`` is the PII-free job payload, so a failed
event can be rebuilt and re-enqueued by ``square-mirror redrive``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import asyncpg
import orjson

from square_mirror.jobs import EventJob
from square_mirror.timefmt import parse_time
from worker.events.batching import MicroBatcher
from worker.queries import queries
from worker.store import Conn, StoredCustomer

ERROR_MAX_CHARS: Final = 300
V = TypeVar("V")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Sighting:
    processed: bool
    outcome: str | None
    attempts: int
    stored: StoredCustomer | None = None  # the event's customer as the mirror held it, read in the same statement


async def finish(conn: Conn | asyncpg.Pool, merchant_id: str, event_id: str, outcome: str,
                 error: str | None = None) -> bool:
    """Mark the event processed; the first run to finish wins (a concurrent twin does not overwrite it)."""
    status = await conn.execute(
        queries.get("finish_event"), merchant_id, event_id, outcome, _short(error),
    )
    return bool(status.endswith(" 1"))


async def note_pending(conn: Conn | asyncpg.Pool, merchant_id: str, event_id: str, outcome: str | None,
                       error: str | None) -> None:
    """An unfinished run: keep the reason (e.g. ``unauthorized``, the last transient error) without finishing."""
    await conn.execute(
        queries.get("note_event_pending"), merchant_id, event_id, outcome, _short(error),
    )


EventKey = tuple[str, str]  # (merchant_id, event_id)


async def record_many(
    conn: Conn | asyncpg.Pool, items: Mapping[EventKey, tuple[EventJob, dict[str, Any]]]
) -> dict[EventKey, Sighting]:
    """Write each event on first sight (or count another run of it), in one statement; tells whether each was
    already processed, with the event's customer as the mirror holds it (the gate's input)."""
    keys = sorted(items)
    jobs = [items[k][0] for k in keys]
    rows = await conn.fetch(
        queries.get("record_events"),
        [j.merchant_id for j in jobs], [j.event_id for j in jobs], [j.type for j in jobs],
        [j.customer_id for j in jobs], [j.version for j in jobs], [parse_time(j.created_at) for j in jobs],
        [parse_time(j.received_at) for j in jobs], [j.source for j in jobs],
        [orjson.dumps(items[k][1]).decode() for k in keys],
    )
    out: dict[EventKey, Sighting] = {}
    for r in rows:
        stored = (StoredCustomer(r["stored_version"], r["stored_deleted"], r["stored_merged_into"])
                  if r["known"] else None)
        out[(r["merchant_id"], r["event_id"])] = Sighting(bool(r["processed"]), r["outcome"], int(r["attempts"]),
                                                          stored)
    return out


async def finish_many(conn: Conn | asyncpg.Pool, items: Mapping[EventKey, tuple[str, str | None]]) -> dict[
        EventKey, bool]:
    """:func:`finish` for many events in one statement."""
    keys = sorted(items)
    await conn.execute(
        queries.get("finish_events"),
        [k[0] for k in keys], [k[1] for k in keys], [items[k][0] for k in keys],
        [_short(items[k][1]) for k in keys],
    )
    return dict.fromkeys(keys, True)


async def _isolating(
    run: Callable[[asyncpg.Pool, dict[EventKey, V]], Awaitable[dict[EventKey, R]]],
    pool: asyncpg.Pool,
    items: dict[EventKey, V],
) -> dict[EventKey, R | BaseException]:
    """Run a batch; if Postgres rejects it for its data, run each item alone so one bad event fails alone."""
    try:
        return dict(await run(pool, items))
    except asyncpg.DataError:
        if len(items) == 1:
            raise
    out: dict[EventKey, R | BaseException] = {}
    for key, item in items.items():
        try:
            out.update(await run(pool, {key: item}))
        except asyncpg.DataError as exc:
            out[key] = exc
    return out


class Inbox:
    """The inbox writes of concurrent jobs, batched: one statement per few milliseconds instead of per job."""

    def __init__(self, pool: asyncpg.Pool, *, window: float = 0.005) -> None:
        self.pool = pool

        async def record_batch(
            items: dict[EventKey, tuple[EventJob, dict[str, Any]]]
        ) -> dict[EventKey, Sighting | BaseException]:
            return await _isolating(record_many, pool, items)

        async def finish_batch(items: dict[EventKey, tuple[str, str | None]]) -> dict[EventKey, bool | BaseException]:
            return await _isolating(finish_many, pool, items)

        self._record: MicroBatcher[EventKey, tuple[EventJob, dict[str, Any]], Sighting] = MicroBatcher(
            record_batch, window=window)
        self._finish: MicroBatcher[EventKey, tuple[str, str | None], bool] = MicroBatcher(finish_batch,
                                                                                          window=window)

    async def record(self, job: EventJob, payload: dict[str, Any]) -> Sighting:
        return await self._record.submit((job.merchant_id, job.event_id), (job, payload))

    async def finish(self, job: EventJob, outcome: str, error: str | None = None) -> None:
        await self._finish.submit((job.merchant_id, job.event_id), (outcome, error))

    async def close(self) -> None:
        await self._record.close()
        await self._finish.close()


def _short(error: str | None) -> str | None:
    if error is None:
        return None
    return error if len(error) <= ERROR_MAX_CHARS else error[: ERROR_MAX_CHARS - 3] + "..."


async def failed_events(
    conn: Conn | asyncpg.Pool,
    *,
    merchant_id: str | None = None,
    event_ids: list[str] | None = None,
    limit: int = 100_000,
) -> list[tuple[str, str, dict[str, Any]]]:
    """(merchant_id, event_id, payload) of events whose outcome is ``failed``, oldest first."""
    rows = await conn.fetch(
        queries.get("failed_events"), merchant_id, event_ids, limit,
    )
    return [(r["merchant_id"], r["event_id"], dict(r["payload"])) for r in rows]


async def unfinished_events(
    conn: Conn | asyncpg.Pool, *, older_than_seconds: float, merchant_id: str | None = None, limit: int = 100_000,
) -> list[tuple[str, str, dict[str, Any]]]:
    """Events never finished (their job was lost: a crash on the last try, or an expired job), oldest first."""
    rows = await conn.fetch(
        queries.get("unfinished_events"), older_than_seconds, merchant_id, limit,
    )
    return [(r["merchant_id"], r["event_id"], dict(r["payload"])) for r in rows]


async def reopen(conn: Conn | asyncpg.Pool, merchant_id: str, event_id: str) -> bool:
    """Clear a failed event's finish so the re-enqueued job processes it instead of calling it a duplicate."""
    status = await conn.execute(
        queries.get("reopen_event"), merchant_id, event_id,
    )
    return bool(status.endswith(" 1"))
