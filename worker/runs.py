"""Run bookkeeping: every backfill and reconcile run in ``square.sync_runs``, lane watermarks in ``sync_state``.

A run starts as ``running`` and ends as exactly one of ``succeeded``, ``partial``, ``failed`` or
``interrupted``. Only :meth:`Run.finish` writes a final status, and :func:`status_for` is the one rule that maps
how a run ended to its status, so a run that raised, was cancelled or was rate-limited is never ``succeeded``.

:func:`recorded` is the one life of a run, for the backfill and every lane alike: lock, merchant row, start,
and the final status however the work ends (returned, raised, cancelled).

One run per (merchant, kind) at a time: :func:`exclusive` holds a Postgres advisory lock for the whole run. A
process that dies (even by SIGKILL) drops its connection and with it the lock, so the next run that takes the
lock knows that any row still ``running`` is dead and marks it ``interrupted``; its checkpoint is what a resumed
backfill continues from.

In the worker the locks of all its runs live on one session (:class:`RunLocks`), not one pooled connection per
run: with hundreds of sellers' lanes running at once, a connection held idle by each run's lock emptied the pool,
and the runs, each waiting for a second connection to write, stalled one another and the event jobs with them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from square_mirror.errors import SquareUnauthorized
from square_mirror.logs import get_logger
from square_mirror.retry import DATABASE_TRANSIENT, is_outage
from square_mirror.timefmt import parse_time
from worker import store
from worker.metrics import SYNC_RUNS
from worker.queries import queries

log = get_logger(__name__)

SUCCEEDED: Final = "succeeded"
PARTIAL: Final = "partial"
FAILED: Final = "failed"
INTERRUPTED: Final = "interrupted"
RUNNING: Final = "running"
FINAL_STATUSES: Final = frozenset({SUCCEEDED, PARTIAL, FAILED, INTERRUPTED})
BUSY: Final = "busy"  # not a run's status: what a command or job reports when another process holds its lock
COUNT_KEYS: Final = ("pages", "upserted", "stale_skipped", "tombstoned", "merges", "errors")


class RunBusy(RuntimeError):
    """Another process is running the same kind of run for this merchant."""


def status_for(exc: BaseException | None, counts: Mapping[str, int]) -> str:
    """How a run ended -> its final status. The only place this rule lives."""
    if exc is None:
        return PARTIAL if counts.get("errors", 0) else SUCCEEDED
    if isinstance(exc, BaseException) and not isinstance(exc, Exception):  # CancelledError, KeyboardInterrupt
        return INTERRUPTED
    if isinstance(exc, SquareUnauthorized):
        return FAILED
    if is_outage(exc):
        # Progress was committed (and checkpointed); the run is resumable but not complete.
        return PARTIAL if counts.get("pages", 0) else FAILED
    return FAILED


@dataclass
class Run:
    pool: asyncpg.Pool
    merchant_id: str
    kind: str
    run_id: int
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNT_KEYS, 0))
    checkpoint: dict[str, Any] = field(default_factory=dict)
    status: str = RUNNING
    error: str | None = None
    _last_flush: float = 0.0

    def add(self, **counts: int) -> None:
        for key, value in counts.items():
            self.counts[key] = self.counts.get(key, 0) + int(value)

    async def flush(self, *, checkpoint: Mapping[str, Any] | None = None, force: bool = True,
                    every: float = 2.0) -> None:
        """Write counts (and the checkpoint, when given) plus a heartbeat; cheap to call after every page."""
        if checkpoint is not None:
            self.checkpoint = dict(checkpoint)
        now = time.monotonic()
        if not force and now - self._last_flush < every:
            return
        self._last_flush = now
        await self.pool.execute(
            queries.get("flush_run"),
            self.merchant_id, self.run_id, self.counts, self.checkpoint,
        )

    async def finish(self, status: str, error: str | None = None) -> None:
        if status not in FINAL_STATUSES:
            raise ValueError(f"not a final status: {status}")
        self.status, self.error = status, error
        await self.pool.execute(
            queries.get("finish_run"),
            self.merchant_id, self.run_id, status, self.counts, self.checkpoint, error,
        )
        SYNC_RUNS.labels(self.kind, status).inc()
        log.info("run_finished", merchant_id=self.merchant_id, kind=self.kind, run_id=self.run_id, status=status,
                 counts=self.counts, error=error)


async def start_run(pool: asyncpg.Pool, merchant_id: str, kind: str,
                    checkpoint: Mapping[str, Any] | None = None) -> Run:
    run_id = await pool.fetchval(
        queries.get("start_run"),
        merchant_id, kind, dict(checkpoint or {}),
    )
    run = Run(pool, merchant_id, kind, int(run_id), checkpoint=dict(checkpoint or {}))
    run._last_flush = time.monotonic()
    log.info("run_started", merchant_id=merchant_id, kind=kind, run_id=run.run_id)
    return run


ERROR_MAX_CHARS: Final = 2000
Prepare = Callable[[], Awaitable[Mapping[str, Any]]]
ErrorNote = Callable[["Run", Exception], bool]


@asynccontextmanager
async def recorded(pool: asyncpg.Pool, merchant_id: str, kind: str, *, prepare: Prepare | None = None,
                   on_error: ErrorNote | None = None, marks_unauthorized: bool = True,
                   locks: RunLocks | None = None) -> AsyncIterator[Run]:
    """One recorded run of ``kind`` for ``merchant_id``, under its lock (:class:`RunBusy` when taken).

    ``prepare`` runs once the lock and the merchant's row are there, before the run starts, and gives its
    initial checkpoint. The body's work ends the run: returning -> ``succeeded`` (``partial`` with counted
    errors); an exception -> the status :func:`status_for` gives, recorded and logged (``run_failed``), and not
    raised (the caller returns the run); cancellation -> ``interrupted``, raised. A rejected token also marks the
    merchant unauthorized (unless ``marks_unauthorized`` is off); ``on_error`` may count the error and return
    True to keep it out of the log (it was said elsewhere).
    """
    async with exclusive(pool, merchant_id, kind, locks):
        await store.ensure_merchant(pool, merchant_id)
        checkpoint = await prepare() if prepare is not None else None
        run = await start_run(pool, merchant_id, kind, checkpoint)
        try:
            yield run
        except Exception as exc:
            if marks_unauthorized and isinstance(exc, SquareUnauthorized):
                await store.set_merchant_auth(pool, merchant_id, ok=False, error=str(exc))
            run.add(errors=1)
            status = status_for(exc, run.counts)
            if on_error is None or not on_error(run, exc):
                log.error("run_failed", merchant_id=merchant_id, kind=kind, run_id=run.run_id, status=status,
                          error=str(exc), error_type=type(exc).__name__)
            await run.finish(status, error=f"{type(exc).__name__}: {exc}"[:ERROR_MAX_CHARS])
        except BaseException as exc:
            await run.finish(status_for(exc, run.counts), error=f"{type(exc).__name__}: cancelled")
            raise
        else:
            await run.finish(status_for(None, run.counts))


def _lock_key(merchant_id: str, kind: str) -> str:
    return f"square-mirror:run:{kind}:{merchant_id}"


class RunLocks:
    """The run locks of one process, all held on one Postgres session taken from the pool while any is held.

    Session-level advisory locks are re-entrant within a session, so the process also keeps the set of keys it
    holds: a second run of the same (merchant, kind) in this process is refused like one in another process.
    If the session is lost (Postgres restarted) its locks went with it; the next lock taken opens a new session
    and takes the held keys again, and logs those another process took meanwhile (both runs write through the
    same version guards, so that costs requests, never correctness).
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._conn: PoolConnectionProxy | None = None
        self._session = asyncio.Lock()  # one statement at a time on the session
        self._held: set[str] = set()

    async def _connection(self) -> PoolConnectionProxy:
        if self._conn is not None and _alive(self._conn):
            return self._conn
        await self._drop()
        self._conn = conn = await self._pool.acquire()
        lost = [key for key in sorted(self._held) if not await conn.fetchval(queries.get("try_run_lock"), key)]
        if lost:
            log.warning("run_locks_lost", count=len(lost))
        return conn

    async def take(self, key: str) -> bool:
        """Take ``key`` if no run in this or another process holds it."""
        if key in self._held:
            return False
        async with self._session:
            try:
                got = bool(await (await self._connection()).fetchval(queries.get("try_run_lock"), key))
            except DATABASE_TRANSIENT:  # found out only now that Postgres dropped the session: once more on a new one
                await self._drop()
                got = bool(await (await self._connection()).fetchval(queries.get("try_run_lock"), key))
        if got:
            self._held.add(key)
        return got

    async def release(self, key: str) -> None:
        """Release ``key``; with no lock left, give the session back to the pool (a process between runs holds no
        connection, and a pool can close without closing this first)."""
        self._held.discard(key)
        async with self._session:
            if self._conn is not None and _alive(self._conn):
                try:
                    await self._conn.execute(queries.get("release_run_lock"), key)
                except DATABASE_TRANSIENT:  # the lock went with the session
                    await self._drop()
            if not self._held:
                await self._drop()

    async def _drop(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await _give_back(self._pool, conn)

    async def close(self) -> None:
        """Give the session back (releasing its locks) before the pool closes."""
        async with self._session:
            self._held.clear()
            await self._drop()


def _alive(conn: PoolConnectionProxy) -> bool:
    try:
        return not conn.is_closed()
    except asyncpg.InterfaceError:  # the pool took back a connection that broke
        return False


async def _give_back(pool: asyncpg.Pool, conn: PoolConnectionProxy) -> None:
    with contextlib.suppress(asyncpg.InterfaceError):  # the pool already took it back
        await pool.release(conn)


@asynccontextmanager
async def exclusive(pool: asyncpg.Pool, merchant_id: str, kind: str,
                    locks: RunLocks | None = None) -> AsyncIterator[None]:
    """Hold the (merchant, kind) run lock; raise :class:`RunBusy` if another run holds it.

    ``locks``: the process's lock session; without it (a run on its own) a session of its own, for the run. Rows of
    that kind still ``running`` once the lock is ours belong to dead processes: they become ``interrupted`` (their
    checkpoints stay, for resuming).
    """
    key = _lock_key(merchant_id, kind)
    locks = locks if locks is not None else RunLocks(pool)  # gives its session back once the lock is released
    if not await locks.take(key):
        raise RunBusy(f"a {kind} run for merchant {merchant_id} is already in progress")
    try:
        dead = await pool.fetch(queries.get("interrupt_dead_runs"), merchant_id, kind)
        if dead:
            log.warning("runs_marked_interrupted", merchant_id=merchant_id, kind=kind,
                        run_ids=[r["run_id"] for r in dead])
        yield
    finally:
        await locks.release(key)


async def resumable_checkpoint(pool: asyncpg.Pool, merchant_id: str, kind: str) -> tuple[int, dict[str, Any]] | None:
    """(run_id, checkpoint) of the newest unfinished run of this kind, unless a later run succeeded."""
    row = await pool.fetchrow(
        queries.get("newest_ended_run"), merchant_id, kind,
    )
    if row is None or row["status"] == SUCCEEDED or not row["checkpoint"]:
        return None
    checkpoint = row["checkpoint"]
    if not isinstance(checkpoint, dict) or checkpoint.get("phase") in (None, "done"):
        return None
    return int(row["run_id"]), checkpoint


async def last_run(pool: asyncpg.Pool, merchant_id: str, kind: str) -> asyncpg.Record | None:
    return await pool.fetchrow(
        queries.get("last_run"), merchant_id, kind,
    )


# -- lane watermarks and state ---------------------------------------------------------------------------

async def get_watermark(pool: asyncpg.Pool, merchant_id: str, lane: str) -> datetime | None:
    value: datetime | None = await pool.fetchval(
        queries.get("get_watermark"), merchant_id, lane
    )
    return value


async def set_watermark(pool: asyncpg.Pool, merchant_id: str, lane: str, watermark: datetime,
                        state: Mapping[str, Any] | None = None) -> None:
    """Move a lane's watermark forward (never backwards)."""
    await pool.execute(
        queries.get("set_watermark"), merchant_id, lane, watermark, dict(state or {}),
    )


async def last_succeeded_start(pool: asyncpg.Pool, merchant_id: str, kinds: tuple[str, ...]) -> datetime | None:
    """When the newest succeeded run of these kinds began its listing (its checkpoint says, else started_at)."""
    row = await pool.fetchrow(
        queries.get("last_succeeded_run"), merchant_id, list(kinds),
    )
    if row is None:
        return None
    listing = parse_time((row["checkpoint"] or {}).get("listing_started_at"))
    if listing is not None:
        return listing
    started: datetime = row["started_at"]
    return started
