"""Delivery order: the same events, delivered in any order, with duplicates, to one worker or to several
concurrent workers, leave IDENTICAL rows in every mirror table.

Square's history is played first, so every fetch sees the same Square: a few customers are created and
updated (some join a group), then a merge turns two or three of them into a new profile (``customer.created``
of the target and ``customer.deleted`` of each source, all with ``event_context.merge``), one more is deleted
plainly and a bystander is updated. When ``seen_first`` is drawn, the mirrors first process the events up to
that point, so the merge and the delete tombstone live rows and end history states, and some customers are
updated once more before the merge and the delete, so their late events make the worker fetch and meet a
RetrieveCustomer redirect or a 404: the mirror observes the merge or delete before its events arrive.

Three mirrors (databases) get the same events:
- ``reference``: one worker, every event once, in the order Square emitted them;
- ``sequential``: one worker, in a drawn order, with some events delivered again;
- ``concurrent``: three worker contexts (each with its own coalescer and inbox batcher, as separate processes
  have) sharing Postgres; the events, in another drawn order with duplicates, start concurrently with drawn
  pauses; some run twice at once (arq running a job again on another worker), some are cancelled mid-job and
  run again (a killed worker).
Either drawn schedule may also hold a sweep: every customer re-fetched by ID, as backfill and reconcile do.

Each mirror's canonical dump (``tests/mirror_dump.py``: every row of every table, without the columns that are
the mirror's own observation times, identities, or the inbox's record of what each run did) must equal the
reference's. ``deleted_at`` and ``merged_at`` are compared: once every event has arrived they are the times
Square stated, whatever the order.

Cost: about 1.5 s per example (an emulator, five worker contexts, three databases), so a fixed, derandomized
set of examples and no shrinking (a failure names the differing rows and columns, and its draws).
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
from arq.worker import Retry
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from emulator.config import EmulatorConfig
from emulator.testing import EmulatorHandle, run_emulator
from square_mirror.convergence import mirror_diff
from square_mirror.db import create_pool
from square_mirror.jobs import build_event_job
from tests.integration.worker.support import job_ctx, worker_ctx, worker_settings
from tests.mirror_dump import OBSERVED, dump_differences, dump_mirror
from tests.services import Services, with_database, with_redis_db
from worker.context import WorkerContext
from worker.events.process import process_event
from worker.sync import sync_customers

MIRRORS = ("reference", "sequential", "concurrent")
WORKERS = 3


@pytest.fixture(scope="module")
def mirror_dbs(services: Services, template_database: str) -> Iterator[tuple[dict[str, str], str]]:
    names = {mirror: f"sqm_order_{mirror[:3]}_{uuid.uuid4().hex[:8]}" for mirror in MIRRORS}

    async def admin(*statements: str) -> None:
        conn = await asyncpg.connect(services.postgres_dsn)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(admin(*(f'CREATE DATABASE "{n}" TEMPLATE "{template_database}"' for n in names.values())))
    yield ({m: with_database(services.postgres_dsn, n) for m, n in names.items()},
           with_redis_db(services.redis_url, 14))
    asyncio.run(admin(*(f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)' for n in names.values())))


@settings(max_examples=12, deadline=None, derandomize=True, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_every_delivery_order_leaves_the_same_rows(mirror_dbs: tuple[dict[str, str], str],
                                                   data: st.DataObject) -> None:
    dsns, redis_url = mirror_dbs
    asyncio.run(_example(dsns, redis_url, data))


async def _example(dsns: dict[str, str], redis_url: str, data: st.DataObject) -> None:
    pools = {m: await create_pool(dsn, min_size=1, max_size=8) for m, dsn in dsns.items()}
    try:
        for pool in pools.values():
            await pool.execute("TRUNCATE " + ", ".join(f"square.{t}" for t in (*OBSERVED, "merchants")))
        async with run_emulator(EmulatorConfig(seed=data.draw(st.integers(1, 10_000), label="seed"))) as emu:
            await emu.set_faults(latency_ms=1.0)  # fetches stay in flight while other jobs run
            settings_ = worker_settings(emu.base_url, emu.token, redis_url, worker_fetch_window_ms=1.0)
            async with (worker_ctx(pools["reference"], redis_url, settings_) as reference,
                        worker_ctx(pools["sequential"], redis_url, settings_) as sequential,
                        worker_ctx(pools["concurrent"], redis_url, settings_) as w0,
                        worker_ctx(pools["concurrent"], redis_url, settings_) as w1,
                        worker_ctx(pools["concurrent"], redis_url, settings_) as w2):
                workers = {"reference": [reference], "sequential": [sequential], "concurrent": [w0, w1, w2]}
                await _play(emu, workers, data)
            assert await mirror_diff(pools["reference"], await emu.truth(), emu.merchant_id) == []
        dumps = {m: await dump_mirror(pool) for m, pool in pools.items()}
        for mirror in ("sequential", "concurrent"):
            diffs = dump_differences(dumps["reference"], dumps[mirror], names=("the reference", mirror))
            assert not diffs, f"the {mirror} mirror differs from the reference:\n" + "\n".join(diffs)
    finally:
        for pool in pools.values():
            await pool.close()


async def _play(emu: EmulatorHandle, workers: dict[str, list[dict[str, Any]]], data: st.DataObject) -> None:
    state = emu.emulator.merchants[emu.merchant_id]
    group = state.create_group("VIP", None)["id"]
    sources = [state.create_customer({"given_name": f"Source{n}", "email_address": f"s{n}@example.com"})[0].id
               for n in range(data.draw(st.integers(2, 3), label="merge sources"))]
    doomed = state.create_customer({"given_name": "Doomed", "email_address": "d@example.com"})[0].id
    bystander = state.create_customer({"given_name": "Bystander", "email_address": "b@example.com"})[0].id
    for cid in [*sources, doomed, bystander]:
        for n in range(data.draw(st.integers(0, 2), label="updates")):
            state.update_customer(cid, {"family_name": f"F{n}"}, None, clear_null=True)
        if cid == bystander or data.draw(st.booleans(), label="in group"):  # the mirror learns of groups from members
            state.set_group(cid, group, True)

    delivered = 0
    seen_first = data.draw(st.booleans(), label="seen_first")
    event(f"seen_first={seen_first}")
    if seen_first:  # the mirror holds them live before the merge and delete
        first = _payloads(state)
        for ctxs in workers.values():
            for payload in first:
                await _run(ctxs[0], payload)
        delivered = len(first)
        for cid in [*sources, doomed]:
            if data.draw(st.booleans(), label="updated again"):
                state.update_customer(cid, {"nickname": "late"}, None, clear_null=True)

    state.merge(sources)
    state.delete_customer(doomed, None)
    state.update_customer(bystander, {"company_name": "After"}, None, clear_null=True)
    payloads = _payloads(state)
    emitted = payloads[delivered:]

    for payload in emitted:  # the reference: every event once, in Square's order
        await _run(workers["reference"][0], payload)

    rng = random.Random(data.draw(st.integers(0, 2**32 - 1), label="schedule seed"))
    everyone = (emu.merchant_id, [*sources, doomed, bystander])
    for payload in _schedule(rng, emitted, payloads):
        await _deliver(workers["sequential"][0], payload, everyone)

    ctxs = workers["concurrent"]
    tasks: list[asyncio.Task[None]] = []
    try:
        for payload in _schedule(rng, emitted, payloads):
            worker = rng.randrange(WORKERS)
            tasks.append(asyncio.ensure_future(_deliver(ctxs[worker], payload, everyone)))
            mode = rng.random()
            if payload is not None and mode < 0.2:  # arq runs the job twice at once, on another worker
                tasks.append(asyncio.ensure_future(_run(ctxs[(worker + 1) % WORKERS], payload)))
            elif payload is not None and mode < 0.35:  # a worker dies mid-job; arq runs it again elsewhere
                tasks.append(asyncio.ensure_future(
                    _killed(ctxs[(worker + 2) % WORKERS], payload, rng.choice([0.0, 0.001, 0.003]))))
            pause = rng.choice([0.0, 0.0, 0.001, 0.004])
            if pause:
                await asyncio.sleep(pause)
        await asyncio.gather(*tasks)
    finally:  # a failing job must not leave the others running into closed pools
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _schedule(rng: random.Random, emitted: list[dict[str, Any]],
              every: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
    """The new events in a random order, a few delivered again (any event, old ones included), and maybe a
    sweep (``None``: every customer re-fetched by ID, as backfill and reconcile do) at a random point."""
    order: list[dict[str, Any] | None] = [*emitted, *(rng.choice(every) for _ in range(rng.randrange(5)))]
    if rng.random() < 0.5:
        order.append(None)
        event("with a sweep")
    rng.shuffle(order)
    return order


async def _deliver(ctx: WorkerContext, payload: dict[str, Any] | None, everyone: tuple[str, list[str]]) -> None:
    if payload is None:  # what backfill's and the sweep's deletion and merge inference do
        for _ in range(5):
            try:
                await sync_customers(ctx.sync, *everyone)
                return
            except asyncpg.exceptions.DeadlockDetectedError:  # transient: the lanes run again
                await asyncio.sleep(0.01)
        raise AssertionError("the sweep kept deadlocking")
    else:
        await _run(ctx, payload)


async def _killed(ctx: WorkerContext, payload: dict[str, Any], after: float) -> None:
    """A run cancelled at a random point (its worker was killed), then run to the end, as arq re-runs it."""
    task = asyncio.ensure_future(process_event(job_ctx(ctx, 1), payload))
    await asyncio.sleep(after)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await _run(ctx, payload)


def _payloads(state: Any) -> list[dict[str, Any]]:
    return [build_event_job(event) for _ts, event in state.events.entries]


async def _run(ctx: WorkerContext, payload: dict[str, Any]) -> None:
    """One job, run again after a deferral as arq would (a deadlock or a lost connection is transient)."""
    for job_try in range(1, 6):
        try:
            await process_event(job_ctx(ctx, job_try), payload)
            return
        except Retry:
            await asyncio.sleep(0.01)
    raise AssertionError(f"event {payload['event_id']} still retrying")
