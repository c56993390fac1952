"""Scale-out: 2 receivers and 3 workers (real processes) on one Redis and one Postgres converge to the same mirror
as 1 receiver and 1 worker, on the same seeded history. The scaled run splits the pools as an operator would:
the 3 workers consume only the events queue (``--queues events``) and a 4th process the lanes and backfills
(``--queues lanes,backfill``); the single worker consumes all three.

The emulator subscribes every receiver, so with two receivers each event is delivered twice, once to each,
often at the same moment (as when Square retries to another instance behind a load balancer), and three workers
compete for the jobs: this is where cross-process dedup, the version guard and the merge rule must hold. Both
setups must end equal to the emulator's truth (``mirror_diff`` is empty) and equal to each other: whole rows of
every table (``tests/mirror_dump.py``), every column but the mirror's own observation times. The emulator's
clock is pinned while the history is played, so Square's timestamps (``created_at``, ``updated_at``, the
events' ``created_at`` that date tombstones and merges) are the same in both runs, as its IDs already are.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from redis.asyncio import Redis

import emulator.clock
from emulator import EmulatorConfig
from emulator.testing import EmulatorHandle, run_emulator
from square_mirror.convergence import mirror_diff
from square_mirror.db import create_pool
from square_mirror.devstack import Stack, cli_command, wait_for
from square_mirror.embedded import free_port, tcp_reachable
from tests.mirror_dump import OBSERVED, dump_differences, dump_mirror

KEY = "scale-out-signature-key"
ROOT = str(Path(__file__).resolve().parents[2])


class PinnedClock:
    """The emulator's clock while the history is played: from ``start``, 10 ms further at every reading, so
    both runs get the same timestamps (the history reads it the same number of times) and they span a few
    seconds (a merge's events can fall in different seconds)."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        self.now += 0.01
        return self.now


def play_history(emu: EmulatorHandle, clock_start: float) -> None:
    """The same history for every run (the emulator's IDs come from its seed, its times from ``clock_start``):
    creates, repeated updates, group changes, deletes and a merge, with duplicated and reordered deliveries."""
    real_now = emulator.clock.now
    emulator.clock.now = PinnedClock(clock_start)
    try:
        _play(emu)
    finally:
        emulator.clock.now = real_now


def _play(emu: EmulatorHandle) -> None:
    state = emu.emulator.merchants[emu.merchant_id]
    vip = state.create_group("VIP", None)["id"]
    ids = [state.create_customer({"given_name": f"Scale{n}", "email_address": f"s{n}@example.com"})[0].id
           for n in range(40)]
    for round_ in range(3):
        for cid in ids[: 30 - 5 * round_]:
            state.update_customer(cid, {"family_name": f"Round{round_}"}, None, clear_null=True)
    for cid in ids[::4]:
        state.set_group(cid, vip, True)
    for cid in ids[::8]:
        state.set_group(cid, vip, False)
    for cid in ids[35:38]:
        state.delete_customer(cid, None)
    state.merge([ids[1], ids[2], ids[3]])


# What may differ between two runs besides the observation times tests/mirror_dump.py leaves out: the workers'
# cron lanes replay events too, so an event may reach the inbox first from the Events API in one run and from a
# receiver in the other (``source``), and the job payload holds the receiver's ``received_at``.
EXCLUDED = {**OBSERVED, "webhook_events": (*OBSERVED["webhook_events"], "source", "payload")}


async def run_pipeline(receivers: int, workers: int, dsn: str, redis_url: str,
                       clock_start: float, *, split: bool = False) -> tuple[dict[str, Any], list[str]]:
    """Start the processes, play the history, wait until every event is processed; returns the mirror's content
    and its differences from the emulator's truth."""
    stack = Stack(Path(tempfile.mkdtemp(prefix="sqm-scale-out-")))
    pool = await create_pool(dsn, min_size=1, max_size=4)
    try:
        async with run_emulator(EmulatorConfig(seed=29)) as emu:
            await emu.set_faults(webhook_duplicate_rate=0.3, webhook_reorder_rate=0.3,
                                 webhook_reorder_max_delay_seconds=0.5)
            env = {k: v for k, v in os.environ.items() if not k.startswith(("SQUARE_", "WORKER_"))}
            env.update({"PYTHONPATH": ROOT, "DATABASE_URL": dsn, "REDIS_URL": redis_url,
                        "SQUARE_BASE_URL": emu.base_url, "SQUARE_ACCESS_TOKEN": emu.token,
                        "SQUARE_MERCHANT_ID": emu.merchant_id, "SQUARE_WEBHOOK_SIGNATURE_KEY": KEY,
                        "SQUARE_MAX_REQUESTS_PER_SECOND": "0", "LOG_LEVEL": "WARNING"})
            waits: list[Callable[[], Awaitable[None]]] = []
            metrics_ports: list[int] = []
            for n in range(receivers):
                port = free_port()
                url = f"http://127.0.0.1:{port}/square/webhooks"
                proc = stack.start(f"receiver{n}", cli_command("webhooks", "--host", "127.0.0.1", "--port", str(port)),
                                   {**env, "SQUARE_WEBHOOK_NOTIFICATION_URL": url})
                waits.append(lambda p=port, pr=proc, n=n: wait_for(  # type: ignore[misc]
                    lambda: tcp_reachable("127.0.0.1", p), f"receiver {n}", timeout=30, proc=pr))
                await emu.subscribe(url, KEY)
            queues = ["--queues", "events"] if split else []
            for n in range(workers):
                port = free_port()
                metrics_ports.append(port)
                proc = stack.start(f"worker{n}", cli_command("worker", *queues),
                                   {**env, "WORKER_METRICS_PORT": str(port)})
                waits.append(lambda p=port, pr=proc, n=n: wait_for(  # type: ignore[misc]
                    lambda: tcp_reachable("127.0.0.1", p), f"worker {n}", timeout=30, proc=pr))
            if split:  # the lane and backfill pool (its jobs are not counted per worker: crons run on the minute)
                port = free_port()
                proc = stack.start("lanes", cli_command("worker", "--queues", "lanes,backfill"),
                                   {**env, "WORKER_METRICS_PORT": str(port)})
                waits.append(lambda p=port, pr=proc: wait_for(  # type: ignore[misc]
                    lambda: tcp_reachable("127.0.0.1", p), "lanes worker", timeout=30, proc=pr))
            await asyncio.gather(*(wait() for wait in waits))

            play_history(emu, clock_start)
            assert await emu.drain_webhooks(20)
            deliveries = (await emu.admin("GET", "deliveries"))["deliveries"]
            assert {d["status"] for d in deliveries} == {"delivered"}, "every delivery got a 2xx"

            diffs = ["not checked"]
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                diffs = await mirror_diff(pool, await emu.truth(), emu.merchant_id)
                if not diffs:
                    break
                await asyncio.sleep(0.2)
            # The mirror can equal the truth before the last jobs ran: mirror_diff does not look at a tombstone's
            # version or time, nor at a merge's time and event. Read the rows once every delivered event is
            # processed (finished, not just recorded), with the workers still up.
            delivered = {d["event_id"] for d in deliveries}
            unprocessed = sorted(delivered)
            while unprocessed and time.monotonic() < deadline + 20:
                processed = {r[0] for r in await pool.fetch(
                    "SELECT event_id FROM square.webhook_events WHERE processed_at IS NOT NULL")}
                unprocessed = sorted(delivered - processed)
                if unprocessed:
                    await asyncio.sleep(0.2)
            rows = await dump_mirror(pool, EXCLUDED)
            dead = [name for name, proc in stack.processes if proc.poll() is not None]
            assert dead == [], f"processes died: {dead}"
            per_worker = [await _events_processed(port) for port in metrics_ports]
        events = await pool.fetchval("SELECT count(DISTINCT event_id) FROM square.webhook_events")
        failed = await pool.fetchval("SELECT count(*) FROM square.webhook_events WHERE outcome = 'failed'")
        mirror = {"rows": rows, "events": events, "failed": failed, "per_worker": per_worker,
                  "unprocessed": unprocessed,
                  "deliveries": len({(d["event_id"], d["subscription_id"]) for d in deliveries})}
        return mirror, diffs
    finally:
        await pool.close()
        await asyncio.to_thread(stack.stop)


async def _events_processed(port: int) -> float:
    """Jobs this worker process ran, from its own /metrics."""
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/metrics") as resp:
        text = await resp.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("square_mirror_worker_events_total{"))


async def test_two_receivers_and_three_workers_converge_to_the_same_mirror_as_one_of_each(
    database_factory: Callable[[], Awaitable[str]], redis_url: str
) -> None:
    clock_start = float(int(time.time()) - 600)  # Square's times of the history, the same in both runs
    single, single_diffs = await run_pipeline(1, 1, await database_factory(), redis_url, clock_start)
    await Redis.from_url(redis_url).flushdb()
    scaled, scaled_diffs = await run_pipeline(2, 3, await database_factory(), redis_url, clock_start, split=True)

    assert single_diffs == [], single_diffs
    assert scaled_diffs == [], scaled_diffs
    assert scaled["failed"] == single["failed"] == 0
    # Every delivered event was processed (the workers' cron lanes may replay more, so no count equality).
    assert single["unprocessed"] == scaled["unprocessed"] == []
    assert single["events"] > 100
    assert scaled["events"] > 100
    assert len(single["rows"]["customer_merges"]) == 3
    differences = dump_differences(single["rows"], scaled["rows"], names=("1+1", "2+3"))
    assert not differences, "the 2+3 mirror differs from the 1+1 mirror:\n" + "\n".join(differences)
    # Every event reached both receivers, and all three workers took a share of the jobs.
    assert scaled["deliveries"] == 2 * single["deliveries"]
    assert all(n > 0 for n in scaled["per_worker"]), scaled["per_worker"]
