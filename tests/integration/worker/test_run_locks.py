"""The worker's run locks: one Postgres session holds them all, so many runs at once never empty the pool."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from worker.runs import RunBusy, RunLocks, exclusive

KIND = "reconcile:segments"
OUR_ADVISORY_LOCKS = ("FROM pg_locks WHERE locktype = 'advisory' AND granted"
                      " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")


@pytest.fixture
async def small_pool(db_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(db_dsn, min_size=1, max_size=3)
    yield pool
    await pool.close()


async def refused_to_another_process(pool: asyncpg.Pool, merchant_id: str) -> None:
    """Another process (its own lock session) cannot start a run of that kind for that seller."""
    other = RunLocks(pool)
    try:
        with pytest.raises(RunBusy):
            async with exclusive(pool, merchant_id, KIND, other):
                pass
    finally:
        await other.close()


async def test_more_runs_than_pooled_connections_hold_their_locks_at_once_and_still_write(
    small_pool: asyncpg.Pool,
) -> None:
    locks = RunLocks(small_pool)
    runs = 12  # four times the pool: with a connection held per lock, the fourth run would wait forever
    inside = 0
    all_inside = asyncio.Event()

    async def run(n: int) -> int:
        nonlocal inside
        async with exclusive(small_pool, f"M{n}", KIND, locks):
            inside += 1
            if inside == runs:
                all_inside.set()
            await all_inside.wait()
            return int(await small_pool.fetchval("SELECT $1::int", n))  # the run's own writes find a connection

    try:
        assert await asyncio.wait_for(asyncio.gather(*(run(n) for n in range(runs))), 60) == list(range(runs))
    finally:
        await locks.close()


async def test_a_second_run_of_the_same_kind_is_refused_in_this_process_and_in_another(
    small_pool: asyncpg.Pool, db_dsn: str,
) -> None:
    locks = RunLocks(small_pool)
    other_process = await asyncpg.connect(db_dsn)
    try:
        async with exclusive(small_pool, "M1", KIND, locks):
            with pytest.raises(RunBusy):  # advisory locks are re-entrant per session: the process must refuse
                async with exclusive(small_pool, "M1", KIND, locks):
                    pass
            await refused_to_another_process(small_pool, "M1")
            async with exclusive(small_pool, "M1", "reconcile:groups", locks):  # another kind is free
                pass
        async with exclusive(small_pool, "M1", KIND):  # released: a command's own-connection lock takes it
            pass
        assert await other_process.fetchval(f"SELECT count(*) {OUR_ADVISORY_LOCKS}") == 0
    finally:
        await other_process.close()
        await locks.close()


async def test_a_lost_lock_session_is_replaced_and_the_held_locks_taken_again(
    small_pool: asyncpg.Pool, db_dsn: str,
) -> None:
    locks = RunLocks(small_pool)
    admin = await asyncpg.connect(db_dsn)
    try:
        async with exclusive(small_pool, "M1", KIND, locks):
            await admin.execute(f"SELECT pg_terminate_backend(pid) {OUR_ADVISORY_LOCKS}")
            async with exclusive(small_pool, "M2", KIND, locks):  # opens a new session, takes M1's lock again
                held = await admin.fetchval(f"SELECT count(*) {OUR_ADVISORY_LOCKS}")
                assert held == 2
            await refused_to_another_process(small_pool, "M1")
    finally:
        await admin.close()
        await locks.close()


async def test_between_runs_the_process_holds_no_connection_so_its_pool_can_close(db_dsn: str) -> None:
    pool = await asyncpg.create_pool(db_dsn, min_size=1, max_size=2)
    locks = RunLocks(pool)  # never closed: a context a caller forgot to close
    async with exclusive(pool, "M1", KIND, locks):
        pass
    await asyncio.wait_for(pool.close(), 30)  # waits for every connection: the lock session was given back
