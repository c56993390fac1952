"""Scale-out: 2 receivers and 3 workers (real processes) on one Redis and one Postgres converge to the same mirror
as 1 receiver and 1 worker, on the same seeded history.

The emulator subscribes every receiver, so with two receivers each event is delivered twice, once to each,
often at the same moment (as when Square retries to another instance behind a load balancer), and three workers
compete for the jobs: this is where cross-process dedup, the version guard and the merge rule must hold. Both
setups must end equal to the emulator's truth (``mirror_diff`` is empty) and equal to each other.
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

from emulator import EmulatorConfig
from emulator.testing import EmulatorHandle, run_emulator
from square_mirror.commands.demo import Stack, _cli, _wait_for
from square_mirror.convergence import mirror_diff
from square_mirror.db import create_pool
from square_mirror.embedded import free_port, tcp_reachable

KEY = "scale-out-signature-key"
ROOT = str(Path(__file__).resolve().parents[2])


def play_history(emu: EmulatorHandle) -> None:
    """The same history for every run (the emulator's IDs come from its seed): creates, repeated updates,
    group changes, deletes and a merge, with duplicated and reordered deliveries."""
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


async def run_pipeline(receivers: int, workers: int, dsn: str, redis_url: str) -> tuple[dict[str, Any], list[str]]:
    """Start the processes, play the history, wait for convergence; returns the mirror's content and the diff."""
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
                proc = stack.start(f"receiver{n}", _cli("webhooks", "--host", "127.0.0.1", "--port", str(port)),
                                   {**env, "SQUARE_WEBHOOK_NOTIFICATION_URL": url})
                waits.append(lambda p=port, pr=proc, n=n: _wait_for(  # type: ignore[misc]
                    lambda: tcp_reachable("127.0.0.1", p), f"receiver {n}", timeout=30, proc=pr))
                await emu.subscribe(url, KEY)
            for n in range(workers):
                port = free_port()
                metrics_ports.append(port)
                proc = stack.start(f"worker{n}", _cli("worker"), {**env, "WORKER_METRICS_PORT": str(port)})
                waits.append(lambda p=port, pr=proc, n=n: _wait_for(  # type: ignore[misc]
                    lambda: tcp_reachable("127.0.0.1", p), f"worker {n}", timeout=30, proc=pr))
            await asyncio.gather(*(wait() for wait in waits))

            play_history(emu)
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
            dead = [name for name, proc in stack.processes if proc.poll() is not None]
            assert dead == [], f"processes died: {dead}"
            per_worker = [await _events_processed(port) for port in metrics_ports]
        rows = await pool.fetch("SELECT id, version, deleted_at IS NOT NULL AS deleted, merged_into, group_ids,"
                                " raw - 'created_at' - 'updated_at' AS body FROM square.customers ORDER BY id")
        merges = await pool.fetch("SELECT from_customer_id, to_customer_id FROM square.customer_merges ORDER BY 1")
        # The mirror can equal the truth before the last (by then stale) jobs ran: wait for the inbox too.
        delivered = {d["event_id"] for d in deliveries}
        not_in_inbox = sorted(delivered)
        while not_in_inbox and time.monotonic() < deadline + 10:
            inbox_ids = {r[0] for r in await pool.fetch("SELECT event_id FROM square.webhook_events")}
            not_in_inbox = sorted(delivered - inbox_ids)
            await asyncio.sleep(0.2)
        events = await pool.fetchval("SELECT count(DISTINCT event_id) FROM square.webhook_events")
        failed = await pool.fetchval("SELECT count(*) FROM square.webhook_events WHERE outcome = 'failed'")
        mirror = {"customers": [dict(r) for r in rows], "merges": [tuple(r) for r in merges], "events": events,
                  "failed": failed, "per_worker": per_worker, "not_in_inbox": not_in_inbox,
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
    single, single_diffs = await run_pipeline(1, 1, await database_factory(), redis_url)
    await Redis.from_url(redis_url).flushdb()
    scaled, scaled_diffs = await run_pipeline(2, 3, await database_factory(), redis_url)

    assert single_diffs == [], single_diffs
    assert scaled_diffs == [], scaled_diffs
    assert scaled["failed"] == single["failed"] == 0
    # Every delivered event is in the inbox (the workers' cron lanes may replay more, so no count equality).
    assert single["not_in_inbox"] == scaled["not_in_inbox"] == []
    assert single["events"] > 100
    assert scaled["events"] > 100
    assert scaled["merges"] == single["merges"] and len(single["merges"]) == 3
    assert scaled["customers"] == single["customers"]
    # Every event reached both receivers, and all three workers took a share of the jobs.
    assert scaled["deliveries"] == 2 * single["deliveries"]
    assert all(n > 0 for n in scaled["per_worker"]), scaled["per_worker"]
